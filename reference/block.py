"""One LongCat transformer block (self-attn, cross-attn, SwiGLU) with per-frame adaLN."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from longcat_convert.errors import BadInput

from .attention import CrossAttention, SelfAttention
from .backends import Backend
from .config import ModelDims
from .layers import LayerNormFP32, Linear, SwiGLU
from .numerics import gated_residual, modulate


@dataclass
class BlockContext:
    """Everything a block needs besides its input tokens; built once per forward."""
    t: torch.Tensor                # [B, T, adaln] float32 timestep embedding, one per latent frame
    text: torch.Tensor             # [1, sum(text_lens), hidden] valid caption tokens, packed
    text_lens: list[int]           # valid caption tokens per sample
    grid: tuple[int, int, int]     # token grid (T, H, W) of the video tokens
    num_cond_latents: int = 0
    return_kv: bool = False
    skip_crs_attn: bool = False


class ReferenceBlock(nn.Module):
    def __init__(self, dims: ModelDims, backend: Backend, device=None, dtype=None):
        super().__init__()
        C = dims.hidden
        # Modulation is a float32 island (numerics.py): t is float32, weights upcast.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(dims.adaln, 6 * C, fp32=True, device=device, dtype=dtype))
        self.mod_norm_attn = LayerNormFP32(C, affine=False)
        self.mod_norm_ffn = LayerNormFP32(C, affine=False)
        self.pre_crs_attn_norm = LayerNormFP32(C, affine=True, device=device, dtype=dtype)
        self.attn = SelfAttention(C, dims.heads, backend, device=device, dtype=dtype)
        self.cross_attn = CrossAttention(C, dims.heads, backend, device=device, dtype=dtype)
        self.ffn = SwiGLU(C, dims.ffn, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, ctx: BlockContext, kv_cache=None):
        """x [B, N, C] -> x, or (x, (k, v)) when ctx.return_kv.

        ``kv_cache``: this block's cached pre-RoPE (k, v) of ``ctx.num_cond_latents``
        earlier frames; x then holds only the new frames."""
        B, N, C = x.shape
        T = ctx.grid[0]
        mods = self.adaLN_modulation(ctx.t).unsqueeze(2).chunk(6, dim=-1)   # 6 x [B, T, 1, C] float32
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods

        h = modulate(self.mod_norm_attn, x.view(B, T, -1, C), shift_msa, scale_msa).view(B, N, C)
        new_kv = None
        if kv_cache is not None:
            if ctx.return_kv:
                raise BadInput("return_kv and a KV cache cannot be combined in one forward "
                               "(the original model does not support it)")
            a = self.attn.forward_cached(h, ctx.grid, ctx.num_cond_latents, kv_cache)
        elif ctx.return_kv:
            a, new_kv = self.attn(h, ctx.grid, ctx.num_cond_latents, return_kv=True)
        else:
            a = self.attn(h, ctx.grid, ctx.num_cond_latents)
        x = gated_residual(x, gate_msa, a)

        if not ctx.skip_crs_attn:
            # With a cache, x holds only noise tokens: all of them cross-attend.
            n_cond = None if kv_cache is not None else ctx.num_cond_latents
            x = x + self.cross_attn(self.pre_crs_attn_norm(x), ctx.text, ctx.text_lens, n_cond, ctx.grid)

        h = modulate(self.mod_norm_ffn, x.view(B, T, -1, C), shift_mlp, scale_mlp).view(B, N, C)
        x = gated_residual(x, gate_mlp, self.ffn(h))
        return (x, new_kv) if ctx.return_kv else x
