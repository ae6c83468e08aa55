"""``bsa-cond-split-dense`` and ``bsa-kv-cache-dense``: block-sparse attention where
FastVideo's LongCat self-attention falls back to dense attention.

FastVideo: ``fastvideo/models/dits/longcat.py``, ``LongCatSelfAttention``.

- ``forward``: with ``num_cond_latents > 0`` (i2v, video continuation without a
  cache) it computes the condition split (condition tokens on themselves through its
  ``DistributedAttention``, noise tokens on every token through plain SDPA) and
  returns from that branch before it checks ``enable_bsa``. The original makes both
  halves block-sparse when the forward has more than one latent frame: the condition
  half on the condition frames' grid (queries and keys ``(c, H, W)``), the noise half
  with queries on the noise frames ``(T - c, H, W)`` and keys on all frames
  ``(T, H, W)``.
- ``forward_with_kv_cache``: always dense SDPA. The original attends the new frames
  block-sparsely (when they are more than one frame) to cache + new frames: queries
  on ``(T, H, W)``, keys on ``(c + T, H, W)``.

Fix: FastVideo's own methods run unchanged -- projections, norms, RoPE, the split,
the cache handling, the output projection -- and only their attention calls are routed
to FastVideo's own BSA kernel, called by the name its LongCat module calls
(``flash_attn_bsa_3d``) with the grids above and the layer's ``bsa_params``, while BSA is
on and the forward has T > 1 frames (the original's condition):

- the condition half: the layer's ``DistributedAttention`` call answers with the kernel;
- the noise half and ``forward_with_kv_cache``: the longcat module's
  ``torch.nn.functional.scaled_dot_product_attention`` answers with the kernel.

A wrapper on each of the two methods says, for the duration of the call, which grids
the attention calls inside it take (a context variable); outside those calls, or with
BSA off or one frame, every call is FastVideo's. The upstream patch makes the same calls
at the same three places in FastVideo's source, so both forms compute the same thing.
Under sequence parallelism with the ``sp-whole-sequence`` fix its ``flash_attn_bsa_3d``
gathers each rank's tokens for these whole grids (its layers sit under these ones).

Proven by the gate steps ``parity e2e-fixed bsa_i2v`` / ``blocks-fixed bsa_i2v``
(stock: first divergence ``blocks.0.attn``, relative L2 0.5591) and
``parity e2e-fixed bsa_kv_continue`` (stock: ``blocks.0.attn``, 0.7274): every row
within the float32 policy.
"""
from __future__ import annotations

import contextvars

from .base import Fix, undo_all, wrap_method
from .series import Edit, NewFile, Patch

# In a LongCat self-attention call with BSA: (layer, kind, grid_q, grid_k); None: FastVideo's attention.
_ROUTE = contextvars.ContextVar("longcat_bsa_route", default=None)


def _kernel(layer, q, k, v, grid_q, grid_k):
    """FastVideo's BSA kernel by the name its LongCat module calls ([B, heads, S, D])."""
    import fastvideo.models.dits.longcat as fv_longcat       # looked up per call, as LongCat does
    return fv_longcat.flash_attn_bsa_3d(q, k, v, latent_shape_q=grid_q, latent_shape_k=grid_k, **layer.bsa_params)


def _split_forward(original):
    def forward(self, x, latent_shape, num_cond_latents=0, return_kv=False, **kwargs):
        T, H, W = latent_shape
        c = int(num_cond_latents or 0)
        if not (c > 0 and self.enable_bsa and T > 1):
            return original(self, x, latent_shape, num_cond_latents, return_kv, **kwargs)
        token = _ROUTE.set((self, "split", (c, H, W), (T - c, H, W), (T, H, W)))
        try:
            return original(self, x, latent_shape, num_cond_latents, return_kv, **kwargs)
        finally:
            _ROUTE.reset(token)
    return forward


def _kv_forward(original):
    def forward_with_kv_cache(self, x, latent_shape, num_cond_latents, kv_cache):
        T, H, W = latent_shape
        if not (num_cond_latents and num_cond_latents > 0 and self.enable_bsa and T > 1):
            return original(self, x, latent_shape, num_cond_latents, kv_cache)
        token = _ROUTE.set((self, "kv", None, (T, H, W), (num_cond_latents + T, H, W)))
        try:
            return original(self, x, latent_shape, num_cond_latents, kv_cache)
        finally:
            _ROUTE.reset(token)
    return forward_with_kv_cache


def _distributed_forward(original):
    """The condition half's ``self.attn(q, k, v)`` ([B, S, heads, D]) under a split route."""
    def forward(self, q, k, v, *args, **kwargs):
        route = _ROUTE.get()
        if route is None or route[1] != "split" or route[0].attn is not self:
            return original(self, q, k, v, *args, **kwargs)
        layer, _, grid_c = route[:3]
        out = _kernel(layer, q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
                      v.transpose(1, 2).contiguous(), grid_c, grid_c).transpose(1, 2)
        return out, None
    return forward


def _sdpa_routed(under):
    """The longcat module's ``scaled_dot_product_attention`` ([B, heads, S, D]): under a route,
    the noise half (split) or the cache continuation (kv) through the kernel."""
    def sdpa(q, k, v, *args, **kwargs):
        route = _ROUTE.get()
        if route is None:
            return under.nn.functional.scaled_dot_product_attention(q, k, v, *args, **kwargs)
        layer, _, _, grid_q, grid_k = route
        return _kernel(layer, q.contiguous(), k.contiguous(), v.contiguous(), grid_q, grid_k)
    return sdpa


def _torch_over(under):
    from .sp_shard import module_proxy
    functional = module_proxy("torch.nn.functional", under.nn.functional,
                              {"scaled_dot_product_attention": _sdpa_routed(under)})
    return module_proxy("torch", under, {"nn": module_proxy("torch.nn", under.nn, {"functional": functional})})


def _install_split():
    import fastvideo.models.dits.longcat as lc
    from fastvideo.attention import DistributedAttention
    return undo_all([wrap_method(lc.LongCatSelfAttention, "forward", _split_forward),
                     wrap_method(DistributedAttention, "forward", _distributed_forward),
                     wrap_method(lc, "torch", _torch_over)])


def _install_kv():
    import fastvideo.models.dits.longcat as lc
    return undo_all([wrap_method(lc.LongCatSelfAttention, "forward_with_kv_cache", _kv_forward),
                     wrap_method(lc, "torch", _torch_over)])


# --- the upstream patches -----------------------------------------------------------------------

_LONGCAT = "fastvideo/models/dits/longcat.py"

_TEST_HEAD = '''\
    # SPDX-License-Identifier: Apache-2.0
    """{what} (CPU, no download: a tiny LongCat self-attention)."""
    import torch

    from fastvideo.attention import selector
    from fastvideo.configs.models.dits.longcat import LongCatVideoArchConfig, LongCatVideoConfig
    from fastvideo.models.dits import longcat
    from fastvideo.platforms.cpu import CpuPlatform


    def _layer(monkeypatch):
        # On a CPU the platform names no attention backend; SDPA is the one it would use.
        monkeypatch.setattr(CpuPlatform, "get_attn_backend_cls",
                            classmethod(lambda cls, *a, **k: "fastvideo.attention.backends.sdpa.SDPABackend"))
        selector._cached_get_attn_backend.cache_clear()
        calls = []

        def kernel(q, k, v, latent_shape_q, latent_shape_k, **params):
            calls.append((tuple(latent_shape_q), tuple(latent_shape_k)))
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)     # the grids are what is tested

        monkeypatch.setattr(longcat, "flash_attn_bsa_3d", kernel)
        config = LongCatVideoConfig(arch_config=LongCatVideoArchConfig(hidden_size=32, num_attention_heads=2,
                                                                       enable_bsa=True, bsa_params={{}}))
        layer = longcat.LongCatSelfAttention(32, 2, config)
        selector._cached_get_attn_backend.cache_clear()
        layer.enable_bsa, layer.bsa_params = True, {{}}
        return layer, calls
'''

COND_SPLIT_PATCH = Patch(
    name="bsa-cond-split-dense",
    title="LongCat: block-sparse attention in the i2v condition split",
    description="""\
        What: in `LongCatSelfAttention.forward`'s condition split (`num_cond_latents > 0`),
        with BSA on and more than one latent frame, both halves call `flash_attn_bsa_3d`: the
        condition tokens on themselves with grids (c, H, W), the noise tokens on every token with
        query grid (T - c, H, W) and key grid (T, H, W).

        Why: the split computes both halves densely (`self.attn` and SDPA) and returns before the
        method checks `enable_bsa`, so image-to-video and uncached video continuation never use
        block-sparse attention, which LongCat-Video uses there (the same condition: BSA on, more
        than one frame).

        Evidence: longcat-convert's gate, `parity e2e-fixed` and `blocks-fixed` of
        extra/tiny-a/cases/bsa_i2v: every row within the float32 policy (stock: first divergence
        `blocks.0.attn`, relative L2 0.5591, known difference `bsa-cond-split-dense`).

        Leaves alone: BSA off or one frame (dense, as before), text-to-video (no split), the
        projections, RoPE and the output projection.""",
    edits=(
        Edit(_LONGCAT, "LongCatSelfAttention.forward", "out_cond, _ = self.attn(q_cond, k_cond, v_cond)", '''\
            if self.enable_bsa and T > 1:
                # Block-sparse as in the rest of this layer: the condition frames' grid on itself.
                out_cond = flash_attn_bsa_3d(q_cond.transpose(1, 2).contiguous(),
                                             k_cond.transpose(1, 2).contiguous(),
                                             v_cond.transpose(1, 2).contiguous(),
                                             latent_shape_q=(num_cond_latents, H, W),
                                             latent_shape_k=(num_cond_latents, H, W),
                                             **self.bsa_params).transpose(1, 2)
            else:''', where="guard"),
        Edit(_LONGCAT, "LongCatSelfAttention.forward",
             "out_noise_t = torch.nn.functional.scaled_dot_product_attention(", '''\
            if self.enable_bsa and T > 1:
                # Noise frames' queries on every frame's keys, block-sparse.
                out_noise_t = flash_attn_bsa_3d(q_noise_t.contiguous(),
                                                k_t.contiguous(),
                                                v_t.contiguous(),
                                                latent_shape_q=(T - num_cond_latents, H, W),
                                                latent_shape_k=(T, H, W),
                                                **self.bsa_params)  # [B, num_heads, N_noise, head_dim]
            else:''', where="guard"),
    ),
    new_files=(NewFile("fastvideo/tests/transformers/test_longcat_bsa_cond_split.py", _TEST_HEAD.format(
        what="LongCat i2v condition split with BSA on: both halves block-sparse") + '''\


    def test_condition_split_is_block_sparse(monkeypatch):
        layer, calls = _layer(monkeypatch)
        T, H, W, c = 3, 2, 2, 1
        with torch.no_grad():
            layer(torch.randn(1, T * H * W, 32), (T, H, W), num_cond_latents=c)
        assert calls == [((c, H, W), (c, H, W)), ((T - c, H, W), (T, H, W))]
    '''),),
    test="fastvideo/tests/transformers/test_longcat_bsa_cond_split.py",
)

KV_CACHE_PATCH = Patch(
    name="bsa-kv-cache-dense",
    title="LongCat: block-sparse attention in the K/V-cache continuation",
    description="""\
        What: `LongCatSelfAttention.forward_with_kv_cache`, with BSA on and more than one new
        latent frame, calls `flash_attn_bsa_3d` with query grid (T, H, W) (the new frames) and key
        grid (num_cond_latents + T, H, W) (cache + new frames) instead of dense SDPA.

        Why: the method always attends densely; LongCat-Video's cached video continuation attends
        block-sparsely there when BSA is on.

        Evidence: longcat-convert's gate, `parity e2e-fixed` of
        extra/tiny-a/cases/bsa_kv_continue: every row within the float32 policy (stock: first
        divergence `blocks.0.attn`, relative L2 0.7274, known difference `bsa-kv-cache-dense`).

        Leaves alone: BSA off or one new frame, the cache itself, the RoPE offset handling.""",
    edits=(
        Edit(_LONGCAT, "LongCatSelfAttention.forward_with_kv_cache",
             "out = torch.nn.functional.scaled_dot_product_attention(q_rope,", '''\
            if self.enable_bsa and T > 1:
                # The new frames' queries on cache + new frames, block-sparse.
                out = flash_attn_bsa_3d(q_rope.contiguous(),
                                        k_full.contiguous(),
                                        v_full.contiguous(),
                                        latent_shape_q=(T, H, W),
                                        latent_shape_k=(num_cond_latents + T, H, W),
                                        **self.bsa_params)  # [B, heads, N_noise, head_dim]
            else:''', where="guard"),
    ),
    new_files=(NewFile("fastvideo/tests/transformers/test_longcat_bsa_kv_cache.py", _TEST_HEAD.format(
        what="LongCat K/V-cache continuation with BSA on: block-sparse over cache + new frames") + '''\


    def test_cache_continuation_is_block_sparse(monkeypatch):
        layer, calls = _layer(monkeypatch)
        T, H, W, c = 2, 2, 2, 1
        cache = (torch.randn(1, 2, c * H * W, 16), torch.randn(1, 2, c * H * W, 16))
        with torch.no_grad():
            layer.forward_with_kv_cache(torch.randn(1, T * H * W, 32), (T, H, W), c, cache)
        assert calls == [((T, H, W), (c + T, H, W))]
    '''),),
    test="fastvideo/tests/transformers/test_longcat_bsa_kv_cache.py",
)

COND_SPLIT = Fix("bsa-cond-split-dense", "with BSA on, both halves of the i2v condition split are block-sparse "
                                         "(FastVideo's flash_attn_bsa_3d), as in the original", _install_split,
                 COND_SPLIT_PATCH)
KV_CACHE = Fix("bsa-kv-cache-dense", "with BSA on, the K/V-cache continuation attends block-sparsely to cache + new "
                                     "frames (FastVideo's flash_attn_bsa_3d), as in the original", _install_kv,
               KV_CACHE_PATCH)
