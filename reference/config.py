"""What the reference needs from an original ``dit/config.json``.

Shapes come from the project's one ``Dims`` parser; this adds the two
behavioural switches of the original (text mode, block-sparse attention) and
refuses configurations the reference does not model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from longcat_convert.errors import BadInput
from longcat_convert.table import Dims


@dataclass(frozen=True)
class ReferenceConfig:
    dims: Dims
    text_tokens_zero_pad: bool

    @classmethod
    def from_original(cls, cfg: dict, where: str = "config.json") -> "ReferenceConfig":
        if not isinstance(cfg, dict):
            raise BadInput(f"{where}: expected a JSON object")
        dims = Dims.from_original_config(cfg, where)
        if cfg.get("enable_bsa"):
            # Block-sparse attention skips most key blocks: a different function, not a
            # faster kernel for the same one. Comparing against it would be meaningless.
            raise BadInput(f"{where}: enable_bsa is true; the reference computes dense attention only, "
                           "set enable_bsa to false (block-sparse attention is an approximation)")
        if dims.head_dim % 8:
            raise BadInput(f"{where}: head dim {dims.head_dim} (hidden_size/num_heads) must be a multiple "
                           "of 8 for the original 3D RoPE")
        if dims.patch[0] != 1:
            raise BadInput(f"{where}: patch_size[0] is {dims.patch[0]}; the original model only supports 1 "
                           "(no temporal patching)")
        return cls(dims=dims, text_tokens_zero_pad=bool(cfg.get("text_tokens_zero_pad", False)))

    @classmethod
    def from_file(cls, path: str | Path) -> "ReferenceConfig":
        path = Path(path)
        try:
            cfg = json.loads(path.read_text())
        except OSError as e:
            raise BadInput(f"{path}: cannot read ({e.strerror})")
        except ValueError:
            raise BadInput(f"{path}: not valid JSON")
        return cls.from_original(cfg, str(path))
