"""Self- and cross-attention of a LongCat block, in the original layout.

Self-attention: fused ``qkv`` (channel order: q|k|v, each heads x head_dim),
per-head RMS norm on q and k, 3D RoPE, attention, ``proj``. With ``enable_bsa``
the attention of a multi-frame forward (T > 1) is block-sparse (bsa.py) in every
place the original uses it: the plain call, both halves of the condition split,
and the KV-cache continuation (queries and keys on grids of different lengths).
Cross-attention: ``q_linear`` on video tokens, fused ``kv_linear`` (k|v) on the
packed valid text tokens, per-head RMS norm on q and k, no RoPE, ``proj``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from longcat_convert.errors import BadInput

from .backends import Backend
from .bsa import BsaParams, bsa_attention
from .layers import Linear, RMSNormFP32
from .rope import Rope3D


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, backend: Backend, device=None, dtype=None):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv = Linear(hidden, 3 * hidden, device=device, dtype=dtype)
        self.q_norm = RMSNormFP32(self.head_dim, device=device, dtype=dtype)
        self.k_norm = RMSNormFP32(self.head_dim, device=device, dtype=dtype)
        self.proj = Linear(hidden, hidden, device=device, dtype=dtype)
        self.rope = Rope3D(self.head_dim)
        self.backend = backend
        # As the original: a switch and its parameters, set per module (ReferenceDiT.enable_bsa).
        self.enable_bsa = False
        self.bsa_params: BsaParams | None = None

    def _attend(self, q, k, v, grid):
        """Attention of q over k/v. ``grid`` is the forward's (T, H, W) token grid; q
        and k each cover whole frames of it (their own frame counts may differ).
        Block-sparse only for a multi-frame forward, as the original (T = 1 is an image)."""
        T, H, W = grid
        if not (self.enable_bsa and T > 1):
            return self.backend.dense(q, k, v)
        if self.bsa_params is None:
            raise BadInput("block-sparse attention is enabled but has no bsa_params; pass params to enable_bsa()")
        per_frame = H * W
        return bsa_attention(q, k, v, (q.shape[2] // per_frame, H, W), (k.shape[2] // per_frame, H, W),
                             self.bsa_params)

    def _qkv(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v          # each [B, heads, N, D]

    def _out(self, o):
        B, _, N, _ = o.shape
        return self.proj(o.transpose(1, 2).reshape(B, N, -1))

    def forward(self, x, grid, num_cond_latents=None, return_kv=False):
        """x [B, N, C] over a (T, H, W) token grid. With ``num_cond_latents`` = c > 0 the
        first c frames are condition tokens: they attend among themselves only, while
        the remaining (noise) tokens attend to every token.

        With ``return_kv`` also returns (k, v) as they were BEFORE RoPE, for a cache."""
        B, N, _ = x.shape
        q, k, v = self._qkv(x)
        cache = (k.clone(), v.clone()) if return_kv else None
        cos, sin = self.rope.tables(grid, x.device)
        q, k = Rope3D.rotate(q, cos, sin), Rope3D.rotate(k, cos, sin)
        n_cond = (num_cond_latents or 0) * (N // grid[0])
        if n_cond > 0:
            o_cond = self._attend(q[:, :, :n_cond], k[:, :, :n_cond], v[:, :, :n_cond], grid)
            o_noise = self._attend(q[:, :, n_cond:], k, v, grid)
            o = torch.cat([o_cond, o_noise], dim=2)
        else:
            o = self._attend(q, k, v, grid)
        out = self._out(o)
        return (out, cache) if return_kv else out

    def forward_cached(self, x, grid, num_cond_latents, kv_cache):
        """Attend the new tokens x to (cached tokens + themselves).

        The cache holds ``num_cond_latents`` frames' pre-RoPE K/V ([1 or B, heads,
        frames*H*W, D]); they take RoPE positions 0..c-1 and the new tokens c..c+T-1.
        Deliberately NOT reached through __call__: the original calls this path as a
        plain method, so forward hooks on ``attn`` do not fire for it either."""
        B, N, _ = x.shape
        T, H, W = grid
        k_cache, v_cache = kv_cache
        if not num_cond_latents or num_cond_latents <= 0:
            raise BadInput("a KV-cache forward needs num_cond_latents > 0 (the number of cached latent frames)")
        n_cached = num_cond_latents * H * W
        want = (self.heads, n_cached, self.head_dim)
        if k_cache.shape != v_cache.shape or tuple(k_cache.shape[1:]) != want or k_cache.shape[0] not in (1, B):
            raise BadInput(f"KV cache of shape {tuple(k_cache.shape)}/{tuple(v_cache.shape)} does not fit: expected "
                           f"[1 or {B}, {want[0]}, {want[1]}, {want[2]}] for {num_cond_latents} cached frame(s) of {H}x{W} tokens")
        # A cache built for one sample serves the whole batch. Cast to the model dtype:
        # the cache may come from a file or another dtype.
        k_cache = k_cache.to(device=x.device, dtype=x.dtype).expand(B, -1, -1, -1)
        v_cache = v_cache.to(device=x.device, dtype=x.dtype).expand(B, -1, -1, -1)
        q, k, v = self._qkv(x)
        cos, sin = self.rope.tables((T + num_cond_latents, H, W), x.device)
        k_all = Rope3D.rotate(torch.cat([k_cache, k], dim=2), cos, sin)
        q = Rope3D.rotate(q, cos[n_cached:], sin[n_cached:])
        v_all = torch.cat([v_cache, v], dim=2)
        # BSA (when on) decides on the NEW frames' T, queries on T frames, keys on c + T.
        return self._out(self._attend(q, k_all, v_all, grid))


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, backend: Backend, device=None, dtype=None):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q_linear = Linear(hidden, hidden, device=device, dtype=dtype)
        self.kv_linear = Linear(hidden, 2 * hidden, device=device, dtype=dtype)
        self.proj = Linear(hidden, hidden, device=device, dtype=dtype)
        self.q_norm = RMSNormFP32(self.head_dim, device=device, dtype=dtype)
        self.k_norm = RMSNormFP32(self.head_dim, device=device, dtype=dtype)
        self.backend = backend

    def _attend(self, x, text, text_lens):
        B, N, C = x.shape
        q = self.q_linear(x).reshape(B * N, self.heads, self.head_dim)
        k, v = self.kv_linear(text).view(-1, 2, self.heads, self.head_dim).unbind(1)
        q, k = self.q_norm(q), self.k_norm(k)
        o = self.backend.varlen(q, k, v, [N] * B, list(text_lens))
        return self.proj(o.reshape(B, N, C))

    def forward(self, x, text, text_lens, num_cond_latents=None, grid=None):
        """x [B, N, C]; text [1, sum(text_lens), C]: every sample's valid tokens, packed.
        Condition tokens (first ``num_cond_latents`` frames) do not cross-attend: zeros."""
        if not num_cond_latents:
            return self._attend(x, text, text_lens)
        B, N, C = x.shape
        n_cond = num_cond_latents * (N // grid[0])
        noise = self._attend(x[:, n_cond:], text, text_lens)
        return torch.cat([noise.new_zeros(B, n_cond, C), noise], dim=1)
