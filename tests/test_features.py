"""The feature matrix (`longcat-convert features`, parity/features.py): each FastVideo
feature run through FastVideo's own build_pipeline and judged against the same run
without it. The verdict logic is checked on planted runs (a no-op, a numeric change,
a refusal, a crash, a CUDA-only failure); real FastVideo runs check that a planted
no-op is found as no_op and a planted weight change as diverges, that the unmerge
checker tells restored weights from unrestored ones bit for bit, and that the command
writes the matrix into the one report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from parity_support import GOLDEN, cli, needs_native

BUNDLE = GOLDEN / "tiny-bundle"
PIPE_CASE = BUNDLE / "cases" / "pipeline_t2v.safetensors"


# ----------------------------------------------------------------------------- verdicts on planted runs

def _rows(scale: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(0)
    rows = {"step.0.dit_in": torch.randn(1, 4, 2, 4, 6, generator=g),
            "step.0.dit_out": torch.randn(1, 4, 2, 4, 6, generator=g),
            "output.frames": torch.rand(1, 3, 5, 32, 48, generator=g)}
    if scale:
        rows["step.0.dit_out"] = rows["step.0.dit_out"] * (1 + scale)
        rows["output.frames"] = rows["output.frames"] * (1 + scale)
    return rows


def _decide(run, base=None, **feature):
    from parity.features import Feature, Run, decide
    from parity.policy import Policy
    base = base or Run(rows=_rows(), built={"modules": {"transformer": {"wrappers": {}}}}, wall_s=1.0, peak_mib=2.0)
    f = Feature(feature.pop("feature", "some_field"), feature.pop("setting", "True"), **feature)
    from parity import report as R
    rep = R.start("features", "test", mode="features", policy=Policy.load(None), dtype=torch.float32, device="cpu")
    return decide(f, run, base, report=rep, truth=None, policy=Policy.load(None), dtype=torch.float32, device="cpu")


def test_a_planted_no_op_is_no_op_and_a_change_in_the_built_objects_alone_is_exact():
    from parity.features import Run
    same = Run(rows=_rows(), built={"modules": {"transformer": {"wrappers": {}}}})
    assert _decide(same)["verdict"] == "no_op"
    wrapped = Run(rows=_rows(), built={"modules": {"transformer": {"wrappers": {"compiled_submodules": 2}}}})
    row = _decide(wrapped)
    assert row["verdict"] == "exact" and "modules" in row["message"]


def test_a_planted_numeric_change_diverges_at_its_row_and_a_tiny_one_is_within_tolerance():
    from parity.features import Run
    built = {"modules": {"transformer": {"wrappers": {}}}}
    row = _decide(Run(rows=_rows(1e-2), built=built))
    assert row["verdict"] == "diverges"
    assert row["against_baseline"]["first_divergent"] == "step.0.dit_out"
    assert row["against_baseline"]["rel_l2"] == pytest.approx(1e-2, rel=1e-3)
    assert _decide(Run(rows=_rows(1e-6), built=built))["verdict"] == "within_tolerance"


def test_refusals_crashes_and_cuda_only_failures_are_told_apart():
    from parity.features import Run
    refused = Run(error={"phase": "args", "type": "ValueError", "message": "Unknown attention backend 'X'",
                         "where": "fastvideo/attention/selector.py:53 coerce_attn_backend"})
    row = _decide(refused)
    assert row["verdict"] == "unsupported" and "Unknown attention backend" in row["message"]
    crash = Run(error={"phase": "forward", "type": "RuntimeError", "message": "boom", "where": "x.py:1 f"})
    row = _decide(crash)
    assert row["verdict"] == "crashes" and "x.py:1 f" in row["message"]
    row = _decide(crash, cpu_needs="needs CUDA: init_device_mesh('cuda')")
    assert row["verdict"] == "not_run" and row["message"].startswith("needs CUDA") and "boom" in row["message"]


def test_override_values_parse_like_the_command_line():
    from parity.features import parse_value
    assert parse_value("true") is True and parse_value("False") is False and parse_value("none") is None
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value('["bf16"]') == ["bf16"]
    assert parse_value("TORCH_SDPA") == "TORCH_SDPA"


# ----------------------------------------------------------------------------- real FastVideo runs

@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features") / "tiny-bundle-native"
    assert cli("convert", BUNDLE, out, "--quiet", "--no-fsync") == 0
    return out


@pytest.fixture(scope="module")
def short_case():
    from parity.cases import load_component
    from parity.features import matrix_case
    return matrix_case(load_component(PIPE_CASE))


@needs_native
def test_unknown_fastvideo_fields_are_refused_not_dropped():
    from longcat_convert.errors import BadInput
    from parity.features import parse_overrides, split_overrides
    kw, sp = split_overrides(parse_overrides(["vae_tiling=true", "dit_cpu_offload=false", "enable_teacache=true"]))
    assert kw == {"vae_tiling": True, "dit_cpu_offload": False} and sp == {"enable_teacache": True}
    with pytest.raises(BadInput, match="not a field"):
        parse_overrides(["no_such_field=1"])


@needs_native
@pytest.mark.slow
def test_real_runs_planted_no_op_and_planted_weight_change(bundle, short_case):
    """Through FastVideo's own build_pipeline: a step that changes nothing is no_op; one that
    changes one DiT weight diverges at the first DiT output."""
    from parity.features import Feature, decide, run_fastvideo
    from parity.policy import Policy
    base = run_fastvideo(bundle, short_case.meta)
    assert base.error is None, base.error
    assert base.built["modules"]["transformer"]["param_dtypes"] == {"float32": pytest.approx(
        sum(base.built["modules"]["transformer"]["param_dtypes"].values()))}
    assert base.built["attention_calls"] and base.built["weights_during_step"]["transformer"] == ["cpu"]

    def nothing(pipe, run):
        pass

    def plant(pipe, run):
        w = pipe.modules["transformer"].blocks[0].ffn.w2.weight
        with torch.no_grad():
            w.mul_(1.05)
    from parity import report as R
    rep = R.start("features", "test", mode="features", policy=Policy.load(None), dtype=torch.float32, device="cpu")
    kw = dict(report=rep, truth=None, policy=Policy.load(None), dtype=torch.float32, device="cpu")
    no_op = decide(Feature("planted", "nothing"), run_fastvideo(bundle, short_case.meta, before=nothing), base, **kw)
    assert no_op["verdict"] == "no_op", no_op
    changed = decide(Feature("planted", "w2 x1.05"), run_fastvideo(bundle, short_case.meta, before=plant), base, **kw)
    assert changed["verdict"] == "diverges", changed
    assert changed["against_baseline"]["first_divergent"] == "step.0.dit_out"


@needs_native
@pytest.mark.slow
def test_unmerge_checker_tells_restored_weights_bit_for_bit(bundle, short_case):
    """unmerge_evidence compares every LoRA layer's base weight with the checkpoint bit for bit:
    weights put back exactly count as restored, FastVideo's own unmerge is measured as it is."""
    from longcat_convert.shards import ShardedReader
    from parity import native as nat
    from parity.features import lora_files, run_fastvideo, unmerge_evidence
    conv, _ = lora_files(bundle, BUNDLE)
    run = run_fastvideo(bundle, short_case.meta, kwargs={"lora_path": str(conv)}, keep_pipe=True)
    assert run.error is None, run.error
    pipe = run.pipe
    lora = run.built["lora"]
    assert lora["targets_present"] == lora["targets_reached"] > 0 and lora["n_skipped"] == 0
    merged = unmerge_evidence(pipe, bundle, torch.float32)
    n = int(merged["weights_restored"].split("/")[1].split()[0])
    assert merged["weights_restored"] != f"{n}/{n} bit for bit"           # merged: the adapters changed them
    pipe.unmerge_lora_weights()
    measured = unmerge_evidence(pipe, bundle, torch.float32)             # FastVideo's own unmerge, as it is
    reader = ShardedReader(nat.transformer_dir(bundle))
    from fastvideo.layers.lora.linear import BaseLayerWithLoRA
    with torch.no_grad():
        for name, m in pipe.modules["transformer"].named_modules():
            if isinstance(m, BaseLayerWithLoRA):
                m.base_layer.weight.copy_(reader.get(f"{name}.weight"))
    assert unmerge_evidence(pipe, bundle, torch.float32)["weights_restored"] == f"{n}/{n} bit for bit"
    assert measured["layers_applying_lora_unmerged"] == lora["targets_reached"]


@needs_native
def test_the_lora_fix_restores_base_weights_and_switching_replaces_the_adapter(bundle, short_case, tmp_path):
    """Stock FastVideo on a CPU restores no base weight on unmerge (lora-unmerge-cpu); with
    --fixes lora-unmerge-cpu every adapted weight comes back bit for bit, switching to a second
    adapter and back leaves exactly the first adapter, and the scope ends with FastVideo as it was."""
    import fixes
    from fastvideo.layers.lora.linear import BaseLayerWithLoRA
    from parity.features import (delta_evidence, lora_files, lora_findings, run_fastvideo, unmerge_evidence,
                                 write_scaled_lora)
    conv, _ = lora_files(bundle, BUNDLE)
    second = write_scaled_lora(conv, tmp_path / "doubled.safetensors")

    def unmerged_and_switched():
        run = run_fastvideo(bundle, short_case.meta, kwargs={"lora_path": str(conv)}, keep_pipe=True)
        assert run.error is None, run.error
        pipe = run.pipe
        pipe.set_lora_adapter("doubled", str(second), strength=1.0)
        pipe.set_lora_adapter("default")
        back = delta_evidence(pipe, bundle, conv, 1.0)["merged_over_expected"]
        pipe.unmerge_lora_weights()
        return back, unmerge_evidence(pipe, bundle, torch.float32)["weights_restored"]

    init = BaseLayerWithLoRA.__init__
    back, restored = unmerged_and_switched()
    done, total = restored.split()[0].split("/")
    assert back != pytest.approx(1.0, abs=0.01) and int(done) < int(total)          # the findings reproduce
    with fixes.installed("lora-unmerge-cpu"):
        back, restored = unmerged_and_switched()
    assert back == pytest.approx(1.0, abs=1e-4) and restored == f"{total}/{total} bit for bit"
    assert BaseLayerWithLoRA.__init__ is init
    rows = [{"feature": "unmerge_lora_weights", "evidence": {"weights_restored": restored}},
            {"feature": "set_lora_adapter", "evidence": {"weights_hold_the_first_adapter_times": back}}]
    assert lora_findings(rows) == {"lora_unmerge_restores_nothing": False, "lora_switch_accumulates": False}


@needs_native
@pytest.mark.slow
def test_features_command_writes_the_matrix_into_one_report(bundle, tmp_path):
    rep = tmp_path / "rep"
    only = ["enable_teacache", "attention_backend=NO_SUCH_BACKEND", "use_fsdp_inference", "lora_path"]
    rc = cli("features", BUNDLE, bundle, "--case", PIPE_CASE, "--report", rep, "--quiet",
             *[a for o in only for a in ("--only", o)])
    assert rc == 0
    report = json.loads((rep / "report.json").read_text())
    rows = {(r["feature"], r["setting"]): r for r in report["features"]}
    assert rows[("enable_teacache", "True")]["verdict"] == "no_op"
    assert rows[("attention_backend", "NO_SUCH_BACKEND")]["verdict"] == "unsupported"
    fsdp = rows[("use_fsdp_inference", "True")]
    assert fsdp["verdict"] == ("not_run" if not torch.cuda.is_available() else fsdp["verdict"])
    assert "init_device_mesh" in fsdp["message"] or torch.cuda.is_available()
    conv = next(r for k, r in rows.items() if k[0] == "lora_path" and k[1].startswith("converted"))
    assert conv["verdict"] == "exact" and conv["baseline"].startswith("FastVideo with the LoRA merged")
    orig = next(r for k, r in rows.items() if k[0] == "lora_path" and "original-format" in k[1])
    assert orig["verdict"] == "no_op" and "original-format" in orig["message"]
    assert orig["lora_targets"]["targets_reached"] == 0 < orig["lora_targets"]["targets_present"]
    for r in report["features"]:
        assert r["verdict"] in ("exact", "within_tolerance", "no_op", "unsupported", "crashes", "diverges",
                                "not_run")
        assert r["feature"] and r["setting"] and r["baseline"] and "message" in r
    assert report["features_baseline"]["against_reference"]["verdict"] in ("diverges", "within_tolerance", "exact")
    md = (rep / "report.md").read_text()
    assert "| enable_teacache | True | no_op |" in md
    assert "Features" in (rep / "report.html").read_text()


@needs_native
@pytest.mark.slow
def test_parity_fastvideo_fields_reach_fastvideos_loader_and_the_report(converted, tmp_path):
    """parity --fastvideo: the DiT is built by FastVideo's TransformerLoader with the fields, the
    run is judged as usual, and the report records the fields and what was built; an unknown
    field and a SamplingParam field are refused (exit 2), and nothing carries over to the next run."""
    from parity import native as nat
    case = GOLDEN / "tiny-a" / "cases" / "t2v.safetensors"
    rep = tmp_path / "rep"
    assert cli("parity", GOLDEN / "tiny-a", converted["tiny-a"], "--case", case, "--quiet", "--report", rep,
               "--fastvideo", "dit_layerwise_offload=true", "--fastvideo", "transformer_quant=FP8") == 0
    report = json.loads((rep / "report.json").read_text())
    assert report["fastvideo"]["overrides"] == {"dit_layerwise_offload": True, "transformer_quant": "FP8"}
    built = report["fastvideo"]["built"][0]
    assert built["class"] == "LongCatTransformer3DModel" and built["param_devices"] == ["cpu"]
    assert built["param_dtypes"].keys() == {"float32"} and "quant_methods" not in built["wrappers"]
    assert "fastvideo_overrides" in report["environment"]
    assert nat.active_overrides() == {}
    assert cli("parity", GOLDEN / "tiny-a", converted["tiny-a"], "--fastvideo", "no_such_field=1") == 2
    assert cli("parity", GOLDEN / "tiny-a", converted["tiny-a"], "--fastvideo", "enable_teacache=true") == 2


@needs_native
@pytest.mark.slow
def test_parity_fastvideo_in_the_pipeline_mode_records_the_built_pipeline(bundle, tmp_path):
    import fastvideo.pipelines as fvp
    before = fvp.build_pipeline
    rep = tmp_path / "rep"
    cli("parity", BUNDLE, bundle, "--component", "pipeline", "--case", PIPE_CASE, "--sigmas", "original", "--quiet",
        "--report", rep, "--fastvideo", "vae_tiling=true")
    report = json.loads((rep / "report.json").read_text())
    built = report["fastvideo"]["built"]
    assert [b["pipeline"] for b in built] == ["LongCatPipeline"]
    assert built[0]["modules"]["vae"]["use_tiling"] is True
    assert fvp.build_pipeline is before                  # the recording wrapper is gone afterwards
