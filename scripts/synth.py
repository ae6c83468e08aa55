"""Synthetic LongCat-Video checkpoints in the original layout, from the mapping
table's shapes: for tests (any width, depth, head count, shard count, LoRA rank)
and for the benchmark (the released widths, a few blocks).

Values are finite normal noise. ``fill="random"`` draws every tensor afresh
(small models); ``fill="pool"`` slices a fixed random pool at a random offset
per tensor, so gigabytes are written at disk speed.
"""
from __future__ import annotations

import json
from pathlib import Path

from longcat_convert.lora import encode_module
from longcat_convert.table import Dims, leaf_modules, original_shapes
from longcat_convert.writer import encode_header

ST_DTYPES = {"fp32": "F32", "bf16": "BF16", "fp16": "F16", "F32": "F32", "BF16": "BF16", "F16": "F16"}
ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2}
WRITE_CHUNK = 16 * 2**20

REAL_DIMS = Dims(hidden=4096, heads=32, depth=48, cin=16, cout=16, caption=4096, adaln=512, freq=256,
                 mlp_ratio=4.0, patch=(1, 2, 2))


def original_config(dims: Dims, **overrides) -> dict:
    """A dit/config.json for ``dims`` with the released model's other settings."""
    cfg = {
        "_class_name": "LongCatVideoTransformer3DModel", "_diffusers_version": "0.35.1",
        "in_channels": dims.cin, "out_channels": dims.cout, "hidden_size": dims.hidden, "depth": dims.depth,
        "num_heads": dims.heads, "caption_channels": dims.caption,
        "mlp_ratio": int(dims.mlp_ratio) if float(dims.mlp_ratio).is_integer() else dims.mlp_ratio,
        "adaln_tembed_dim": dims.adaln, "frequency_embedding_size": dims.freq, "patch_size": list(dims.patch),
        "text_tokens_zero_pad": True, "enable_flashattn3": False, "enable_flashattn2": True,
        "enable_xformers": False, "enable_bsa": False,
        "bsa_params": {"sparsity": 0.9375, "cdf_threshold": None, "chunk_3d_shape_q": [4, 4, 4],
                       "chunk_3d_shape_k": [4, 4, 4]},
        "cp_split_hw": None,
    }
    cfg.update(overrides)
    return cfg


def _np():
    import numpy as np
    return np


def to_bits(values, st_dtype: str):
    """float32 numpy values -> the raw bytes of ``st_dtype`` (bf16 rounded to nearest even)."""
    np = _np()
    values = np.asarray(values, dtype=np.float32)
    if st_dtype == "F32":
        return values.tobytes()
    if st_dtype == "F16":
        return values.astype(np.float16).tobytes()
    if st_dtype == "BF16":
        u = values.view(np.uint32).astype(np.uint64)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        return r.tobytes()
    raise ValueError(st_dtype)


class _Filler:
    def __init__(self, st_dtype: str, seed: int, fill: str, pool_bytes: int = 64 * 2**20):
        np = _np()
        self.np = np
        self.dtype = st_dtype
        self.item = ITEMSIZE[st_dtype]
        self.rng = np.random.default_rng(seed)
        self.fill = fill
        if fill == "pool":
            n = pool_bytes // self.item
            self.pool = memoryview(to_bits(self.rng.standard_normal(n, dtype=np.float32) * 0.02, st_dtype))

    def chunks(self, key: str, shape: tuple[int, ...]):
        numel = 1
        for s in shape:
            numel *= s
        if self.fill == "random":
            scale = 1.0 if len(shape) == 1 and ("norm" in key) else 0.05
            vals = self.rng.standard_normal(numel, dtype=self.np.float32) * scale
            if scale == 1.0:
                vals = 1.0 + 0.1 * vals
            yield to_bits(vals, self.dtype)
            return
        total = numel * self.item
        pos = int(self.rng.integers(0, len(self.pool) // self.item)) * self.item
        while total:
            n = min(total, len(self.pool) - pos, WRITE_CHUNK)
            yield self.pool[pos:pos + n]
            total -= n
            pos = (pos + n) % len(self.pool)


def write_file(path: Path, specs: list[tuple[str, str, tuple[int, ...]]], filler: _Filler) -> None:
    entries, pos = {}, 0
    for key, dt, shape in specs:
        n = ITEMSIZE[dt]
        for s in shape:
            n *= s
        entries[key] = {"dtype": dt, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    with open(path, "wb") as f:
        f.write(encode_header(entries))
        for key, _, shape in specs:
            for chunk in filler.chunks(key, shape):
                f.write(chunk)


def build_checkpoint(folder: str | Path, dims: Dims, dtype: str = "fp32", shards: int = 2, *,
                     seed: int = 0, fill: str | None = None, config_overrides: dict | None = None,
                     lora_ranks: tuple[int, ...] = (), lora_alpha_scales: tuple[float, ...] = (),
                     components: bool = False) -> Path:
    """Write ``folder/dit/`` (config, ``shards`` shards + index) and optional LoRAs/components.

    Returns ``folder``. Tensors are spread over shards in table order, by bytes,
    as the release does.
    """
    folder = Path(folder)
    dit = folder / "dit"
    dit.mkdir(parents=True, exist_ok=True)
    st = ST_DTYPES[dtype]
    shapes = original_shapes(dims)
    total = sum(_numel(s) for s in shapes.values()) * ITEMSIZE[st]
    fill = fill or ("random" if total < 256 * 2**20 else "pool")
    filler = _Filler(st, seed, fill)
    (dit / "config.json").write_text(json.dumps(original_config(dims, **(config_overrides or {})), indent=2))
    per_shard = total / max(shards, 1)
    groups: list[list[str]] = [[] for _ in range(shards)]
    acc = 0
    for key, shape in shapes.items():
        i = min(int(acc // per_shard), shards - 1)
        groups[i].append(key)
        acc += _numel(shape) * ITEMSIZE[st]
    groups = [g for g in groups if g]
    n = len(groups)
    weight_map = {}
    for i, keys in enumerate(groups, 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors"
        write_file(dit / name, [(k, st, shapes[k]) for k in keys], filler)
        weight_map.update({k: name for k in keys})
    (dit / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    for j, rank in enumerate(lora_ranks):
        alpha = lora_alpha_scales[j] if j < len(lora_alpha_scales) else 0.5
        build_lora(folder / "lora" / f"lora_r{rank}_{j}.safetensors", dims, rank, alpha, dtype, seed=seed + 100 + j)
    if components:
        build_components(folder)
    return folder


def build_lora(path: str | Path, dims: Dims, rank: int, alpha_scale: float, dtype: str = "fp32", *,
               seed: int = 0, modules: list[str] | None = None) -> Path:
    """A LoRA in the original file format on every linear layer of the blocks and final layer
    (or on ``modules``)."""
    np = _np()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    st = ST_DTYPES[dtype]
    rng = np.random.default_rng(seed)
    leaves = [l for l in leaf_modules(dims) if l.param.linear
              and (modules is None and not l.orig.startswith(("t_embedder", "y_embedder"))
                   or modules is not None and l.orig in modules)]
    specs, data = [], {}
    for leaf in leaves:
        out_f, in_f = leaf.weight_shape
        n = leaf.param.lora_blocks
        base = encode_module(leaf.orig)
        specs.append((f"{base}.lora_down.weight", st, (n * rank, in_f)))
        if n == 1:
            specs.append((f"{base}.lora_up.weight", st, (out_f, rank)))
        else:
            specs += [(f"{base}.lora_up.blocks.{j}.weight", st, (out_f // n, rank)) for j in range(n)]
        specs.append((f"{base}.alpha_scale", "F32", ()))
    for key, dt, shape in specs:
        if key.endswith("alpha_scale"):
            data[key] = to_bits(np.float32(alpha_scale).reshape(()), "F32")
        else:
            data[key] = to_bits(rng.standard_normal(_numel(shape), dtype=np.float32) * 0.1, dt)

    class _Fixed:
        def chunks(self, key, shape):
            yield data[key]
    write_file(path, specs, _Fixed())
    return path


def build_components(folder: Path) -> None:
    """Small stand-ins for vae/, text_encoder/, tokenizer/, scheduler/ (copied verbatim by the converter)."""
    files = {
        "vae/config.json": {"_class_name": "AutoencoderKLWan", "z_dim": 16},
        "text_encoder/config.json": {"architectures": ["UMT5EncoderModel"], "d_model": 4096},
        "tokenizer/tokenizer_config.json": {"tokenizer_class": "T5Tokenizer"},
        "scheduler/scheduler_config.json": {"_class_name": "FlowMatchEulerDiscreteScheduler"},
    }
    for rel, body in files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(body, indent=2))
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(
        encode_header({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}) + bytes(16))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
