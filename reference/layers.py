"""Leaf layers in the original parameter layout.

``Linear`` is ``nn.Linear`` (same parameters, same state-dict keys) plus two
things the original gets from elsewhere: a flag saying it sits in one of the
float32 islands (see numerics.py), and the LoRA adapters attached to it
(reference/lora.py). Adapters are held in a plain list, not as submodules, so
the model's state dict stays exactly the original's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .numerics import linear_fp32


class Linear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, fp32: bool = False,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.fp32 = fp32
        self.lora_adapters: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            out = linear_fp32(x, self.weight, self.bias)
        else:
            out = F.linear(x, self.weight, self.bias)
        total = None
        for adapter in self.lora_adapters:
            if adapter.enabled:
                d = adapter.delta(x, fp32=self.fp32)
                total = d if total is None else total + d
        return out if total is None else out + total

    def extra_repr(self) -> str:
        return super().extra_repr() + (", fp32" if self.fp32 else "")


class LayerNormFP32(nn.Module):
    """LayerNorm computed in float32 (affine parameters upcast), result in the input dtype."""

    def __init__(self, width: int, eps: float = 1e-6, affine: bool = False, device=None, dtype=None):
        super().__init__()
        self.width, self.eps = width, eps
        if affine:
            self.weight = nn.Parameter(torch.ones(width, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(width, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), (self.width,), w, b, self.eps).to(x.dtype)


class RMSNormFP32(nn.Module):
    """RMS normalisation over the last dim (a head's channels).

    Order matters in low precision: normalise in float32, round back to the
    input dtype, THEN multiply by the weight (in the input/weight dtype)."""

    def __init__(self, width: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, hidden: int, width: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(hidden, width, bias=False, device=device, dtype=dtype)
        self.w2 = Linear(width, hidden, bias=False, device=device, dtype=dtype)
        self.w3 = Linear(hidden, width, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
