"""What the reference needs from an original ``dit/config.json``.

Shapes come from the project's one ``Dims`` parser; this adds the
behavioural switches of the original (text mode, block-sparse attention and its
parameters) and refuses configurations the reference does not model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longcat_convert.errors import BadInput
from longcat_convert.table import Dims

from .bsa import BsaParams, check_head_dim


@dataclass(frozen=True)
class ReferenceConfig:
    dims: Dims
    text_tokens_zero_pad: bool
    enable_bsa: bool = False                 # block-sparse self-attention on from the start
    bsa_params: BsaParams | None = None      # what dit.enable_bsa() uses; None when the config has none

    @classmethod
    def from_original(cls, cfg: dict, where: str = "config.json") -> "ReferenceConfig":
        if not isinstance(cfg, dict):
            raise BadInput(f"{where}: expected a JSON object")
        dims = Dims.from_original_config(cfg, where)
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
