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
    for row in ordered(rows if rows is not None else set(candidate) | set(reference)):
        native = native_names.get(row)
        if row not in candidate or row not in reference:
            side = names[1] if row in reference else names[0]
            R.add_layer(report, name=row, native_name=native, case=case, metrics={}, passed=False,
                        failures=[f"ran in the {side} only"])
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
                        failures=[f"shape {list(c.shape)} != {names[1]} {list(r.shape)}"])
            continue
        if t is not None:
            m = layer_metrics(c, t)
            m["ref_rel_l2"] = rel_l2(r, t)
            m["noise_ratio"], m["noise_floor"] = noise_ratio(c, r, t, lowp_dtype)
        else:
            m = layer_metrics(c, r)
        fails = [f for f in policy.failures(m, dtype, device, row) if f.split("=")[0] not in skip_limits]
        R.add_layer(report, name=row, native_name=native, case=case, metrics=m, passed=not fails, failures=fails)
