"""The one judge: two sets of rows (a candidate and a reference, each ``{row name:
tensor}``) become report rows, in run order (parity/rows.py), under the one
tolerance policy.

Every comparison of the tool ends here: DiT layers (reference vs FastVideo, or
our reference vs the upstream recordings), denoising-loop rows, component rows,
the ranks of a sequence-parallel run. A row recorded on one side only fails
("ran in the ... only"); so does a shape mismatch. With ``truth`` (a float32
run of the reference beside a low-precision one) the metrics are the candidate
against the truth and ``noise_ratio`` divides that error by the reference's own.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import report as R
from .metrics import layer_metrics, noise_ratio, rel_l2
from .policy import dtype_name
from .precision import Precision, derive, margin
from .rows import ordered


def same_form(row: str, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A DiT timestep given per sample [B] means the same as [B, T] with every frame
    equal (the DiT expands it so): one loop may hand either form."""
    if row.endswith(".timestep") and a.dim() != b.dim() and {a.dim(), b.dim()} == {1, 2}:
        if a.dim() == 1:
            a = a[:, None].expand(-1, b.shape[1])
        else:
            b = b[:, None].expand(-1, a.shape[1])
    return a, b


def judge(report: dict, case: str | None, candidate: dict, reference: dict, *, policy, dtype, device,
          truth: dict | None = None, lowp_dtype: torch.dtype | None = None,
          names: tuple[str, str] = ("candidate", "reference"), native_names: dict | None = None,
          common: Callable | None = None, rows=None, skip_limits: tuple[str, ...] = ()) -> None:
    """Add one report row per quantity of ``rows`` (default: every row either side
    recorded), in run order.

    ``native_names``: row -> the candidate's own name for it (the report's native
    column). ``common``: ``(row, candidate, reference) -> (candidate, reference)``
    bringing one row of both sides to one form (applied to the truth too).
    ``skip_limits``: policy limits that do not apply to this comparison."""
    native_names = native_names or {}
    # The precision each row is judged at: the one asked, or a lower one both sides computed it
    # in (parity/precision.py); a row judged below the precision asked needs the float32 truth.
    precisions = derive(candidate, reference, dtype, names)
    for row in ordered(rows if rows is not None else set(candidate) | set(reference)):
        native = native_names.get(row)
        prec = precisions.get(row) or Precision(dtype_name(dtype), "the precision asked")
        if row not in candidate or row not in reference:
            side = names[1] if row in reference else names[0]
            R.add_layer(report, name=row, native_name=native, case=case, metrics={}, passed=False,
                        failures=[f"ran in the {side} only"], precision=prec.as_dict())
            continue
        c, r = same_form(row, candidate[row], reference[row])
        t = truth.get(row) if truth is not None else None
        if common is not None:
            c0 = c
            c, r = common(row, c0, r)
            if t is not None:
                t = common(row, c0, t)[1]
        if t is not None:
            t = same_form(row, t, r)[0]
        if tuple(c.shape) != tuple(r.shape):
            R.add_layer(report, name=row, native_name=native, case=case, metrics={}, passed=False,
                        failures=[f"shape {list(c.shape)} != {names[1]} {list(r.shape)}"], precision=prec.as_dict())
            continue
        low = lowp_dtype if lowp_dtype is not None else (getattr(torch, prec.dtype) if prec.lowered else None)
        if t is not None and (lowp_dtype is not None or prec.lowered) and t.shape == c.shape:
            m = layer_metrics(c, t)
            m["ref_rel_l2"] = rel_l2(r, t)
            m["noise_ratio"], m["noise_floor"] = noise_ratio(c, r, t, low)
        else:
            m = layer_metrics(c, r)
        limits = {k: v for k, v in policy.limits(prec.dtype, device, row).items() if k not in skip_limits}
        fails = [f for f in policy.failures(m, prec.dtype, device, row) if f.split("=")[0] not in skip_limits]
        if prec.lowered and "noise_ratio" not in m and not torch.equal(c, r):
            fails.append(f"no float32 truth for this row: judged at {prec.dtype} (both sides lowered it), "
                         "the noise ratio needs one")
        elif prec.lowered and "noise_ratio" not in m:
            fails = []          # bit for bit: passes under any precision's rule
        R.add_layer(report, name=row, native_name=native, case=case, metrics=m, passed=not fails, failures=fails,
                    precision=prec.as_dict(), margin=margin(m, limits))
