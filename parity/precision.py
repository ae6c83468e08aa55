"""The precision each compared row is judged at, derived once for every mode.

A row is judged by the policy of the precision BOTH its sides computed it in:

- by default the precision asked (``--dtype``): a float32 run is judged at float32;
- where both sides round a quantity to a lower precision by design of what is compared
  (two FastVideo runs that both cast the DiT input to bfloat16, say compile against eager),
  that row, and every later row of the loop computed from it, is judged by the policy of that
  precision: the candidate's error against the float32 truth, divided by the baseline's own
  (``noise_ratio``), as parity/tolerances.json defines it. A float32 limit would otherwise judge
  rounding noise: one bfloat16 step flipped by another summation order (another thread count,
  another CPU) moves such a row by ~1e-5, the float32 limit.
- a precision one side lowers ALONE is what a parity check exists to catch (FastVideo's
  bfloat16 DiT input against the original's float32, FSDP keeping bfloat16 parameters where
  float32 was asked): that row stays judged at the precision asked, and the report says so.

Where a side lowers precision is known from FastVideo's code (``LOWERINGS``: a row pattern and
the finding that explains it) and checked on the data: a side lowered a row only if every value
it recorded there is exactly representable in the lower dtype (a float32 tensor of latents is
never that by chance). So a fix that removes the cast, or a FastVideo that no longer makes it,
changes the derived precision without any runner saying so.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

from .policy import dtype_name
from .rows import STEPS, ordered, row_key


@dataclass(frozen=True)
class Lowering:
    row: str            # fnmatch pattern of the row where the side rounds
    dtype: torch.dtype
    finding: str        # the known-differences id that explains it
    what: str           # what a side does there, in a few words ("rounds the DiT input to bfloat16")
    what_both: str      # the same said of both sides ("round the DiT input to bfloat16")


# The places FastVideo 0.2.1's LongCat port rounds below the precision asked.
LOWERINGS = (
    Lowering("step.*.dit_in", torch.bfloat16, "bf16-dit-input",
             "rounds the DiT input to bfloat16", "round the DiT input to bfloat16"),
)


@dataclass(frozen=True)
class Precision:
    dtype: str          # the dtype name whose policy judges the row
    why: str
    lowered: bool = False   # judged below the precision asked (both sides lowered it)

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "why": self.why}


def representable(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Every value of ``t`` survives a round trip through ``dtype`` (the side stored it there)."""
    if not (torch.is_tensor(t) and t.is_floating_point()) or t.numel() < 16:
        return False        # too few values to tell a rounding from a coincidence
    return bool(torch.equal(t, t.to(dtype).to(t.dtype)))


def lowered_at(rows: dict, lowering: Lowering) -> list[str]:
    """The rows of one side that match ``lowering`` and hold values rounded to its dtype."""
    return [r for r in rows if fnmatchcase(r, lowering.row) and representable(rows[r], lowering.dtype)]


def derive(candidate: dict, reference: dict, asked, names: tuple[str, str] = ("candidate", "reference")
           ) -> dict[str, Precision]:
    """Row -> the precision it is judged at (rows of both sides, in run order)."""
    asked_name = dtype_name(asked)
    rows = ordered(set(candidate) | set(reference))
    out = {r: Precision(asked_name, f"{asked_name}: the precision asked") for r in rows}
    if asked_name != "float32":
        return out
    for low in LOWERINGS:
        a = set(lowered_at(candidate, low))
        b = set(lowered_at(reference, low))
        both = ordered(a & b)
        alone = ordered(a ^ b)
        low_name = dtype_name(low.dtype)
        first_both = both[0] if both else None
        for r in alone:
            if first_both is not None and row_key(r) >= row_key(first_both):
                continue
            side = names[0] if r in a else names[1]
            out[r] = Precision(asked_name, f"{asked_name}: the precision asked; only the {side} {low.what} "
                                           f"({low.finding}), which is what this check exists to catch")
        if first_both is None:
            continue
        start = row_key(first_both)
        for r in rows:
            k = row_key(r)
            if k[0] < STEPS or k < start:
                continue
            short = low_name.replace("bfloat16", "bf16").replace("float16", "fp16")
            if r in both:
                why = f"{short}: both sides {low.what_both} ({low.finding})"
            else:
                why = f"{short}: computed from {first_both}, where both sides {low.what_both} ({low.finding})"
            out[r] = Precision(low_name, why, lowered=True)
    return out


def margin(metrics: dict, limits: dict) -> dict | None:
    """The binding limit of a judged row: ``{"limit": name, "ratio": value / limit}``; a ratio
    below 1 passes, and how far below says how much room the verdict has. A noise ratio's
    natural value is 1 (exactly as far from the truth as the baseline), so its ratio is the
    excess over 1 against the limit's: (value - 1) / (limit - 1), 0 at or below 1."""
    best = None
    for name, lim in limits.items():
        v = metrics.get(name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            continue
        if name == "noise_ratio" and lim > 1:
            ratio = max(v - 1.0, 0.0) / (lim - 1.0)
        else:
            ratio = v / lim if lim else (0.0 if v == 0 else float("inf"))
        if best is None or ratio > best["ratio"]:
            best = {"limit": name, "ratio": ratio}
    return best
