"""Metrics, tolerance policy and report schema: pure functions, no models."""
import json
import math

import pytest
import torch

from longcat_convert.errors import BadInput
from parity import report as R
from parity.metrics import layer_metrics, noise_ratio, rel_l2
from parity.policy import Policy, dtype_name


def test_identical_tensors_have_zero_error():
    a = torch.randn(4, 5)
    m = layer_metrics(a.clone(), a)
    assert m["max_abs"] == m["mean_abs"] == m["p99_abs"] == m["rel_l2"] == 0.0
    assert m["cosine"] == pytest.approx(1.0) and m["pearson"] == pytest.approx(1.0)
    assert m["sqnr_db"] == math.inf


def test_known_values():
    ref = torch.tensor([3.0, 4.0])               # norm 5
    cand = torch.tensor([3.0, 4.5])              # error [0, 0.5]
    m = layer_metrics(cand, ref)
    assert m["max_abs"] == pytest.approx(0.5)
    assert m["mean_abs"] == pytest.approx(0.25)
    assert m["rel_l2"] == pytest.approx(0.1)
    assert m["sqnr_db"] == pytest.approx(20.0)   # 10*log10(25/0.25)
    assert m["cosine"] == pytest.approx((9 + 18) / (5 * math.hypot(3, 4.5)))


def test_a_scalar_or_constant_row_has_no_correlation():
    m = layer_metrics(torch.tensor([700.0]), torch.tensor([700.5]))
    assert m["pearson"] is None and m["cosine"] == pytest.approx(1.0) and m["rel_l2"] > 0
    assert layer_metrics(torch.full((4,), 3.0), torch.full((4,), 3.0))["pearson"] is None


def test_sign_flip_is_anticorrelated_and_shape_mismatch_raises():
    a = torch.randn(100)
    m = layer_metrics(-a, a)
    assert m["cosine"] == pytest.approx(-1.0) and m["pearson"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        layer_metrics(torch.zeros(3), torch.zeros(4))


def test_non_finite_candidate_is_infinitely_wrong():
    a = torch.randn(10)
    b = a.clone()
    b[3] = float("nan")
    assert layer_metrics(b, a)["rel_l2"] == math.inf


def test_noise_ratio_is_error_relative_to_the_references_own_low_precision_error():
    truth = torch.randn(1000, dtype=torch.float64)
    ref_lowp = truth + 1e-3 * torch.randn(1000, dtype=torch.float64)
    worse = truth + 3e-3 * torch.randn(1000, dtype=torch.float64)
    assert noise_ratio(ref_lowp, ref_lowp, truth)[0] == pytest.approx(1.0)
    assert 2.0 < noise_ratio(worse, ref_lowp, truth)[0] < 4.0
    assert rel_l2(truth, truth) == 0.0


def test_noise_ratio_floor_is_the_rounding_error_of_the_low_dtype():
    truth = torch.randn(4096, dtype=torch.float64)
    rounded = truth.to(torch.bfloat16).double()
    # a reference that is exact in low precision (computes the layer in float32)
    assert noise_ratio(rounded, truth, truth)[0] == float("inf")
    ratio, floor = noise_ratio(rounded, truth, truth, torch.bfloat16)
    assert ratio == pytest.approx(1.0) and 1e-3 < floor < 4e-3
    assert noise_ratio(truth * 1.01, truth, truth, torch.bfloat16)[0] > 3.0


def test_policy_limits_and_judgement():
    p = Policy.load()
    assert p.limits("fp32", "cpu", "blocks.0.attn") == {"rel_l2": 1e-5}
    assert p.judge({"rel_l2": 9e-6}, "float32", "cpu", "x")
    assert p.failures({"rel_l2": 2e-5}, torch.float32, "cuda:0", "x") == ["rel_l2=2e-05 > 1e-05"]
    # bf16 is judged by the noise ratio: a layer whose ratio was not measured does not pass
    assert not p.judge({"rel_l2": 1e-3}, "bf16", "cuda", "x")
    assert p.judge({"rel_l2": 1e-3, "noise_ratio": 1.2}, "bf16", "cuda", "x")
    assert dtype_name(torch.bfloat16) == "bfloat16" and dtype_name("fp16") == "float16"


def test_policy_file_errors_are_bad_input(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text('{"rules": [{"dtype": "*"}]}')
    with pytest.raises(BadInput, match="not a valid tolerance policy"):
        Policy.load(bad)
    only32 = tmp_path / "o.json"
    only32.write_text(json.dumps({"version": 9, "rules": [{"dtype": "float32", "max": {"rel_l2": 1}}]}))
    with pytest.raises(BadInput, match="no tolerance rule"):
        Policy.load(only32).limits("bf16", "cpu", "x")


def _report(values):
    p = Policy.load()
    rep = R.new_report("parity", "t", mode="e2e", policy=p, dtype="float32", device="cpu",
                       env={"torch": "x"})
    for name, v in values:
        m = {"rel_l2": v, "max_abs": v}
        f = p.failures(m, "float32", "cpu", name)
        R.add_layer(rep, name=name, native_name="n." + name, metrics=m, passed=not f, failures=f, case="c")
    return R.finalize(rep)


def test_first_divergent_is_the_first_failing_layer_in_forward_order():
    rep = _report([("x_embedder", 0.0), ("blocks.0.attn", 1e-6), ("blocks.0.cross_attn", 1e-3),
                   ("blocks.0", 2e-3), ("final_layer", 1e-7)])
    assert rep["passed"] is False and rep["first_divergent"] == "blocks.0.cross_attn"
    assert rep["cases"] == [{"case": "c", "passed": False, "first_divergent": "blocks.0.cross_attn"}]
    ok = _report([("x_embedder", 0.0), ("final_layer", 1e-7)])
    assert ok["passed"] is True and ok["first_divergent"] is None
    assert _report([])["passed"] is False  # nothing compared is not a pass


def test_reports_are_written_in_three_formats(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    rep = _report([("x_embedder", 0.0), ("blocks.0.attn", 1e-3), ("output", math.inf)])
    from parity import render
    paths = render.write_reports(rep, tmp_path / "r")
    assert [p.name for p in paths] == ["report.json", "report.md", "report.html"]
    data = json.loads(paths[0].read_text())
    assert data["first_divergent"] == "blocks.0.attn"
    assert data["layers"][2]["rel_l2"] == "inf"          # JSON-safe
    assert {"name", "native_name", "rel_l2", "passed"} <= set(data["layers"][0])
    md = paths[1].read_text()
    assert "First divergent row: `blocks.0.attn`" in md and "**FAIL**" in md
    html = paths[2].read_text()
    assert html.count("<svg") >= 2 and '<path class="case"' in html and "first divergent: blocks.0.attn" in html
    assert "blocks.0.attn" in summary.read_text()


def test_a_layer_run_on_one_side_only_is_a_failing_row():
    from parity.judge import judge
    p = Policy.load()
    rep = R.new_report("parity", "t", mode="e2e", policy=p, dtype="float32", device="cpu", env={})
    a = torch.randn(3)
    # blocks.0.cross_attn ran on neither side: no row; blocks.0.attn on the reference only.
    judge(rep, "c", {"x_embedder": a}, {"blocks.0.attn": a, "x_embedder": a}, policy=p, dtype="float32",
          device="cpu", names=("native model", "reference"),
          native_names={"x_embedder": "patch_embed", "blocks.0.attn": "blocks.0.self_attn"})
    R.finalize(rep)
    assert [r["name"] for r in rep["layers"]] == ["x_embedder", "blocks.0.attn"]   # forward order
    assert rep["layers"][0]["native_name"] == "patch_embed"
    assert rep["first_divergent"] == "blocks.0.attn"
    assert rep["layers"][1]["failures"] == ["ran in the reference only"]


def test_psnr_is_one_function_for_tensors_and_arrays():
    import numpy as np
    from parity.metrics import psnr
    a, b = torch.full((2, 3, 4), 0.5), torch.full((2, 3, 4), 0.6)
    assert psnr(a, b) == pytest.approx(20.0)                     # mse 0.01 at peak 1
    assert psnr(a.numpy(), b.numpy()) == psnr(a, b) and psnr(a, a.clone()) == math.inf
    assert psnr(a * 255, b * 255, peak=255.0) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((2, 3)))
