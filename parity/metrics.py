"""Error metrics: pure functions of two tensors (candidate vs reference).

Everything is computed in float64 so the metric itself adds no rounding of
its own to what it measures.
"""
from __future__ import annotations

import math

import torch

METRIC_KEYS = ("max_abs", "mean_abs", "p99_abs", "rel_l2", "cosine", "pearson", "sqnr_db")
# Beyond this many elements, p99 is taken from a fixed, evenly strided sample
# (torch.quantile refuses very large inputs).
_QUANTILE_MAX = 4_000_000


def _flat64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).to(device="cpu", dtype=torch.float64)


def _p99(x: torch.Tensor) -> float:
    if x.numel() > _QUANTILE_MAX:
        x = x[:: math.ceil(x.numel() / _QUANTILE_MAX)]
    return float(torch.quantile(x, 0.99))


def rel_l2(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    c, r = _flat64(candidate), _flat64(reference)
    denom = float(r.norm())
    num = float((c - r).norm())
    if denom == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / denom


def psnr(candidate, reference, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two pictures or videos (tensors or arrays of
    one shape, values in [0, ``peak``]): 10 log10(peak^2 / mean squared error); inf
    when they are identical."""
    c, r = _flat64(torch.as_tensor(candidate)), _flat64(torch.as_tensor(reference))
    if tuple(torch.as_tensor(candidate).shape) != tuple(torch.as_tensor(reference).shape):
        raise ValueError(f"psnr: shape mismatch: {tuple(torch.as_tensor(candidate).shape)} vs "
                         f"{tuple(torch.as_tensor(reference).shape)}")
    mse = float((c - r).square().mean())
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def layer_metrics(candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """max/mean/p99 absolute error, relative L2, cosine, Pearson (None where either side
    is constant: a scalar row has no correlation), SQNR (dB)."""
    if tuple(candidate.shape) != tuple(reference.shape):
        raise ValueError(f"shape mismatch: {tuple(candidate.shape)} vs {tuple(reference.shape)}")
    c, r = _flat64(candidate), _flat64(reference)
    if c.numel() == 0:
        return {k: 0.0 for k in METRIC_KEYS} | {"cosine": 1.0, "pearson": 1.0, "sqnr_db": math.inf}
    if not torch.isfinite(c).all():
        bad = float("nan")
        return {"max_abs": math.inf, "mean_abs": math.inf, "p99_abs": math.inf, "rel_l2": math.inf,
                "cosine": bad, "pearson": bad, "sqnr_db": -math.inf}
    d = c - r
    a = d.abs()
    sig, noise = float(r.square().sum()), float(d.square().sum())
    nc, nr = float(c.norm()), float(r.norm())
    cosine = float(c @ r) / (nc * nr) if nc > 0 and nr > 0 else (1.0 if nc == nr else 0.0)
    cc, rc = c - c.mean(), r - r.mean()
    ncc, nrc = float(cc.norm()), float(rc.norm())
    # A correlation needs spread on both sides: a scalar row, or a constant one (a timestep
    # repeated per frame), has none, and any number there would read as a finding.
    pearson = float(cc @ rc) / (ncc * nrc) if ncc > 0 and nrc > 0 else None
    if noise == 0.0:
        sqnr = math.inf
    elif sig == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(sig / noise)
    return {
        "max_abs": float(a.max()),
        "mean_abs": float(a.mean()),
        "p99_abs": _p99(a),
        "rel_l2": math.sqrt(noise / sig) if sig > 0 else (0.0 if noise == 0 else math.inf),
        "cosine": cosine,
        "pearson": pearson,
        "sqnr_db": sqnr,
    }


def noise_ratio(candidate: torch.Tensor, reference_lowp: torch.Tensor, truth: torch.Tensor,
                lowp_dtype: torch.dtype | None = None) -> tuple[float, float]:
    """FlashAttention's criterion -> (ratio, the denominator used).

    The candidate's error against a high-precision truth, divided by the error
    of the reference implementation run in the same low precision against that
    truth: <= k means "no worse than k times the intrinsic low-precision noise".

    Where the reference is exact in low precision (it computes that layer in
    float32, e.g. the original's timestep MLP) its own error is 0 and any
    difference would be an infinite ratio. The denominator is therefore at least
    the error of merely storing the truth in ``lowp_dtype``: no implementation
    whose output is rounded to that dtype can do better.
    """
    own = rel_l2(reference_lowp, truth)
    if lowp_dtype is not None:
        own = max(own, rel_l2(truth.to(lowp_dtype), truth))
    mine = rel_l2(candidate, truth)
    if own == 0.0:
        return (0.0 if mine == 0.0 else math.inf), own
    return mine / own, own
