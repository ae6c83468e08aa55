"""Trajectory cases (golden sampling runs) and the judging of their rows.

A trajectory case is ``<name>.safetensors`` + ``<name>.json`` (format in
golden/README.md): ``input.*`` (the latents the loop starts from, text
embeddings and masks), ``traj.*`` and ``output.latents`` (every recorded
quantity), and the loop's settings in the JSON. A row is named as its key
without ``traj.``: ``timesteps``, ``sigmas``, ``kv_cache.<i>.k``,
``step.<i>.timestep`` ... ``output.latents``.

``judge_rows`` is the one place where two sets of rows become report rows:
golden-check (reference vs golden) and sampling parity (FastVideo vs
reference, with the float32 truth in low precision) both use it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader

from . import report as R
from .metrics import layer_metrics, noise_ratio, rel_l2

REQUIRED = ("input.latents", "input.prompt_embeds", "input.prompt_attention_mask")
STEP_FIELDS = ("timestep", "dit_in", "dit_out", "noise_pred", "latents")
_STEP = re.compile(r"^step\.(\d+)\.(\w+)$")
_CACHE = re.compile(r"^kv_cache\.(\d+)\.([kv])$")


def row_rank(name: str) -> tuple:
    """Loop order: the schedule, the prefilled cache, each step's quantities in
    the order they arise, then the output."""
    if name == "timesteps":
        return (0, 0, 0, "")
    if name == "sigmas":
        return (0, 1, 0, "")
    m = _CACHE.match(name)
    if m:
        return (1, int(m.group(1)), m.group(2) == "v", "")
    m = _STEP.match(name)
    if m:
        f = m.group(2)
        return (2, int(m.group(1)), STEP_FIELDS.index(f) if f in STEP_FIELDS else len(STEP_FIELDS), f)
    if name.startswith("output."):
        return (3, 0, 0, name)
    return (4, 0, 0, name)


def is_trajectory_row(name: str) -> bool:
    return row_rank(name)[0] < 4


@dataclass
class TrajectoryCase:
    name: str
    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]       # input.* (float32; masks int64)
    expected: dict[str, torch.Tensor]      # row name -> recorded tensor, in loop order

    @property
    def description(self) -> str:
        return str(self.meta.get("description", ""))

    def settings(self, model_dir: Path | None = None):
        from reference.sampling import Settings
        return Settings.from_meta(self.meta, str(self.path.with_suffix(".json")), model_dir)

    def loop_inputs(self):
        from reference.sampling import Inputs
        t = self.tensors
        return Inputs(latents=t["input.latents"], prompt_embeds=t["input.prompt_embeds"],
                      prompt_attention_mask=t["input.prompt_attention_mask"],
                      negative_prompt_embeds=t.get("input.negative_prompt_embeds"),
                      negative_prompt_attention_mask=t.get("input.negative_prompt_attention_mask"))

    def loras(self) -> list[tuple[str, float]]:
        """(path relative to the model folder, multiplier) of every LoRA the case applies."""
        from reference.golden import lora_entries
        return lora_entries(self.meta, self.path.with_suffix(".json"))

    def bsa(self) -> dict | None:
        """The block-sparse attention the loop ran with (``enable_bsa``/``bsa_params``, as in
        DiT cases): None off, {} the checkpoint config's, else the checked params."""
        from reference.golden import bsa_entry
        return bsa_entry(self.meta, self.path.with_suffix(".json"))


def is_trajectory(path) -> bool:
    """True when the case file holds ``traj.*`` keys (reads only its header)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    return any(k.startswith("traj.") for k in ShardedReader(p).keys())


def load_trajectory(path) -> TrajectoryCase:
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise BadInput(f"{meta_path}: a trajectory case needs its JSON (mode, steps, scheduler, ...) beside it")
    from longcat_convert.jsonfile import load_object
    meta = load_object(meta_path, "a trajectory case's JSON object")
    if not isinstance(meta.get("case", ""), str):
        raise BadInput(f"{meta_path}: case is {json.dumps(meta['case'])[:60]}; expected a name (string)")
    reader = ShardedReader(path)
    tensors, expected = {}, {}
    for key in reader.keys():
        if key.startswith("input."):
            tensors[key] = reader.get(key)
        elif key.startswith("traj.") or key == "output.latents":
            row = key[len("traj."):] if key.startswith("traj.") else key
            if not is_trajectory_row(row):
                raise BadInput(f"{path}: unexpected key {key!r} (rows are timesteps, sigmas, kv_cache.<i>.k/v, "
                               f"step.<i>.<{'|'.join(STEP_FIELDS)}>, output.latents)")
            expected[row] = reader.get(key)
        else:
            raise BadInput(f"{path}: unexpected key {key!r} in a trajectory case (input.*, traj.*, output.latents)")
    for need in REQUIRED:
        if need not in tensors:
            raise BadInput(f"{path}: missing {need!r}; is this a trajectory case?")
    for key, t in tensors.items():
        if "mask" not in key and not t.is_floating_point():
            raise BadInput(f"{path}: {key!r} must be a floating tensor, not {t.dtype}")
    if tensors["input.latents"].dim() != 5:
        raise BadInput(f"{path}: input.latents has shape {list(tensors['input.latents'].shape)}; "
                       "expected [B, C, T, H, W]")
    _check_text(path, tensors)
    ordered = dict(sorted(expected.items(), key=lambda kv: row_rank(kv[0])))
    return TrajectoryCase(str(meta.get("case", path.stem)), path, meta, tensors, ordered)


def _check_text(path: Path, t: dict) -> None:
    """Prompt embeddings [B, 1, L, C] with an integer mask [B, L], the negative ones
    (when given, both) of the same shape: the loop concatenates them."""
    B = t["input.latents"].shape[0]
    pairs = [("input.prompt_embeds", "input.prompt_attention_mask")]
    neg = ("input.negative_prompt_embeds", "input.negative_prompt_attention_mask")
    if (neg[0] in t) != (neg[1] in t):
        raise BadInput(f"{path}: {neg[0]} and {neg[1]} come together (or neither)")
    if neg[0] in t:
        pairs.append(neg)
    for ek, mk in pairs:
        e, m = t[ek], t[mk]
        if e.dim() != 4 or e.shape[0] != B or e.shape[1] != 1:
            raise BadInput(f"{path}: {ek} has shape {list(e.shape)}; expected [{B}, 1, L, C]")
        if m.is_floating_point() or m.is_complex() or tuple(m.shape) != (B, e.shape[2]):
            raise BadInput(f"{path}: {mk} is {m.dtype} {list(m.shape)}; expected an integer mask [{B}, {e.shape[2]}]")
        if e.shape[1:] != t[pairs[0][0]].shape[1:]:
            raise BadInput(f"{path}: {ek} has shape {list(e.shape)}, {pairs[0][0]} {list(t[pairs[0][0]].shape)}; "
                           "they must agree")


def _common_form(row: str, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A DiT timestep given per sample [B] means the same as [B, T] with every frame
    equal (the DiT expands it so): one loop may hand either form."""
    if row.endswith(".timestep") and a.dim() != b.dim() and {a.dim(), b.dim()} == {1, 2}:
        if a.dim() == 1:
            a = a[:, None].expand(-1, b.shape[1])
        else:
            b = b[:, None].expand(-1, a.shape[1])
    return a, b


def judge_rows(report: dict, case: str, candidate: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
               *, policy, dtype, device, truth: dict[str, torch.Tensor] | None = None,
               lowp_dtype: torch.dtype | None = None, names: tuple[str, str] = ("candidate", "reference"),
               skip_limits: tuple[str, ...] = ()) -> None:
    """Add one report row per quantity, in loop order.

    A row recorded on one side only fails ("ran in ... only"); so does a shape
    mismatch. With ``truth`` (low precision), metrics are the candidate against
    the truth and ``noise_ratio`` divides that error by the reference's own."""
    for row in sorted(set(candidate) | set(reference), key=row_rank):
        if row not in candidate or row not in reference:
            side = names[1] if row in reference else names[0]
            R.add_layer(report, name=row, case=case, metrics={}, passed=False, failures=[f"ran in the {side} only"])
            continue
        c, r = _common_form(row, candidate[row], reference[row])
        t = _common_form(row, truth[row], r)[0] if truth is not None and row in truth else None
        if tuple(c.shape) != tuple(r.shape):
            R.add_layer(report, name=row, case=case, metrics={}, passed=False,
                        failures=[f"shape {list(c.shape)} != {names[1]} {list(r.shape)}"])
            continue
        if t is not None:
            m = layer_metrics(c, t)
            m["ref_rel_l2"] = rel_l2(r, t)
            m["noise_ratio"], m["noise_floor"] = noise_ratio(c, r, t, lowp_dtype)
        else:
            m = layer_metrics(c, r)
        fails = [f for f in policy.failures(m, dtype, device, row) if f.split("=")[0] not in skip_limits]
        R.add_layer(report, name=row, case=case, metrics=m, passed=not fails, failures=fails)
