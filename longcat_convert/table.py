"""The one mapping table between the original LongCat-Video DiT layout and
FastVideo's native ``LongCatTransformer3DModel`` layout.

The table is data: a tree of modules that reads top to bottom like the
architecture. Each ``Module`` names itself in both vocabularies; each leaf
``Param`` group says how the original tensors become native ones (``rename``
or ``split`` along dim 0 with explicit sizes) and what shape they must have for
a given config. Everything else is derived from this one declaration:

* ``expand(dims)``       -> the exact, per-key conversion plan for a config
* ``layer_pairs(depth)`` -> original <-> native module names used by parity
* ``lora_targets``       -> where an original-format LoRA module lands
* ``original_shapes``    -> the full original state-dict spec (synthetic checkpoints)

Nothing in here moves a tensor: ``Transform`` objects do that, in both
directions, without casting.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterator, Sequence

from .errors import BadInput

# --------------------------------------------------------------------------
# Dimensions a config implies. Shapes in the table are expressions over these.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dims:
    hidden: int
    heads: int
    depth: int
    cin: int
    cout: int
    caption: int
    adaln: int
    freq: int
    mlp_ratio: float
    patch: tuple[int, int, int]

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def ffn(self) -> int:
        # SwiGLU width rule of the original: 2/3 of hidden*mlp_ratio, rounded up to 256.
        width = int(2 * int(self.hidden * self.mlp_ratio) / 3)
        return 256 * ((width + 255) // 256)

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch
        return pt * ph * pw

    def env(self) -> dict[str, int]:
        pt, ph, pw = self.patch
        return dict(hidden=self.hidden, heads=self.heads, head_dim=self.head_dim, cin=self.cin,
                    cout=self.cout, caption=self.caption, adaln=self.adaln, freq=self.freq,
                    ffn=self.ffn, pt=pt, ph=ph, pw=pw, pv=self.patch_volume)

    @classmethod
    def from_original_config(cls, cfg: dict, where: str = "config.json") -> "Dims":
        if not isinstance(cfg, dict):
            raise BadInput(f"{where}: expected a JSON object")

        def need(key: str):
            if key not in cfg:
                raise BadInput(f"{where}: missing key {key!r}; is this a LongCat-Video dit/config.json?")
            return cfg[key]

        def size(key: str, value, limit: int = MAX_SIZE) -> int:
            # a JSON integer (1.0, "64" and true are not sizes), positive and sane
            if type(value) is not int or not 1 <= value <= limit:
                raise BadInput(f"{where}: {key} is {_json_repr(value)}; expected an integer from 1 to {limit}")
            return value

        hidden, heads = size("hidden_size", need("hidden_size")), size("num_heads", need("num_heads"))
        if hidden % heads:
            raise BadInput(f"{where}: hidden_size {hidden} is not divisible by num_heads {heads}")
        cin = size("in_channels", need("in_channels"))
        cout = cfg.get("out_channels")
        cout = cin if cout is None else size("out_channels", cout)
        mlp_ratio = cfg.get("mlp_ratio", 4)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) \
                or not 0 < mlp_ratio <= MAX_MLP_RATIO:
            raise BadInput(f"{where}: mlp_ratio is {_json_repr(mlp_ratio)}; expected a number in (0, {MAX_MLP_RATIO}]")
        patch = cfg.get("patch_size", [1, 2, 2])
        if not isinstance(patch, (list, tuple)) or len(patch) != 3:
            raise BadInput(f"{where}: patch_size must have 3 entries, got {_json_repr(patch)}")
        patch = tuple(size("patch_size", p, 64) for p in patch)
        dims = cls(hidden=hidden, heads=heads, depth=size("depth", need("depth"), MAX_DEPTH),
                   cin=cin, cout=cout, caption=size("caption_channels", need("caption_channels")),
                   adaln=size("adaln_tembed_dim", need("adaln_tembed_dim")),
                   freq=size("frequency_embedding_size", cfg.get("frequency_embedding_size", 256)),
                   mlp_ratio=float(mlp_ratio), patch=patch)
        if dims.ffn < 1:
            raise BadInput(f"{where}: mlp_ratio {mlp_ratio} gives hidden_size {hidden} an empty feed-forward layer")
        return dims


# Bounds on config values: far above any real model, low enough that a hostile
# config cannot make the table (one entry per block) or a shape absurd.
MAX_SIZE = 2**31
MAX_DEPTH = 4096
MAX_MLP_RATIO = 1024


def _json_repr(v) -> str:
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:60] + "..."


def _eval(expr: str | int, env: dict[str, int]) -> int:
    if isinstance(expr, int):
        return expr
    return int(eval(expr, {"__builtins__": {}}, env))  # our own constant expressions only


# --------------------------------------------------------------------------
# Transforms: both directions, shape-checked, never cast.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """How source tensors become target tensors. ``forward`` original->native,
    ``inverse`` native->original. Both are exact (pure data movement)."""
    kind: str                      # "rename" | "split"
    sizes: tuple[int, ...] = ()    # split sizes along dim 0, resolved for a config
    lossless: bool = True

    def forward(self, tensors: Sequence):
        (src,) = tensors
        if self.kind == "rename":
            return [src]
        if src.shape[0] != sum(self.sizes):
            raise BadInput(f"cannot split dim 0 of size {src.shape[0]} into {list(self.sizes)}")
        return [t.contiguous() for t in src.split(list(self.sizes), dim=0)]

    def inverse(self, tensors: Sequence):
        if self.kind == "rename":
            (t,) = tensors
            return [t]
        import torch
        if [t.shape[0] for t in tensors] != list(self.sizes):
            raise BadInput(f"cannot concatenate {[tuple(t.shape) for t in tensors]} into sizes {list(self.sizes)}")
        if len({t.dtype for t in tensors}) != 1:
            raise BadInput(f"cannot concatenate tensors of dtypes {[str(t.dtype) for t in tensors]}")
        return [torch.cat(list(tensors), dim=0)]

    def row_ranges(self) -> list[tuple[int, int]]:
        """[start, stop) rows of the source that each target occupies (dim 0)."""
        if self.kind == "rename":
            return [(0, -1)]
        out, start = [], 0
        for s in self.sizes:
            out.append((start, start + s))
            start += s
        return out


# --------------------------------------------------------------------------
# The declarative tree.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A leaf module of the original (a Linear/Conv/Norm) and where it goes.

    ``out``/``inp`` are the weight's dims (expressions); ``targets`` > 1 means the
    module is fused in the original and split along dim 0 into equal ``out`` parts.
    ``lora_blocks`` is the number of up-blocks an original-format LoRA on it has.
    """
    orig: str
    native: tuple[str, ...]
    weight: tuple[str | int, ...] | None       # full weight shape of the ORIGINAL module
    bias: bool = True
    linear: bool = True                          # LoRA can target it
    lora_blocks: int = 1

    @property
    def kind(self) -> str:
        return "split" if len(self.native) > 1 else "rename"


@dataclass(frozen=True)
class Module:
    """An interior module: its name in both layouts, its children, and whether
    parity compares its output (``compare``)."""
    orig: str
    native: str
    children: tuple = ()
    compare: bool = False
    repeat: str | None = None      # "depth": instantiate for i in range(depth), name holds {i}


def L(orig, native, out, inp, bias=True, lora_blocks=1):
    return Param(orig, (native,) if isinstance(native, str) else tuple(native), (out, inp), bias,
                 True, lora_blocks)


def Norm(orig, native, width, bias):
    return Param(orig, (native,), (width,), bias, linear=False)


TABLE: tuple[Module, ...] = (
    Module("x_embedder", "patch_embed", compare=True, children=(
        Param("proj", ("proj",), ("hidden", "cin", "pt", "ph", "pw"), True, linear=False),
    )),
    Module("t_embedder", "time_embedder", compare=True, children=(
        L("mlp.0", "linear_1", "adaln", "freq"),
        L("mlp.2", "linear_2", "adaln", "adaln"),
    )),
    Module("y_embedder", "caption_embedder", compare=True, children=(
        L("y_proj.0", "linear_1", "hidden", "caption"),
        L("y_proj.2", "linear_2", "hidden", "hidden"),
    )),
    Module("blocks.{i}", "blocks.{i}", compare=True, repeat="depth", children=(
        L("adaLN_modulation.1", "adaln_linear_1", "6*hidden", "adaln", lora_blocks=6),
        Norm("pre_crs_attn_norm", "norm_cross", "hidden", bias=True),
        Module("attn", "self_attn", compare=True, children=(
            L("qkv", ("to_q", "to_k", "to_v"), "3*hidden", "hidden", lora_blocks=3),
            Norm("q_norm", "q_norm", "head_dim", bias=False),
            Norm("k_norm", "k_norm", "head_dim", bias=False),
            L("proj", "to_out", "hidden", "hidden"),
        )),
        Module("cross_attn", "cross_attn", compare=True, children=(
            L("q_linear", "to_q", "hidden", "hidden"),
            L("kv_linear", ("to_k", "to_v"), "2*hidden", "hidden", lora_blocks=2),
            L("proj", "to_out", "hidden", "hidden"),
            Norm("q_norm", "q_norm", "head_dim", bias=False),
            Norm("k_norm", "k_norm", "head_dim", bias=False),
        )),
        Module("ffn", "ffn", compare=True, children=(
            L("w1", "w1", "ffn", "hidden", bias=False),
            L("w3", "w3", "ffn", "hidden", bias=False),
            L("w2", "w2", "hidden", "ffn", bias=False),
        )),
    )),
    Module("final_layer", "final_layer", compare=True, children=(
        L("adaLN_modulation.1", "adaln_linear", "2*hidden", "adaln", lora_blocks=2),
        L("linear", "proj", "pv*cout", "hidden"),
    )),
)

# Modules the original has without parameters (affine-free LayerNorms); they
# produce no keys on either side and are listed so nothing is silently unmapped.
PARAMETERLESS = ("blocks.{i}.mod_norm_attn -> blocks.{i}.norm_attn",
                 "blocks.{i}.mod_norm_ffn -> blocks.{i}.norm_ffn",
                 "final_layer.norm_final -> final_layer.norm")

# Keys expected to be dropped, with the reason. None for LongCat-Video.
DROPPED: dict[str, str] = {}


# --------------------------------------------------------------------------
# Expansion for a config.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LeafModule:
    """One original leaf module instantiated for a config."""
    orig: str                       # e.g. blocks.3.attn.qkv
    native: tuple[str, ...]         # e.g. (blocks.3.self_attn.to_q, ..to_k, ..to_v)
    param: Param
    weight_shape: tuple[int, ...]

    @property
    def split_sizes(self) -> tuple[int, ...]:
        n = len(self.native)
        return tuple([self.weight_shape[0] // n] * n)


@dataclass(frozen=True)
class Op:
    """One conversion step: exact source keys -> exact target keys."""
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    transform: Transform
    source_shapes: tuple[tuple[int, ...], ...]
    target_shapes: tuple[tuple[int, ...], ...]

    def describe(self) -> str:
        if self.transform.kind == "split":
            return f"split dim0 {list(self.transform.sizes)}"
        return "rename"


def _walk(nodes, dims: Dims, prefix_o: str = "", prefix_n: str = "") -> Iterator[tuple[str, str, object]]:
    for node in nodes:
        if isinstance(node, Module) and node.repeat:
            count = getattr(dims, node.repeat)
            for i in range(count):
                o = prefix_o + node.orig.format(i=i)
                n = prefix_n + node.native.format(i=i)
                yield o, n, node
                yield from _walk(node.children, dims, o + ".", n + ".")
        elif isinstance(node, Module):
            o, n = prefix_o + node.orig, prefix_n + node.native
            yield o, n, node
            yield from _walk(node.children, dims, o + ".", n + ".")
        else:
            yield prefix_o + node.orig, prefix_n, node


def leaf_modules(dims: Dims) -> list[LeafModule]:
    env = dims.env()
    out = []
    for o, nprefix, node in _walk(TABLE, dims):
        if isinstance(node, Param):
            shape = tuple(_eval(x, env) for x in node.weight)
            out.append(LeafModule(o, tuple(nprefix + t for t in node.native), node, shape))
    return out


def lora_targets(dims: Dims) -> dict[str, LeafModule]:
    """Original module -> its leaf (native targets, ``lora_blocks``, weight shape), for every
    module an original-format LoRA may carry (the linear layers)."""
    return {leaf.orig: leaf for leaf in leaf_modules(dims) if leaf.param.linear}


def expand(dims: Dims) -> list[Op]:
    """The exact per-key plan for a config, in forward (architecture) order."""
    ops = []
    for leaf in leaf_modules(dims):
        suffixes = ["weight"] + (["bias"] if leaf.param.bias else [])
        for sfx in suffixes:
            full = leaf.weight_shape if sfx == "weight" else leaf.weight_shape[:1]
            src = f"{leaf.orig}.{sfx}"
            tgts = tuple(f"{n}.{sfx}" for n in leaf.native)
            if leaf.param.kind == "split":
                sizes = leaf.split_sizes
                t = Transform("split", sizes)
                tshapes = tuple((s,) + full[1:] for s in sizes)
            else:
                t = Transform("rename")
                tshapes = (full,)
            ops.append(Op((src,), tgts, t, (full,), tshapes))
    return ops


def original_shapes(dims: Dims) -> dict[str, tuple[int, ...]]:
    return {s: shp for op in expand(dims) for s, shp in zip(op.sources, op.source_shapes)}


def native_shapes(dims: Dims) -> dict[str, tuple[int, ...]]:
    return {t: shp for op in expand(dims) for t, shp in zip(op.targets, op.target_shapes)}


def reverse_ops(dims: Dims) -> list[Op]:
    """The same plan read backwards (native -> original)."""
    return [Op(op.targets, op.sources, op.transform, op.target_shapes, op.source_shapes) for op in expand(dims)]


def check_coverage(present: set[str], expected: set[str], where: str, what: str = "source") -> None:
    """Every expected key present, nothing unknown: otherwise one error listing them."""
    missing = sorted(expected - present)
    unknown = sorted(present - expected - set(DROPPED))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unknown:
            parts.append(f"{len(unknown)} unknown key(s): {', '.join(unknown[:8])}" + (" ..." if len(unknown) > 8 else ""))
        raise BadInput(f"{where}: {what} keys do not match the mapping table for this config.json: "
                       + "; ".join(parts))


# --------------------------------------------------------------------------
# Layer correspondence for parity, derived from the same tree.
# --------------------------------------------------------------------------


def layer_pairs(dims: Dims) -> list[tuple[str, str]]:
    """(original module, native module) for every compared layer, in forward order.

    Forward order inside a block is attn, cross_attn, ffn, then the block itself,
    which is the order their forward hooks fire.
    """
    pairs = [(o, n) for o, n, node in _walk(TABLE, dims) if isinstance(node, Module) and node.compare]
    # _walk yields a parent before its children; hooks fire children first.
    ordered: list[tuple[str, str]] = []
    pending_block: tuple[str, str] | None = None
    for o, n in pairs:
        is_block = o.startswith("blocks.") and o.count(".") == 1
        if is_block or not o.startswith("blocks."):
            if pending_block:
                ordered.append(pending_block)
                pending_block = None
        if is_block:
            pending_block = (o, n)
        else:
            ordered.append((o, n))
    if pending_block:
        ordered.append(pending_block)
    return ordered


def to_native_module(orig_module: str, dims: Dims) -> str:
    for o, n, node in _walk(TABLE, dims):
        if o == orig_module:
            if isinstance(node, Param):
                if len(node.native) != 1:
                    raise KeyError(f"{orig_module} is fused; it maps to {len(node.native)} native modules")
                return n + node.native[0]
            return n
    raise KeyError(orig_module)


# --------------------------------------------------------------------------
# Identity of the table (recorded in conversion.json).
# --------------------------------------------------------------------------


def _node_repr(node) -> object:
    if isinstance(node, Module):
        return {"o": node.orig, "n": node.native, "r": node.repeat, "c": node.compare,
                "ch": [_node_repr(c) for c in node.children]}
    return {"o": node.orig, "n": list(node.native), "w": list(node.weight), "b": node.bias,
            "lb": node.lora_blocks, "lin": node.linear}


def table_hash() -> str:
    blob = json.dumps([_node_repr(n) for n in TABLE], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
