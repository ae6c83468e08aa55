"""Input embedders: video patches, timesteps, caption tokens."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from longcat_convert.errors import BadInput

from .layers import Linear


class PatchEmbedder(nn.Module):
    """Conv3d with kernel = stride = patch; [B, C, T, H, W] -> [B, tokens, hidden], t-major."""

    def __init__(self, patch, cin: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(cin, hidden, kernel_size=self.patch, stride=self.patch, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for size, p, axis in zip(x.shape[2:], self.patch, "THW"):
            if size % p:
                raise BadInput(f"latent {axis} = {size} is not a multiple of the patch size {p}")
        return self.proj(x).flatten(2).transpose(1, 2)


def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[n] -> [n, dim] float32: cos of all frequencies, then sin (zero-padded if dim is odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear, all in float32 (a float32 island, see
    numerics.py): output is float32 whatever the model dtype. [n] -> [n, adaln]."""

    def __init__(self, adaln: int, freq: int = 256, device=None, dtype=None):
        super().__init__()
        self.freq = freq
        self.mlp = nn.Sequential(Linear(freq, adaln, fp32=True, device=device, dtype=dtype), nn.SiLU(),
                                 Linear(adaln, adaln, fp32=True, device=device, dtype=dtype))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid(t, self.freq))


class CaptionEmbedder(nn.Module):
    """Linear -> GELU(tanh) -> Linear in the model dtype. [B, 1, L, Ccap] -> [B, 1, L, hidden]."""

    def __init__(self, caption: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.y_proj = nn.Sequential(Linear(caption, hidden, device=device, dtype=dtype), nn.GELU(approximate="tanh"),
                                    Linear(hidden, hidden, device=device, dtype=dtype))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)
