"""Rows are judged at the precision both sides computed them in (parity/precision.py): a
quantity both sides round to bfloat16 by the bf16 policy against the float32 truth, one
that a side lowers alone at the precision asked; every judged row carries its precision
and its margin."""
from __future__ import annotations

import torch

from parity import report as R
from parity.judge import judge
from parity.policy import Policy
from parity.precision import derive, margin, representable


def _loop(seed: int, bf16_input: bool, noise: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    truth_in = torch.randn(1, 4, 2, 8, 8, generator=g)
    rows = {"timesteps": torch.tensor([1000.0, 500.0])}
    x = truth_in
    for i in range(2):
        xin = x.bfloat16().float() if bf16_input else x
        xin = xin + noise * torch.randn(xin.shape, generator=g) if noise else xin
        if bf16_input:
            xin = xin.bfloat16().float()
        out = torch.tanh(xin) * 0.5
        rows[f"step.{i}.dit_in"] = xin
        rows[f"step.{i}.dit_out"] = out
        x = x - 0.5 * out
        rows[f"step.{i}.latents"] = x
    rows["output.frames"] = x.clamp(-1, 1)
    return rows


def _judge(cand, ref, truth=None):
    pol = Policy.load(None)
    rep = R.start("parity", "t", mode="sampling", policy=pol, dtype=torch.float32, device="cpu")
    judge(rep, "c", cand, ref, policy=pol, dtype=torch.float32, device="cpu", truth=truth)
    return {r["name"]: r for r in rep["layers"]}


def test_representable_tells_a_rounded_tensor_from_a_float32_one():
    x = torch.randn(64)
    assert representable(x.bfloat16().float(), torch.bfloat16)
    assert not representable(x, torch.bfloat16)
    assert not representable(torch.tensor([1000.0, 500.0]), torch.bfloat16)     # too few values to tell


def test_both_sides_rounding_the_dit_input_are_judged_by_the_bf16_policy_from_that_row_on():
    truth = _loop(0, bf16_input=False)
    base = _loop(0, bf16_input=True)
    # The candidate: the same loop with a rounding flipped here and there (another summation order).
    cand = _loop(0, bf16_input=True, noise=1e-3)
    prec = derive(cand, base, torch.float32)
    assert prec["timesteps"].dtype == "float32"
    assert prec["step.0.dit_in"].dtype == "bfloat16" and "both sides" in prec["step.0.dit_in"].why
    assert prec["step.1.latents"].dtype == "bfloat16" and "computed from step.0.dit_in" in prec["step.1.latents"].why
    rows = _judge(cand, base, truth)
    assert rows["step.0.dit_in"]["precision"]["dtype"] == "bfloat16"
    assert "noise_ratio" in rows["step.0.dit_in"] and rows["step.0.dit_in"]["margin"]["limit"] in ("noise_ratio",
                                                                                                   "rel_l2")
    assert all(r["passed"] for r in rows.values()), [r for r in rows.values() if not r["passed"]]
    # The same two runs judged at float32 would fail: the float32 limit judges rounding noise.
    plain = _judge(cand, base)
    assert not plain["step.0.dit_in"]["passed"] and plain["step.0.dit_in"]["precision"]["dtype"] == "bfloat16"
    assert "no float32 truth" in " ".join(plain["step.0.dit_in"]["failures"])


def test_a_precision_one_side_lowers_alone_is_judged_at_the_precision_asked():
    truth = _loop(0, bf16_input=False)
    stock = _loop(0, bf16_input=True)
    rows = _judge(stock, truth)
    first = next(r for r in rows.values() if not r["passed"])
    assert first["name"] == "step.0.dit_in"
    assert first["precision"]["dtype"] == "float32" and "only the candidate" in first["precision"]["why"]
    assert first["margin"]["ratio"] > 1          # a failing row: value over its limit


def test_margin_is_the_binding_limit_and_a_noise_ratio_counts_from_one():
    assert margin({"rel_l2": 5e-6}, {"rel_l2": 1e-5}) == {"limit": "rel_l2", "ratio": 0.5}
    m = margin({"noise_ratio": 1.0, "rel_l2": 0.01}, {"noise_ratio": 3.0, "rel_l2": 0.05})
    assert m["limit"] == "rel_l2" and abs(m["ratio"] - 0.2) < 1e-12
    assert margin({"noise_ratio": 2.0}, {"noise_ratio": 3.0})["ratio"] == 0.5
