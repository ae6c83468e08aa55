"""What the reference needs from an original ``dit/config.json``.

The model's dimensions are read here, by the reference itself, as the original
model reads its config (``ModelDims``); nothing is taken from the converter's
mapping table, so the table and the reference can be checked against each other
(tests/test_reference_table.py). This adds the behavioural switches of the
original (text mode, block-sparse attention and its parameters) and refuses
configurations the reference does not model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from longcat_convert.errors import BadInput

from .bsa import BsaParams, check_head_dim

# Bounds on config values: far above any real model, low enough that a hostile
# config cannot make the model (one module per block) or a shape absurd.
MAX_SIZE = 2**31
MAX_DEPTH = 4096
MAX_MLP_RATIO = 1024
SWIGLU_MULTIPLE = 256        # the original rounds its SwiGLU width up to a multiple of this


def _shown(v) -> str:
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:60] + "..."


@dataclass(frozen=True)
class ModelDims:
    """The sizes the original DiT is built from (its constructor's arguments)."""
    hidden: int                       # hidden_size
    heads: int                        # num_heads
    depth: int                        # number of blocks
    cin: int                          # in_channels
    cout: int                         # out_channels (in_channels when absent)
    caption: int                      # caption_channels
    adaln: int                        # adaln_tembed_dim
    freq: int                         # frequency_embedding_size
    mlp_ratio: float
    patch: tuple[int, int, int]       # patch_size (t, h, w)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def ffn(self) -> int:
        """The SwiGLU width: two thirds of hidden * mlp_ratio, rounded up to a multiple of 256."""
        width = int(2 * int(self.hidden * self.mlp_ratio) / 3)
        return SWIGLU_MULTIPLE * ((width + SWIGLU_MULTIPLE - 1) // SWIGLU_MULTIPLE)

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch
        return pt * ph * pw

    @classmethod
    def from_original(cls, cfg: dict, where: str = "config.json") -> "ModelDims":
        if not isinstance(cfg, dict):
            raise BadInput(f"{where}: expected a JSON object")

        def need(key: str):
            if key not in cfg:
                raise BadInput(f"{where}: missing key {key!r}; is this a LongCat-Video dit/config.json?")
            return cfg[key]

        def size(key: str, value, limit: int = MAX_SIZE) -> int:
            if type(value) is not int or not 1 <= value <= limit:     # 1.0, "64" and true are not sizes
                raise BadInput(f"{where}: {key} is {_shown(value)}; expected an integer from 1 to {limit}")
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
            raise BadInput(f"{where}: mlp_ratio is {_shown(mlp_ratio)}; expected a number in (0, {MAX_MLP_RATIO}]")
        patch = cfg.get("patch_size", [1, 2, 2])
        if not isinstance(patch, (list, tuple)) or len(patch) != 3:
            raise BadInput(f"{where}: patch_size must have 3 entries, got {_shown(patch)}")
        patch = tuple(size("patch_size", p, 64) for p in patch)
        dims = cls(hidden=hidden, heads=heads, depth=size("depth", need("depth"), MAX_DEPTH), cin=cin, cout=cout,
                   caption=size("caption_channels", need("caption_channels")),
                   adaln=size("adaln_tembed_dim", need("adaln_tembed_dim")),
                   freq=size("frequency_embedding_size", cfg.get("frequency_embedding_size", 256)),
                   mlp_ratio=float(mlp_ratio), patch=patch)
        if dims.ffn < 1:
            raise BadInput(f"{where}: mlp_ratio {mlp_ratio} gives hidden_size {hidden} an empty feed-forward layer")
        return dims


@dataclass(frozen=True)
class ReferenceConfig:
    dims: ModelDims
    text_tokens_zero_pad: bool
    enable_bsa: bool = False                 # block-sparse self-attention on from the start
    bsa_params: BsaParams | None = None      # what dit.enable_bsa() uses; None when the config has none

    @classmethod
    def from_original(cls, cfg: dict, where: str = "config.json") -> "ReferenceConfig":
        if not isinstance(cfg, dict):
            raise BadInput(f"{where}: expected a JSON object")
        dims = ModelDims.from_original(cfg, where)
        raw = cfg.get("bsa_params")
        bsa_params = None if raw is None else BsaParams.from_dict(raw, where)
        enable_bsa = cfg.get("enable_bsa", False)
        if not isinstance(enable_bsa, bool):
            raise BadInput(f"{where}: enable_bsa is {enable_bsa!r}; expected true or false")
        if enable_bsa and bsa_params is None:
            raise BadInput(f"{where}: enable_bsa is true but bsa_params is null; give bsa_params "
                           "(sparsity, cdf_threshold, chunk_3d_shape_q, chunk_3d_shape_k) or set enable_bsa to false")
        if enable_bsa:
            check_head_dim(dims.head_dim, where)
        if dims.head_dim % 8:
            raise BadInput(f"{where}: head dim {dims.head_dim} (hidden_size/num_heads) must be a multiple "
                           "of 8 for the original 3D RoPE")
        if dims.patch[0] != 1:
            raise BadInput(f"{where}: patch_size[0] is {dims.patch[0]}; the original model only supports 1 "
                           "(no temporal patching)")
        return cls(dims=dims, text_tokens_zero_pad=bool(cfg.get("text_tokens_zero_pad", False)),
                   enable_bsa=enable_bsa, bsa_params=bsa_params)

    @classmethod
    def from_file(cls, path: str | Path) -> "ReferenceConfig":
        from longcat_convert.jsonfile import load
        path = Path(path)
        return cls.from_original(load(path, "a JSON object (the checkpoint's config.json)"), str(path))
