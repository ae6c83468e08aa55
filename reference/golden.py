"""Golden cases: read one, run a model on it with forward hooks, collect ``act.*``.

The capture works for any model with the original module tree, so the same
code drives the reference and the real upstream model (parity/upstream.py).
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
    meta = read_meta(meta_path) if meta_path.is_file() else {}
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
    check_inputs(path, inputs, kv_cache)
    return Case(meta.get("case", path.stem), path, meta, inputs, acts, kv_cache)


# A case JSON's fields with the type each must have when present.
META_TYPES = {"case": str, "description": str, "num_cond_latents": int, "return_kv": bool,
              "skip_crs_attn": bool, "offload_kv_cache": bool}


def read_meta(meta_path: Path, types: dict = META_TYPES) -> dict:
    """A case's JSON: an object whose known fields have their types (LoRAs and BSA are
    checked by lora_entries / bsa_entry)."""
    from longcat_convert.jsonfile import load_object
    meta = load_object(meta_path, "a golden case's JSON object")
    for key, want in types.items():
        v = meta.get(key)
        if v is not None and (type(v) is not want and not (want is float and type(v) is int)):
            raise BadInput(f"{meta_path}: {key} is {json.dumps(v)[:60]}; expected {want.__name__}")
    if meta.get("num_cond_latents") is not None and meta["num_cond_latents"] < 0:
        raise BadInput(f"{meta_path}: num_cond_latents is {meta['num_cond_latents']}; expected >= 0")
    lora_entries(meta, meta_path)
    return meta


def check_inputs(path: Path, inputs: dict, kv_cache: dict) -> None:
    """The forward's inputs are the tensors the original takes: floating hidden states
    [B, C, T, H, W], text [B, 1, L, C'] and timestep [B] or [B, T]; an integer or bool
    mask [B, L]; one batch size throughout."""
    hs, ts, ehs = (inputs[k] for k in INPUTS)
    mask = inputs.get("input.encoder_attention_mask")
    for key, t, dims in (("input.hidden_states", hs, (5,)), ("input.timestep", ts, (1, 2)),
                         ("input.encoder_hidden_states", ehs, (4,))):
        if not t.is_floating_point() or t.dim() not in dims:
            raise BadInput(f"{path}: {key} is {t.dtype} {list(t.shape)}; expected a floating tensor with "
                           f"{' or '.join(map(str, dims))} dims")
    B = hs.shape[0]
    if ts.shape[0] != B or ehs.shape[0] != B or ehs.shape[1] != 1 or (ts.dim() == 2 and ts.shape[1] != hs.shape[2]):
        raise BadInput(f"{path}: input shapes disagree: hidden_states {list(hs.shape)}, timestep {list(ts.shape)}, "
                       f"encoder_hidden_states {list(ehs.shape)}; expected [B,C,T,H,W], [B] or [B,T], [B,1,L,C]")
    if mask is not None and (mask.is_floating_point() or mask.is_complex() or tuple(mask.shape) != (B, ehs.shape[2])):
        raise BadInput(f"{path}: input.encoder_attention_mask is {mask.dtype} {list(mask.shape)}; expected an "
                       f"integer mask [{B}, {ehs.shape[2]}]")
    for i, (k, v) in kv_cache.items():
        if not k.is_floating_point() or not v.is_floating_point() or k.shape != v.shape or k.dim() != 4 \
                or k.shape[0] not in (1, B):
            raise BadInput(f"{path}: input.kv_cache.{i}.k/.v are {k.dtype} {list(k.shape)} and {v.dtype} "
                           f"{list(v.shape)}; expected two floating tensors of one shape [B, heads, tokens, head_dim]")


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
