"""Fuzzing every input file the tools read.

1. The safetensors reader against the official ``safetensors`` parser (differential):
   for every mutation of a real golden file, if the official parser refuses it ours
   raises BadInput (one line); if it accepts it, ours reads every tensor byte-identically.
2. Shard indexes, config.json, LoRA files, golden case files and their JSON, gate.json
   and tolerance files, through the real commands: exit 0, 1 or 2, never an exception;
   exit 2 is one line and leaves nothing behind.

``make test`` runs a bounded, deterministic number of examples; ``make fuzz`` runs the
same properties long and randomized (LONGCAT_FUZZ=long). Every failure found is kept
in tests/fuzz_corpus/ and replayed here.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

import fuzz_support as F
from convert_support import needs_native

CORPUS_ST = sorted(F.CORPUS.glob("st-*.safetensors"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- 1. the reader, differentially ----------------------------------------------------------


@F.examples(150)
@given(F.safetensors_files())
def test_reader_agrees_with_the_official_parser(scratch, blob):
    F.check_differential(blob, scratch / "sample.safetensors")


@pytest.mark.parametrize("path", CORPUS_ST, ids=lambda p: p.name)
def test_reader_corpus(scratch, path):
    F.check_differential(path.read_bytes(), scratch / "corpus.safetensors")


def test_corpus_covers_both_outcomes(scratch):
    seen = {F.check_differential(p.read_bytes(), scratch / "c.safetensors") for p in CORPUS_ST}
    assert seen == {"accept", "reject"} and len(CORPUS_ST) >= 50


# -- 2. the other inputs, through the real commands -----------------------------------------


def _convert_and_verify(model: Path, scratch: Path) -> None:
    """plan, convert and (when it converted) verify a model folder: exits 0/1/2 only."""
    import shutil
    F.check_command("plan", model)
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    if F.check_command("convert", model, out, "--quiet", "--no-fsync", out=out) == 0:
        assert F.check_command("verify", model, out, "--quiet") == 0


def _model(scratch: Path, rel: str, blob: bytes) -> Path:
    return F.model_folder(scratch / "model", {rel: blob})


@F.examples(20)
@given(F.config_files())
def test_config_json(scratch, blob):
    _convert_and_verify(_model(scratch, "dit/config.json", blob), scratch)


@F.examples(20)
@given(F.index_files())
def test_shard_index(scratch, blob):
    _convert_and_verify(_model(scratch, F.INDEX, blob), scratch)


@F.examples(10)
@given(F.safetensors_files(seeds=[F.TINY_A / "dit" / F.SHARD_NAMES[0]], small=False))
def test_shard_in_a_model_folder(scratch, blob):
    _convert_and_verify(_model(scratch, "dit/" + F.SHARD_NAMES[0], blob), scratch)


@F.examples(15)
@given(F.lora_files())
def test_lora_file(scratch, blob):
    _convert_and_verify(_model(scratch, "lora/tiny_lora.safetensors", blob), scratch)


_WHERE = {"config": "dit/config.json", "index": F.INDEX, "shard": "dit/" + F.SHARD_NAMES[0],
          "lora": "lora/tiny_lora.safetensors"}
CORPUS_MODEL = sorted(p for p in F.CORPUS.iterdir() if p.name.split("-")[0] in _WHERE)


# corpus files that are valid input (each once crashed the tools); every other one is refused
VALID = {"config-edge-flashattn3-markup.json", "lora-edge-one-module-valid.safetensors",
         "lora-edge-alpha-scale-f32-max.safetensors"}


@pytest.mark.parametrize("path", CORPUS_MODEL, ids=lambda p: p.name)
def test_model_input_corpus(scratch, path):
    from convert_support import one_line, run
    rel = _WHERE[path.name.split("-")[0]]
    model = _model(scratch, rel, path.read_bytes())
    _convert_and_verify(model, scratch)
    rc, _, err = run("plan", model)
    if path.name in VALID:
        assert rc == 0, err
    else:
        assert rc == 2 and Path(rel).name in one_line(err), err


def test_a_lora_cut_to_one_module_still_converts(scratch):
    """The LoRA corpus is cut down to one module; the cut-down file itself is valid."""
    model = _model(scratch, "lora/tiny_lora.safetensors", (F.CORPUS / "lora-edge-one-module-valid.safetensors")
                   .read_bytes())
    assert F.check_command("plan", model) == 0


# golden cases: the case file and its JSON, through golden-check (and parity)

CASE_NAMES = ["t2v", "t2v_lora", "traj_t2v_cfg"]


def _case(scratch: Path, name: str, blob: bytes | None = None, meta: bytes | None = None) -> Path:
    """A case named ``name`` in a scratch folder: the golden one, with its file or JSON replaced."""
    d = scratch / "cases"
    d.mkdir(exist_ok=True)
    (d / f"{name}.safetensors").write_bytes(blob if blob is not None else (F.CASES / f"{name}.safetensors")
                                            .read_bytes())
    (d / f"{name}.json").write_bytes(meta if meta is not None else (F.CASES / f"{name}.json").read_bytes())
    return d / f"{name}.safetensors"


def _case_samples():
    from hypothesis import strategies as st
    return st.sampled_from(CASE_NAMES).flatmap(lambda n: st.one_of(
        st.tuples(st.just(n), F.case_blobs(n), st.none()), st.tuples(st.just(n), st.none(), F.case_json(n))))


@F.examples(8)
@given(_case_samples())
def test_golden_case(scratch, sample):
    F.check_command("golden-check", F.TINY_A, _case(scratch, *sample), "--quiet")


@F.examples(5)
@given(F.config_files())
def test_config_json_in_golden_check(scratch, blob):
    F.check_command("golden-check", _model(scratch, "dit/config.json", blob), F.CASES / "t2v.safetensors", "--quiet")


@needs_native
@pytest.mark.skipif(F.PROFILE == "ci", reason="long run only (make fuzz): parity reads cases with golden-check's reader")
@F.examples(3)
@given(_case_samples().filter(lambda s: not s[0].startswith("traj")))
def test_golden_case_in_parity(scratch, converted, sample):
    F.check_command("parity", F.TINY_A, converted["tiny-a"], "--case", _case(scratch, *sample), "--quiet")


CORPUS_CASES = sorted({p.with_suffix("").name for p in F.CORPUS.glob("case-*")})
CASES_OK = {"case-t2v-edge-inputs-and-output-only"}


@pytest.mark.parametrize("stem", CORPUS_CASES)
def test_case_corpus(scratch, stem):
    """case-<name>-<id>.safetensors / .json: that file (or JSON) in place of the golden one."""
    from convert_support import one_line, run
    name = next(n for n in sorted(CASE_NAMES, key=len, reverse=True) if stem.startswith(f"case-{n}-"))
    files = {ext: F.CORPUS / f"{stem}.{ext}" for ext in ("safetensors", "json")}
    case = _case(scratch, name, *(p.read_bytes() if p.is_file() else None for p in files.values()))
    rc, _, err = run("golden-check", F.TINY_A, case, "--quiet")
    if stem in CASES_OK:
        assert rc in (0, 1), err            # runs (it holds only the output to compare)
    else:
        assert rc == 2 and name in one_line(err), err


# gate.json and tolerance files


@F.examples(20)
@given(F.gate_files())
def test_gate_manifest(scratch, blob):
    import shutil
    from longcat_convert.errors import BadInput
    from parity.gate import load_manifest, plan_steps
    golden = scratch / "golden"
    golden.mkdir(exist_ok=True)
    (golden / "gate.json").write_bytes(blob)
    work = scratch / "gate-work"
    shutil.rmtree(work, ignore_errors=True)
    try:
        steps = plan_steps(golden, work, load_manifest(golden))
    except BadInput as e:
        assert "\n" not in str(e) and not work.exists()    # refused before anything was made
    else:
        assert all(isinstance(a, str) for s in steps for a in s.argv)
    shutil.rmtree(work, ignore_errors=True)
    # the real command: its models are not there, so every step fails fast (exit 1), or the manifest is bad (2)
    F.check_command("gate", "--golden", golden, "--report", work)


@F.examples(30)
@given(F.tolerance_files())
def test_tolerance_file(scratch, blob):
    from longcat_convert.errors import BadInput
    from parity.policy import Policy
    p = scratch / "tolerances.json"
    p.write_bytes(blob)
    try:
        policy = Policy.load(p)
    except BadInput as e:
        assert "\n" not in str(e)
    else:
        for dtype, device, layer in [("float32", "cpu", "blocks.0.attn"), ("bf16", "cuda:0", "*")]:
            try:
                assert isinstance(policy.describe(dtype, device), str)
                policy.failures({"rel_l2": 1e-3, "noise_ratio": 1.0, "cosine": float("nan")}, dtype, device, layer)
            except BadInput as e:
                assert "\n" not in str(e)
    F.check_command("parity", scratch / "nope", scratch / "nope", "--tolerances", p)


@pytest.mark.parametrize("path", sorted(F.CORPUS.glob("gate-*.json")), ids=lambda p: p.name)
def test_gate_corpus(scratch, path):
    from convert_support import one_line, run
    golden = scratch / "golden-corpus"
    golden.mkdir(exist_ok=True)
    (golden / "gate.json").write_bytes(path.read_bytes())
    rc, _, err = run("gate", "--golden", golden, "--report", scratch / "gate-corpus-work")
    assert rc == 2 and "gate.json" in one_line(err), err
    assert not (scratch / "gate-corpus-work").exists()


@pytest.mark.parametrize("path", sorted(F.CORPUS.glob("tol-*.json")), ids=lambda p: p.name)
def test_tolerance_corpus(scratch, path):
    from convert_support import one_line, run
    rc, _, err = run("parity", scratch / "nope", scratch / "nope", "--tolerances", path)
    assert rc == 2 and path.name in one_line(err), err


# a converted (FastVideo-layout) folder as input: export and verify


def _native(scratch: Path, converted: Path, rel: str, blob: bytes) -> Path:
    """The converted tiny-a as links, with one file replaced."""
    import os
    import shutil
    root = scratch / "native"
    shutil.rmtree(root, ignore_errors=True)
    for f in sorted(converted.rglob("*")):
        if f.is_file():
            dst = root / f.relative_to(converted)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if str(f.relative_to(converted)) == rel:
                dst.write_bytes(blob)
            else:
                os.symlink(f, dst)
    return root


def _native_samples():
    from hypothesis import strategies as st
    t = "transformer/"
    return st.one_of(st.tuples(st.just(t + "config.json"), F.config_files()),
                     st.tuples(st.just("model_index.json"), F.config_files()),
                     st.tuples(st.just("conversion.json"), F.config_files()),
                     st.tuples(st.just("lora/tiny_lora/tiny_lora.safetensors"), F.lora_files()),
                     st.tuples(st.just(t + "diffusion_pytorch_model.safetensors.index.json"), F.index_files()),
                     st.tuples(st.just(t + "diffusion_pytorch_model-00001-of-00001.safetensors"),
                               F.safetensors_files(seeds=[F.TINY_A / "dit" / F.SHARD_NAMES[0]], small=False)))


@F.examples(10)
@given(_native_samples())
def test_converted_folder_in_export_and_verify(scratch, converted, sample):
    import shutil
    native = _native(scratch, converted["tiny-a"], *sample)
    out = scratch / "exported"
    shutil.rmtree(out, ignore_errors=True)
    F.check_command("export", native, out, "--quiet", out=out)
    F.check_command("verify", F.TINY_A, native, "--quiet")


@pytest.mark.parametrize("path", sorted(F.CORPUS.glob("record-*.json")), ids=lambda p: p.name)
def test_conversion_record_corpus(scratch, converted, path):
    from convert_support import one_line, run
    rc, _, err = run("verify", F.TINY_A, _native(scratch, converted["tiny-a"], "conversion.json", path.read_bytes()))
    assert rc == 2 and "conversion.json" in one_line(err), err
