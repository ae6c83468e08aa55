"""Golden cases: read one, run a model on it with forward hooks, collect ``act.*``.

The capture works for any model with the original module tree, so the same
code drives the reference and the real upstream model (reference/upstream.py).
Case format: see golden/README.md.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader

INPUTS = ("input.hidden_states", "input.timestep", "input.encoder_hidden_states")


@dataclass
class Case:
    name: str
    path: Path
    meta: dict
    inputs: dict[str, torch.Tensor]
    acts: dict[str, torch.Tensor]            # expected, in file order
    kv_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return str(self.meta.get("description", ""))

    def loras(self) -> list[tuple[str, float]]:
        """(path relative to the model folder, multiplier) of every LoRA the case applies."""
        return lora_entries(self.meta, self.path.with_suffix(".json"))

    def bsa(self) -> dict | None:
        """The block-sparse attention the case ran with: None when its JSON does not set
        ``enable_bsa``; otherwise its ``bsa_params`` (checked), or {} meaning "the
        checkpoint config's bsa_params" (what the original's ``dit.enable_bsa()`` uses).
        Pass it to ``ReferenceDiT.enable_bsa`` (None: ``disable_bsa``)."""
        return bsa_entry(self.meta, self.path.with_suffix(".json"))

    def forward_kwargs(self) -> dict:
        kw = dict(hidden_states=self.inputs["input.hidden_states"], timestep=self.inputs["input.timestep"],
                  encoder_hidden_states=self.inputs["input.encoder_hidden_states"],
                  encoder_attention_mask=self.inputs.get("input.encoder_attention_mask"),
                  num_cond_latents=int(self.meta.get("num_cond_latents", 0) or 0),
                  return_kv=bool(self.meta.get("return_kv", False)),
                  skip_crs_attn=bool(self.meta.get("skip_crs_attn", False)),
                  offload_kv_cache=bool(self.meta.get("offload_kv_cache", False)))
        if self.kv_cache:
            kw["kv_cache_dict"] = dict(self.kv_cache)
        return kw


def lora_entries(meta: dict, where) -> list[tuple[str, float]]:
    """A case JSON's LoRAs: ``lora`` + ``lora_multiplier``, and/or ``loras``: [{path, multiplier}]."""
    out = []
    try:
        if meta.get("lora"):
            out.append((str(meta["lora"]), float(meta.get("lora_multiplier", 1.0))))
        for item in meta.get("loras", []) or []:
            out.append((str(item["path"]), float(item.get("multiplier", 1.0))))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BadInput(f"{where}: 'lora'/'lora_multiplier' or 'loras' ([{{path, multiplier}}]) is malformed")
    return out


def bsa_entry(meta: dict, where) -> dict | None:
    """A case JSON's ``enable_bsa`` / ``bsa_params`` -> None (off) or the params dict ({}: the config's)."""
    from .bsa import BsaParams
    on = meta.get("enable_bsa", False)
    if not isinstance(on, bool):
        raise BadInput(f"{where}: enable_bsa is {on!r}; expected true or false")
    if not on:
        return None
    params = meta.get("bsa_params")
    if params is None:
        return {}
    return BsaParams.from_dict(params, str(where)).to_dict()


def load_case(path) -> Case:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise BadInput(f"{path}: a golden case is a .safetensors file (with its .json beside it)")
    if not path.is_file():
        raise BadInput(f"{path}: no such case file")
    meta_path = path.with_suffix(".json")
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            raise BadInput(f"{meta_path}: not valid JSON")
        if not isinstance(meta, dict):
            raise BadInput(f"{meta_path}: expected a JSON object")
    reader = ShardedReader(path)
    inputs, acts, kv = {}, {}, {}
    for key in reader.keys():
        if key.startswith("act."):
            acts[key] = reader.get(key)
        elif key.startswith("input.kv_cache."):
            parts = key.split(".")
            if len(parts) != 4 or not parts[2].isdigit() or parts[3] not in ("k", "v"):
                raise BadInput(f"{path}: malformed key {key!r}; expected input.kv_cache.<block>.k / .v")
            kv.setdefault(int(parts[2]), {})[parts[3]] = reader.get(key)
        elif key.startswith("input."):
            inputs[key] = reader.get(key)
        else:
            raise BadInput(f"{path}: unexpected key {key!r} (golden keys start with input. or act.)")
    for need in INPUTS:
        if need not in inputs:
            raise BadInput(f"{path}: missing {need!r}; is this a golden case file?")
    if not acts:
        raise BadInput(f"{path}: no act.* tensors to compare against")
    for i, pair in kv.items():
        if set(pair) != {"k", "v"}:
            raise BadInput(f"{path}: input.kv_cache.{i} needs both .k and .v")
    kv_cache = {i: (p["k"], p["v"]) for i, p in sorted(kv.items())}
    return Case(meta.get("case", path.stem), path, meta, inputs, acts, kv_cache)


def module_of(act: str) -> str | None:
    """'act.blocks.0.attn' -> 'blocks.0.attn'; None for act.output / act.kv_cache.*."""
    name = act[len("act."):]
    if name == "output" or name.startswith("kv_cache."):
        return None
    return name


def run_with_hooks(model: torch.nn.Module, case: Case, move=None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Run ``model(**case.forward_kwargs())`` and capture every act the case holds.

    Returns (names in the order they were produced, {act name: float32 CPU tensor}).
    ``move(tensor)`` places inputs (device); dtype casting is the model's business."""
    move = move or (lambda t: t)
    wanted = [a for a in case.acts if module_of(a) is not None]
    order: list[str] = []
    got: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(act):
        def hook(_mod, _args, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            order.append(act)
            got[act] = out.detach().float().cpu()
        return hook

    try:
        for act in wanted:
            try:
                mod = model.get_submodule(module_of(act))
            except AttributeError:
                raise BadInput(f"{case.path}: the case has {act!r} but the model has no module "
                               f"{module_of(act)!r}; is the case for this checkpoint?")
            handles.append(mod.register_forward_hook(hook_for(act)))
        kw = case.forward_kwargs()
        for k, v in list(kw.items()):
            if isinstance(v, torch.Tensor):
                kw[k] = move(v)
        if "kv_cache_dict" in kw:
            kw["kv_cache_dict"] = {i: (move(k), move(v)) for i, (k, v) in kw["kv_cache_dict"].items()}
        with torch.no_grad():
            result = model(**kw)
    finally:
        for h in handles:
            h.remove()
    out, caches = (result if kw.get("return_kv") else (result, {}))
    order.append("act.output")
    got["act.output"] = out.detach().float().cpu()
    for i, (k, v) in caches.items():
        for name, t in (("k", k), ("v", v)):
            key = f"act.kv_cache.{i}.{name}"
            order.append(key)
            got[key] = t.detach().float().cpu()
    return order, got
