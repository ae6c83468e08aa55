"""The reference side of a parity run: our re-implementation of the original
model (reference/), loaded with the ORIGINAL weights from SOURCE through the
reference's own strict loader."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from longcat_convert.errors import BadInput


def open_source(source: str | Path):
    """SOURCE (model folder or dit/) -> (ReferenceConfig, ShardedReader, model folder).

    Keys and shapes are checked against the mapping table here, before any
    tensor is read."""
    from reference.loading import open_checkpoint, resolve_checkpoint
    _, dit = resolve_checkpoint(source)
    try:
        cls = json.loads((dit / "config.json").read_text()).get("_class_name")
    except ValueError as e:
        raise BadInput(f"{dit / 'config.json'}: not valid JSON ({e})")
    if cls == "LongCatTransformer3DModel":
        raise BadInput(f"{dit / 'config.json'}: this is a converted (FastVideo-layout) folder; SOURCE must be "
                       "the original checkpoint")
    return open_checkpoint(source)


def source_dims(source):
    return open_source(source)[0].dims


def load_reference(source, *, dtype=torch.float32, device="cpu", attention="sdpa"):
    """(reference model with the original weights, ReferenceConfig)."""
    from reference.loading import load_reference as load
    config, _, _ = open_source(source)
    return load(source, dtype=dtype, device=device, attention=attention), config


def build_reference(config, *, depth: int, dtype=torch.float32, device="cpu", attention="sdpa"):
    """An uninitialised reference model with ``depth`` blocks (blocks mode loads them)."""
    from reference.model import ReferenceDiT
    with torch.device("meta"):
        model = ReferenceDiT(config, attention=attention, depth=depth)
    return model.to_empty(device=device).to(dtype).eval()


def apply_lora(model, lora_file: str | Path, multiplier: float) -> None:
    """Original-format LoRA, original semantics (delta added to module outputs)."""
    key = Path(lora_file).stem
    model.load_lora(str(lora_file), key, multiplier)
    model.enable_loras(list(dict.fromkeys(model.active_loras + [key])))


def run(model, inp, dtype, device, *, kv_cache: dict | None = None, return_kv: bool | None = None,
        hidden_states=None, timestep=None, num_cond_latents: int | None = None, skip_crs_attn: bool | None = None):
    """One reference forward with the original's argument order and casting
    (the model casts its inputs to its dtype itself)."""
    hs = inp.hidden_states if hidden_states is None else hidden_states
    ts = inp.timestep if timestep is None else timestep
    rk = inp.return_kv if return_kv is None else return_kv
    cache = inp.kv_cache if kv_cache is None else kv_cache
    with torch.no_grad():
        out = model(hs.to(device), ts.to(device), inp.encoder_hidden_states.to(device),
                    encoder_attention_mask=inp.encoder_attention_mask.to(device),
                    num_cond_latents=inp.num_cond_latents if num_cond_latents is None else num_cond_latents,
                    return_kv=rk,
                    kv_cache_dict={i: (k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype))
                                   for i, (k, v) in cache.items()} if cache else None,
                    skip_crs_attn=inp.skip_crs_attn if skip_crs_attn is None else skip_crs_attn)
    return out if isinstance(out, tuple) else (out, None)
