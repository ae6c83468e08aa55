"""Final adaLN-modulated projection to patch channels: entirely a float32 island."""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import ModelDims
from .layers import LayerNormFP32, Linear
from .numerics import modulate


class FinalLayer(nn.Module):
    def __init__(self, dims: ModelDims, device=None, dtype=None):
        super().__init__()
        C = dims.hidden
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dims.adaln, 2 * C, fp32=True, device=device, dtype=dtype))
        self.norm_final = LayerNormFP32(C, affine=False)
        self.linear = Linear(C, dims.patch_volume * dims.cout, fp32=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, grid) -> torch.Tensor:
        """x [B, N, C] (model dtype), t [B, T, adaln] float32 -> [B, N, pt*ph*pw*C_out] float32.

        The modulated tokens are rounded to the model dtype (as the original does)
        before the float32 projection."""
        B, N, C = x.shape
        shift, scale = self.adaLN_modulation(t).unsqueeze(2).chunk(2, dim=-1)
        h = modulate(self.norm_final, x.view(B, grid[0], -1, C), shift, scale).view(B, N, C)
        return self.linear(h)
