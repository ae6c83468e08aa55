"""The float32 islands of the original model, written out explicitly.

The original wraps the timestep MLP, the adaLN modulations, the gated residual
adds and the whole final layer in ``autocast('cuda', float32)``. On a GPU that
makes every matmul in those regions run in float32 (inputs and weights upcast),
whatever the model dtype. On the CPU that autocast is inactive, and the original
then fails in bfloat16 (float32 activations meet bfloat16 weights).

Decision: the reference ALWAYS computes those regions in float32, on every
device. That is the original's GPU behaviour, reproduced without autocast, so a
bfloat16 run on the CPU means the same thing as one on a GPU. In float32 the
upcasts are no-ops, so this is also exactly what the CPU golden runs computed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # What autocast(float32) does to a matmul: every floating operand upcast first.
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


def modulate(norm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """norm(x) * (1 + scale) + shift in float32, result in x's dtype.

    ``shift``/``scale`` are float32 [B, T, 1, C]; ``x`` is [B, T, S, C], so each
    latent frame gets its own modulation."""
    out_dtype = x.dtype
    y = norm(x.float())
    return (y * (scale + 1) + shift).to(out_dtype)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """x + gate * update, per latent frame; float32 arithmetic (gate is float32, so
    the original's type promotion gives float32), then back to x's dtype.

    x, update: [B, N, C]; gate: [B, T, 1, C]."""
    B, N, C = x.shape
    T = gate.shape[1]
    gated = (gate * update.float().view(B, T, N // T, C)).view(B, N, C)
    return (x.float() + gated).to(x.dtype)
