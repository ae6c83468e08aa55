"""``--fastvideo KEY=VALUE`` typed by FastVideo's own fields (parity/overrides.py): the schema
read from FastVideo's source text agrees with its imported dataclasses, every value is
parsed by its field's type or refused in one line naming the flag, the field, the value and
what is accepted, and reading the schema imports neither torch nor FastVideo."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fuzz_support as F
from convert_support import ROOT, needs_native


def test_reading_the_schema_imports_neither_torch_nor_fastvideo():
    code = ("import sys; from parity import overrides as o; s = o.schema(); "
            "o.parse_overrides(['dit_cpu_offload=false', 'num_gpus=1', 'dit_precision=bf16']); "
            "print(len(s), sorted(m for m in ('torch', 'fastvideo') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr
    n, heavy = p.stdout.split(" ", 1)
    assert int(n) > 150 and heavy.strip() == "[]"


def test_the_issues_values_are_typed_or_refused_in_one_line():
    from longcat_convert.errors import BadInput
    from parity.overrides import parse_overrides
    got = parse_overrides(["dit_cpu_offload=False", "num_gpus=2", "dit_precision=bf16", "flow_shift=none",
                           "lora_strength=1", "attention_backend=torch_sdpa", 'text_encoder_precisions=["bf16"]',
                           "vae_config.use_tiling=false", "workload_type=i2v", "negative_prompt=a b"])
    assert got == {"dit_cpu_offload": False, "num_gpus": 2, "dit_precision": "bf16", "flow_shift": None,
                   "lora_strength": 1.0, "attention_backend": "TORCH_SDPA", "text_encoder_precisions": ["bf16"],
                   "vae_config.use_tiling": False, "workload_type": "i2v", "negative_prompt": "a b"}
    assert type(got["num_gpus"]) is int and type(got["lora_strength"]) is float
    for spec, words in (("dit_cpu_offload=maybe", ["FastVideoArgs.dit_cpu_offload", "true or false"]),
                        ("num_gpus=two", ["FastVideoArgs.num_gpus", "an integer"]),
                        ("num_gpus=2.5", ["an integer"]),
                        ("dit_precision=fp64", ["PipelineConfig.dit_precision", "fp32, fp16, bf16"]),
                        ('text_encoder_precisions=["fp64"]', ["a JSON list of fp32, fp16, bf16"]),
                        ("flow_shift=nan", ["PipelineConfig.flow_shift", "a number; none"]),
                        ("workload_type=x2y", ["t2v", "i2v"]),
                        ("vae_config.use_tiling=2", ["PipelineConfig.vae_config.use_tiling"])):
        with pytest.raises(BadInput) as e:
            parse_overrides([spec])
        line = str(e.value)
        assert "\n" not in line and line.startswith(f"--fastvideo {spec}: ") and "accepted: " in line, line
        for w in words:
            assert w in line, (spec, w, line)


@needs_native
def test_the_schema_read_from_source_is_fastvideos_own():
    """Every field of the three dataclasses, imported for real, is in the schema under its
    owner, and every bool / int / float / str field reads as that type."""
    from fastvideo.api.sampling_param import SamplingParam
    from fastvideo.configs.pipelines.base import PipelineConfig
    from fastvideo.fastvideo_args import FastVideoArgs
    from parity.overrides import schema
    s = schema()
    seen = set()
    for owner, cls in (("args", FastVideoArgs), ("pipeline", PipelineConfig), ("sampling", SamplingParam)):
        for f in dataclasses.fields(cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            assert f.name in s and s[f.name][0] == owner, (cls.__name__, f.name)
            declared = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            t = s[f.name][1]
            if declared in ("bool", "int", "float"):
                assert t.kinds == (declared,) and not t.optional, (f.name, declared, t)
            if declared.endswith("| None"):
                assert t.optional, (f.name, declared, t)
    assert set(k for k, v in s.items() if "." not in k) == seen
    pc = PipelineConfig()
    for key in (k for k in s if "." in k):
        sub, _, attr = key.partition(".")
        assert hasattr(getattr(pc, sub), attr), key          # what update_config_from_dict applies


FIELDS = ["dit_cpu_offload", "num_gpus", "lora_strength", "dit_precision", "attention_backend", "workload_type",
          "flow_shift", "text_encoder_precisions", "vae_tiling", "num_inference_steps", "guidance_scale",
          "dist_timeout", "output_type"]
TEXTS = ["true", "False", "1", "0", "-1", "2", "1.5", "1e3", "nan", "inf", "", " ", "none", "null", "two", "maybe",
         "fp32", "bf16", "fp64", "TORCH_SDPA", "torch_sdpa", "t2v", "pil", '["bf16"]', '["fp64"]', "[]", "{}",
         "\u0969", "1_0", "0x10", str(2**64)]


@F.examples(60)
@given(st.sampled_from(FIELDS), st.sampled_from(TEXTS))
def test_any_value_is_of_its_fields_type_or_one_line_naming_all_four(key, text):
    from longcat_convert.errors import BadInput
    from parity.overrides import field_type, parse_overrides
    t = field_type(key)
    try:
        v = parse_overrides([f"{key}={text}"])[key]
    except BadInput as e:
        line = str(e)
        assert "\n" not in line and line.startswith(f"--fastvideo {key}={text}: ") and key in line
        assert f"accepted: {t.accepted()}" in line
        return
    if v is None:
        assert t.optional
    elif t.kinds == ("bool",):
        assert type(v) is bool
    elif t.kinds == ("int",):
        assert type(v) is int
    elif t.kinds == ("float",):
        assert type(v) is float and v == v and abs(v) != float("inf")
    elif t.kinds == ("choice",):
        assert v in t.choices
    elif t.each:
        assert isinstance(v, list) and all(x in t.each for x in v)
