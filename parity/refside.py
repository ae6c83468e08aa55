"""The reference side of a parity run: our re-implementation of the original
model (reference/), loaded with the ORIGINAL weights from SOURCE through the
reference's own strict loader."""
from __future__ import annotations

from pathlib import Path

import torch

from longcat_convert.errors import BadInput


def local_source(source: str | Path) -> Path:
    """SOURCE as the converter understands it (model folder, dit/ folder, or a Hugging
    Face repo id resolved through the local cache) -> a local model or dit/ folder."""
    from longcat_convert.sources import resolve
    src = resolve(str(source), components=False)
    return src.root or src.dit


def open_source(source: str | Path):
    """SOURCE -> (ReferenceConfig, ShardedReader over dit/, model folder).

    Keys and shapes are checked against the reference model's own here, before
    any tensor is read."""
    from reference.loading import open_checkpoint, resolve_checkpoint
    local = local_source(source)
    _, dit = resolve_checkpoint(local)
    from longcat_convert.jsonfile import load_object
    cls = load_object(dit / "config.json", "a JSON object (the checkpoint's config)").get("_class_name")
    if cls == "LongCatTransformer3DModel":
        raise BadInput(f"{dit / 'config.json'}: this is a converted (FastVideo-layout) folder; SOURCE must be "
                       "the original checkpoint")
    return open_checkpoint(local)


def model_folder(source) -> Path:
    """The model folder of SOURCE (where lora/ and scheduler/ live)."""
    from reference.loading import resolve_checkpoint
    return resolve_checkpoint(local_source(source))[0]


def source_dims(source):
    """SOURCE's dimensions as the mapping table reads its config.json (``table.Dims``):
    what the native side, the layer pairs and generated inputs are built from. The
    reference reads the same file itself (``ReferenceConfig.dims``)."""
    from longcat_convert.jsonfile import load_object
    from longcat_convert.table import Dims
    from reference.loading import resolve_checkpoint
    _, dit = resolve_checkpoint(local_source(source))
    path = dit / "config.json"
    return Dims.from_original_config(load_object(path, "a JSON object (the checkpoint's config)"), str(path))


def load_reference(opened, *, dtype=torch.float32, device="cpu", attention="sdpa"):
    """The reference model with the original weights, from ``open_source``'s result
    (so the source is resolved and its headers checked once per run)."""
    from reference.loading import load_opened
    config, reader, _ = opened
    return load_opened(config, reader, dtype=dtype, device=device, attention=attention)


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


def run(model, inp, dtype, device, *, kv_cache: dict | None = None, **overrides):
    """One reference forward with the original's argument order -> (output, kv or None).
    The model casts its inputs to its own dtype, as the original does."""
    a = inp.call(dtype, device, kv_cache=kv_cache, **overrides)
    with torch.no_grad():
        out = model(a.pop("hidden_states"), a.pop("timestep"), a.pop("encoder_hidden_states"), **a)
    return out if isinstance(out, tuple) else (out, None)
