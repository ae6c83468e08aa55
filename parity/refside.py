"""The reference side of a parity run: our re-implementation of the original
model (reference/), loaded with the ORIGINAL weights from SOURCE."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from longcat_convert.errors import BadInput


def check_device(device: str) -> None:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {device}: CUDA is not available on this machine (use --device cpu)")


def dit_dir(source: str | Path) -> Path:
    """SOURCE may be a model folder holding dit/, or the dit/ folder itself."""
    p = Path(source)
    if (p / "dit" / "config.json").is_file():
        return p / "dit"
    if (p / "config.json").is_file():
        return p
    raise BadInput(f"{p}: not a LongCat-Video model folder or dit/ folder (no dit/config.json or config.json)")


def model_dir(source: str | Path) -> Path | None:
    """The model folder (the one holding dit/ and lora/), or None for a bare dit/."""
    p = Path(source)
    d = dit_dir(p)
    return d.parent if d.name == "dit" else None


def read_source(source: str | Path):
    from longcat_convert.table import Dims
    d = dit_dir(source)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except ValueError as e:
        raise BadInput(f"{d / 'config.json'}: not valid JSON ({e})")
    if cfg.get("_class_name") == "LongCatTransformer3DModel":
        raise BadInput(f"{d / 'config.json'}: this is a converted (FastVideo-layout) folder; SOURCE must be "
                       "the original checkpoint")
    return d, cfg, Dims.from_original_config(cfg, str(d / "config.json"))


def source_dims(source):
    return read_source(source)[2]


def build_reference(orig_cfg: dict, *, dtype=torch.float32, device="cpu", attention="sdpa"):
    """An uninitialised reference model for an original config dict."""
    from reference.config import ReferenceConfig
    from reference.model import ReferenceDiT
    cfg = ReferenceConfig.from_original(orig_cfg)
    with torch.device("meta"):
        model = ReferenceDiT(cfg, attention=attention)
    return model.to_empty(device=device).to(dtype).eval()


def load_reference(source, *, dtype=torch.float32, device="cpu", attention="sdpa"):
    """(model with the original weights, original config dict, Dims)."""
    from longcat_convert.shards import ShardedReader
    from .native import load_state
    d, cfg, dims = read_source(source)
    model = build_reference(cfg, dtype=dtype, device=device, attention=attention)
    load_state(model, ShardedReader(d), device=device)
    return model, cfg, dims


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
