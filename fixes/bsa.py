"""``bsa-cond-split-dense`` and ``bsa-kv-cache-dense``: block-sparse attention where
FastVideo's LongCat self-attention falls back to dense attention.

FastVideo: ``fastvideo/models/dits/longcat.py``, ``LongCatSelfAttention``.

- ``forward``: with ``num_cond_latents > 0`` (i2v, video continuation without a
  cache) it computes the condition split (condition tokens on themselves, noise
  tokens on every token) with dense attention and returns from that branch before
  it checks ``enable_bsa``. The original makes both halves block-sparse when the
  forward has more than one latent frame: the condition half on the condition
  frames' grid (queries and keys ``(c, H, W)``), the noise half with queries on
  the noise frames ``(T - c, H, W)`` and keys on all frames ``(T, H, W)``.
- ``forward_with_kv_cache``: always dense SDPA. The original attends the new
  frames block-sparsely (when they are more than one frame) to cache + new frames:
  queries on ``(T, H, W)``, keys on ``(c + T, H, W)``.

Fix: while BSA is on and the forward has T > 1 frames (the original's condition),
these two methods compute their attention with FastVideo's own kernel, called by the
name its LongCat module calls (``flash_attn_bsa_3d``), with the query and key grids
above (whole latent grids) and the block's ``bsa_params``; projections, RMS norms,
RoPE (the module's ``rope_3d``) and the output projection are the module's own, the
condition tokens are counted per frame of the tokens at hand. Otherwise the stock
methods run unchanged. Under sequence parallelism nothing else is needed: stock
FastVideo hands every rank the whole sequence (``sp-whole-sequence``), so the whole
grids fit; with the ``sp-whole-sequence`` fix installed, its ``flash_attn_bsa_3d``
gathers each rank's tokens for these whole grids.

Upstream: in ``forward``, test ``enable_bsa and T > 1`` inside the condition branch
and call ``flash_attn_bsa_3d`` for both halves with those grids; in
``forward_with_kv_cache``, call it instead of SDPA with ``latent_shape_q=(T, H, W)``,
``latent_shape_k=(num_cond_latents + T, H, W)``.

Proven by the gate steps ``parity e2e-fixed bsa_i2v`` / ``blocks-fixed bsa_i2v``
(stock: first divergence ``blocks.0.attn``, relative L2 0.5591) and
``parity e2e-fixed bsa_kv_continue`` (stock: ``blocks.0.attn``, 0.7274): every row
within the float32 policy.
"""
from __future__ import annotations

from .base import Fix, wrap_method


def _sparse(attn, T: int) -> bool:
    """The original's condition for block-sparse self-attention: on, and more than one frame."""
    return bool(attn.enable_bsa) and T > 1


def _heads(attn, x):
    """x [B, N, C] -> q, k (RMS-normed, before RoPE) and v, each [B, heads, N, head_dim]."""
    B, N, _ = x.shape
    out = []
    for proj, norm in ((attn.to_q, attn.q_norm), (attn.to_k, attn.k_norm), (attn.to_v, None)):
        y, _ = proj(x)
        y = y.view(B, N, attn.num_heads, attn.head_dim)
        out.append((norm(y) if norm is not None else y).transpose(1, 2))
    return out


def _kernel(attn, q, k, v, grid_q, grid_k):
    """FastVideo's BSA kernel: q over ``grid_q``, k/v over ``grid_k`` ([B, heads, S, D])."""
    import fastvideo.models.dits.longcat as fv_longcat       # looked up per call, as LongCat does
    return fv_longcat.flash_attn_bsa_3d(q.contiguous(), k.contiguous(), v.contiguous(), latent_shape_q=grid_q,
                                        latent_shape_k=grid_k, **attn.bsa_params)


def _project_out(attn, o):
    """[B, heads, N, D] -> the module's output projection, [B, N, C]."""
    B, _, N, _ = o.shape
    out, _ = attn.to_out(o.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim))
    return out


def _make_forward(original):
    def forward(self, x, latent_shape, num_cond_latents=0, return_kv=False, **kwargs):
        T, H, W = latent_shape
        c = int(num_cond_latents or 0)
        if not (0 < c < T and _sparse(self, T)):
            return original(self, x, latent_shape, num_cond_latents=num_cond_latents, return_kv=return_kv, **kwargs)
        import torch
        q, k, v = _heads(self, x)
        cache = (k.clone(), v.clone()) if return_kv else None
        q, k = self.rope_3d(q, k, grid_size=latent_shape)
        n_cond = c * (x.shape[1] // T)              # the condition frames' tokens (this rank's, under SP)
        # Condition tokens on themselves, noise tokens on every token: both block-sparse.
        o_cond = _kernel(self, q[:, :, :n_cond], k[:, :, :n_cond], v[:, :, :n_cond], (c, H, W), (c, H, W))
        o_noise = _kernel(self, q[:, :, n_cond:], k, v, (T - c, H, W), (T, H, W))
        out = _project_out(self, torch.cat([o_cond, o_noise], dim=2))
        return (out, cache) if return_kv else out
    return forward


def _make_kv_forward(original):
    def forward_with_kv_cache(self, x, latent_shape, num_cond_latents, kv_cache):
        T, H, W = latent_shape
        if not (num_cond_latents and num_cond_latents > 0 and _sparse(self, T)):
            return original(self, x, latent_shape, num_cond_latents, kv_cache)
        import torch
        B = x.shape[0]
        k_cache, v_cache = kv_cache
        if k_cache.shape[0] != B:                  # the cache's batch, tiled to the input's (CFG doubles it)
            k_cache = torch.cat([k_cache] * (B // k_cache.shape[0]))
            v_cache = torch.cat([v_cache] * (B // v_cache.shape[0]))
        q, k, v = _heads(self, x)
        n_cached = k_cache.shape[2]
        full = (num_cond_latents + T, H, W)
        # RoPE over cache + new frames: keys at positions 0..c+T-1, queries at c..c+T-1
        # (rope_3d is per position; the zero rows stand in for the cached positions).
        q_full = torch.cat([q.new_zeros(q.shape[0], q.shape[1], n_cached, q.shape[3]), q], dim=2)
        q_full, k_all = self.rope_3d(q_full, torch.cat([k_cache, k], dim=2), grid_size=full)
        v_all = torch.cat([v_cache, v], dim=2)
        return _project_out(self, _kernel(self, q_full[:, :, n_cached:], k_all, v_all, (T, H, W), full))
    return forward_with_kv_cache


def _attention_class():
    from fastvideo.models.dits.longcat import LongCatSelfAttention
    return LongCatSelfAttention


COND_SPLIT = Fix("bsa-cond-split-dense", "with BSA on, both halves of the i2v condition split are block-sparse "
                                         "(FastVideo's flash_attn_bsa_3d), as in the original",
                 lambda: wrap_method(_attention_class(), "forward", _make_forward))
KV_CACHE = Fix("bsa-kv-cache-dense", "with BSA on, the K/V-cache continuation attends block-sparsely to cache + new "
                                     "frames (FastVideo's flash_attn_bsa_3d), as in the original",
               lambda: wrap_method(_attention_class(), "forward_with_kv_cache", _make_kv_forward))
