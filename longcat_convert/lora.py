"""LoRA files: the original LongCat-Video format -> the keys FastVideo's LoRA loader reads.

Original format (one file per LoRA), per module ``M`` of the original DiT:
``lora___lorahyphen___<M with '.' as '___lorahyphen___'>`` followed by
``.lora_down.weight`` [n*r, in], ``.lora_up.weight`` [out, r] when n == 1 or
``.lora_up.blocks.<j>.weight`` [out/n, r] for j < n, and ``.alpha_scale`` (0-d).
The delta on the module's output is ``multiplier * alpha_scale * up(down(x))``;
with n > 1 the down output is cut into n chunks and chunk j goes through block j.

FastVideo reads ``<native module>.lora_A.weight`` [rank, in], ``.lora_B.weight``
[out, rank] and ``.lora_alpha``, and adds ``strength * int(lora_alpha) / rank * B @ A``
with rank = A.shape[0].

Where a module lands comes from the mapping table (``lora_targets``: the native
targets and ``Param.lora_blocks`` of every linear leaf), never from a list kept here:

* fused in the original, split in FastVideo (qkv -> to_q/to_k/to_v, kv -> to_k/to_v):
  target j gets A = its r rows of lora_down and B = up block j;
* several up blocks on ONE native module (a block's adaLN modulation has 6, the
  final layer's 2): A = the whole lora_down [n*r, in] and B = the block-diagonal
  [out, n*r] matrix of the up blocks, which is exactly the chunked product;
* otherwise A = lora_down, B = lora_up.

Alpha: FastVideo truncates ``lora_alpha`` to an int. When ``alpha_scale * rank`` is
a non-zero integer it is written as ``lora_alpha`` and B is kept bit for bit;
otherwise ``lora_alpha = rank`` (scale 1) and ``alpha_scale`` is folded into B
(computed in float32, rounded once to B's dtype). conversion.json records which.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import BadInput
from .shards import DTYPES, ShardedReader, short_repr
from .table import Dims, LeafModule, leaf_modules, lora_targets
from .writer import encode_header

PREFIX = "lora___lorahyphen___"
SEP = "___lorahyphen___"
_SUFFIX = re.compile(r"^(lora_down\.weight|lora_up\.weight|lora_up\.blocks\.([0-9]{1,6})\.weight|alpha_scale)$")
# LoRA weights: the floating dtypes the converter handles
_WEIGHT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_F32_MAX = 3.4028234663852886e38


@dataclass
class LoraTensor:
    key: str
    dtype: str
    shape: tuple[int, ...]
    make: Callable[[], bytes]      # the tensor's bytes, computed on demand

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype][1]
        for s in self.shape:
            n *= s
        return n


@dataclass
class LoraPlan:
    source: Path
    name: str
    tensors: list[LoraTensor] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)

    @property
    def out_relpath(self) -> str:
        return f"lora/{self.name}/{self.name}.safetensors"


def encode_module(orig_module: str) -> str:
    return PREFIX + orig_module.replace(".", SEP)


def decode_key(key: str) -> tuple[str, str]:
    """'lora___lorahyphen___blocks___lorahyphen___0...qkv.lora_down.weight' -> ('blocks.0.attn.qkv', 'lora_down.weight')."""
    if not key.startswith(PREFIX) or "." not in key:
        raise ValueError(key)
    enc, suffix = key.split(".", 1)
    return enc[len(PREFIX):].replace(SEP, "."), suffix


def _torch():
    import torch
    return torch


def plan_lora(path: Path, dims: Dims) -> LoraPlan:
    """Read a LoRA file's headers (and its alpha scalars) and decide every output tensor."""
    reader = ShardedReader(path)
    leaves = {leaf.orig: leaf for leaf in leaf_modules(dims)}
    targets = lora_targets(dims)
    modules: dict[str, dict[str, str]] = {}
    unknown_keys = []
    for key in reader.keys():
        try:
            module, suffix = decode_key(key)
        except ValueError:
            unknown_keys.append(key)
            continue
        if not _SUFFIX.match(suffix):
            unknown_keys.append(key)
            continue
        modules.setdefault(module, {})[suffix] = key
    if unknown_keys:
        raise BadInput(f"{path}: {len(unknown_keys)} key(s) not in the original LongCat LoRA format: "
                       + ", ".join(short_repr(k, 160) for k in unknown_keys[:5])
                       + (" ..." if len(unknown_keys) > 5 else ""))
    unmappable = [m for m in modules if m not in leaves]
    if unmappable:
        raise BadInput(f"{path}: LoRA module(s) with no place in the model for this config.json: "
                       + ", ".join(sorted(unmappable)[:5]) + (" ..." if len(unmappable) > 5 else "")
                       + "; every module must land somewhere, so nothing was converted")
    not_linear = sorted(m for m in modules if m not in targets)
    if not_linear:
        raise BadInput(f"{path}: LoRA on {not_linear[0]!r}, which is not a linear layer; it cannot carry a LoRA")
    plan = LoraPlan(path, path.stem)
    for module, leaf in targets.items():   # the table's order
        if module in modules:
            _plan_module(plan, reader, leaf, modules[module])
    return plan


def _plan_module(plan: LoraPlan, reader: ShardedReader, leaf: LeafModule, parts: dict[str, str]) -> None:
    path = reader.path
    m = leaf.orig
    if len(leaf.weight_shape) != 2:
        raise BadInput(f"{path}: LoRA on {m!r}, which is not a linear layer; it cannot carry a LoRA")
    n = leaf.param.lora_blocks
    out_f, in_f = leaf.weight_shape
    for need in ("lora_down.weight", "alpha_scale"):
        if need not in parts:
            raise BadInput(f"{path}: LoRA module {m!r} has no {need}; the file is incomplete")
    block_keys = {int(re.match(r"lora_up\.blocks\.([0-9]+)\.weight", s).group(1)): k
                  for s, k in parts.items() if s.startswith("lora_up.blocks.")}
    if n == 1:
        if block_keys or "lora_up.weight" not in parts:
            raise BadInput(f"{path}: LoRA module {m!r} must have a single lora_up.weight")
        ups = [parts["lora_up.weight"]]
    else:
        if "lora_up.weight" in parts or sorted(block_keys) != list(range(n)):
            raise BadInput(f"{path}: LoRA module {m!r} must have lora_up.blocks.0..{n - 1} "
                           f"(found {sorted(block_keys) or 'lora_up.weight'})")
        ups = [block_keys[j] for j in range(n)]
    down = reader.info(parts["lora_down.weight"])
    if len(down.shape) != 2 or down.shape[1] != in_f or down.shape[0] % n or down.shape[0] == 0:
        raise BadInput(f"{path}: {down.key!r} has shape {list(down.shape)}; expected [{n}*rank, {in_f}]")
    r = down.shape[0] // n
    up_infos = [reader.info(k) for k in ups]
    for u in up_infos:
        if u.shape != (out_f // n, r):
            raise BadInput(f"{path}: {u.key!r} has shape {list(u.shape)}; expected [{out_f // n}, {r}]")
    if len({u.dtype for u in up_infos}) != 1:
        raise BadInput(f"{path}: up blocks of {m!r} have different dtypes")
    for info in [down, up_infos[0]]:
        if info.dtype not in _WEIGHT_DTYPES:
            raise BadInput(f"{path}: {info.key!r} is {info.dtype}; LoRA weights must be one of "
                           f"{', '.join(_WEIGHT_DTYPES)}")
    alpha_info = reader.info(parts["alpha_scale"])
    if alpha_info.shape not in ((), (1,)):
        raise BadInput(f"{path}: {alpha_info.key!r} must be a scalar, has shape {list(alpha_info.shape)}")
    alpha_scale = _read_scalar(reader, alpha_info.key)
    if not abs(alpha_scale) <= _F32_MAX:
        raise BadInput(f"{path}: {alpha_info.key!r} is {alpha_scale}; expected a finite number "
                       "within float32's range")

    t = len(leaf.native)
    if t == n and n > 1:
        targets = [(leaf.native[j], (j * r, (j + 1) * r), [j]) for j in range(n)]
    elif t == 1:
        targets = [(leaf.native[0], (0, n * r), list(range(n)))]
    else:  # a table entry this converter does not know how to carry
        raise BadInput(f"{path}: LoRA module {m!r} has {n} up blocks but maps to {t} native modules; "
                       "the mapping table has no rule for that")
    b_dtype = up_infos[0].dtype
    for native, (a0, a1), blocks in targets:
        rank = a1 - a0
        prod = alpha_scale * rank
        keep = (prod != 0 and float(prod).is_integer() and int(prod) / rank == alpha_scale
                and _is_f32(float(int(prod))))
        lora_alpha = float(int(prod)) if keep else float(rank)
        fold = None if keep else alpha_scale
        plan.decisions.append({"module": m, "target": native, "rank": rank, "alpha_scale": alpha_scale,
                               "lora_alpha": lora_alpha, "alpha_folded_into_B": not keep})
        plan.tensors.append(LoraTensor(f"{native}.lora_A.weight", down.dtype, (rank, in_f),
                                       _rows(reader, down.key, a0, a1)))
        plan.tensors.append(LoraTensor(f"{native}.lora_B.weight", b_dtype, (len(blocks) * (out_f // n), rank),
                                       _up(reader, [ups[j] for j in blocks], r, fold)))
        plan.tensors.append(LoraTensor(f"{native}.lora_alpha", "F32", (), _scalar(lora_alpha)))


def _is_f32(x: float) -> bool:
    """x is exactly a float32 (FastVideo reads lora_alpha from a float32 tensor)."""
    import struct
    return abs(x) <= _F32_MAX and struct.unpack("<f", struct.pack("<f", x))[0] == x


def _read_scalar(reader: ShardedReader, key: str) -> float:
    """A 0-d float tensor's value, without torch."""
    import struct
    info = reader.info(key)
    raw = reader.read_bytes(key)
    fmt = {"F64": "<d", "F32": "<f", "F16": "<e"}.get(info.dtype)
    if fmt:
        return struct.unpack(fmt, raw)[0]
    if info.dtype == "BF16":
        return struct.unpack("<f", b"\x00\x00" + raw)[0]
    raise BadInput(f"{reader.path}: {key!r} must be a floating-point scalar, is {info.dtype}")


def _rows(reader: ShardedReader, key: str, r0: int, r1: int) -> Callable[[], bytes]:
    info = reader.info(key)
    row = info.nbytes // info.shape[0]
    return lambda: reader.read_bytes(key, r0 * row, r1 * row)


def _up(reader: ShardedReader, keys: list[str], r: int, fold: float | None) -> Callable[[], bytes]:
    def make() -> bytes:
        if len(keys) == 1 and fold is None:
            return reader.read_bytes(keys[0])
        torch = _torch()
        blocks = [reader.get(k) for k in keys]
        rows = blocks[0].shape[0]
        b = torch.zeros(rows * len(blocks), r * len(blocks), dtype=blocks[0].dtype)
        for j, blk in enumerate(blocks):
            b[j * rows:(j + 1) * rows, j * r:(j + 1) * r] = blk
        if fold is not None:
            b = (b.to(torch.float32) * torch.tensor(fold, dtype=torch.float32)).to(blocks[0].dtype)
        return _tensor_bytes(b)
    return make


def _scalar(value: float) -> Callable[[], bytes]:
    import struct
    return lambda: struct.pack("<f", value)


def _tensor_bytes(t) -> bytes:
    torch = _torch()
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def write_lora(plan: LoraPlan, out_root: Path) -> dict:
    """Write ``plan`` under ``out_root`` one tensor at a time; returns its record for conversion.json."""
    entries, pos = {}, 0
    for t in plan.tensors:
        entries[t.key] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        pos += t.nbytes
    header = encode_header(entries)
    out = out_root / plan.out_relpath
    out.parent.mkdir(parents=True, exist_ok=True)
    hashes = {}
    with open(out, "xb") as f:
        f.write(header)
        for t in plan.tensors:
            data = t.make()
            if len(data) != t.nbytes:
                raise BadInput(f"{plan.source}: internal size mismatch for {t.key}")
            hashes[t.key] = hashlib.sha256(data).hexdigest()
            f.write(data)
    return {"source": str(plan.source), "output": plan.out_relpath, "tensors": hashes,
            "alpha": plan.decisions}
