"""``varlen-text``: the text each sample cross-attends to when ``text_tokens_zero_pad`` is off.

FastVideo: ``fastvideo/models/dits/longcat.py``. ``LongCatTransformer3DModel.forward``
hands ``encoder_attention_mask`` to ``CaptionEmbedder`` only, which uses it for
nothing but zeroing the padded tokens when ``text_tokens_zero_pad`` is set;
``LongCatCrossAttention.forward`` then attends every image token to every one of
the (padded) text positions. With ``text_tokens_zero_pad=false`` the original's
cross-attention is varlen: each sample attends to its own valid text tokens and
nothing else, so FastVideo's output differs from the first cross-attention on
(``blocks.0.cross_attn``, relative L2 0.19-0.87 on the golden cases). With
``text_tokens_zero_pad=true`` (the released config) the original attends every
position too, the padded ones zeroed, and the two agree.

Fix: while a LongCat DiT with ``text_tokens_zero_pad`` off runs a forward with a mask
that leaves some token out, each cross-attention's attention call (FastVideo's
``LocalAttention``) is answered by one masked attention for the whole batch: every
sample's queries against its own valid text tokens (``longcat_masked_text_attention``
in fixes/varlen_text_code.py; the mask from ``longcat_text_mask``). FastVideo's own
projections and norms run unchanged, on every text position. Without such a mask, or
with zero padding on, or when a sample has no valid token at all, FastVideo runs
unchanged. Upstream (the patch): the model computes the mask with the same function and
hands it through the blocks to the cross-attention, which calls the same attention
function; so both forms compute the same thing with the same code.

Not bit for bit with the original (relative L2 of order 1e-7 at ``blocks.0.cross_attn``):
the original projects only the valid text (packed, the sum of the lengths as rows) and
attends each sample to fewer keys; here ``to_k`` / ``to_v`` run on every position and the
padded keys are masked out, and the CPU BLAS rounds a matmul of another row count
differently. The queries, the norms and everything else agree exactly.

Proven by the gate steps ``parity e2e-fixed`` of ``tiny-b/cases/varlen`` and
``extra/tiny-c/cases/{kv_continue,i2v_b2,two_loras}`` (every row within the
float32 policy).
"""
from __future__ import annotations

import contextvars
import functools
import inspect

from .base import Fix, undo_all, wrap_method
from .series import Edit, NewFile, Patch

# The running forward's valid text positions, [B, N_text] bool; None: attend as FastVideo does.
_VALID = contextvars.ContextVar("longcat_valid_text", default=None)
# In a LongCat cross-attention with such a mask: (its LocalAttention, the mask).
_ROUTE = contextvars.ContextVar("longcat_text_route", default=None)


def _text_length(encoder_hidden_states) -> int | None:
    h = encoder_hidden_states[0] if isinstance(encoder_hidden_states, (list, tuple)) else encoder_hidden_states
    if h is None or not hasattr(h, "shape") or h.dim() not in (3, 4):
        return None
    return int(h.shape[-2])


def _code():
    from . import varlen_text_code
    return varlen_text_code


def valid_text(mask, batch: int, n_text: int):
    """An encoder attention mask ([B, L], [B, 1, L] or [B, 1, 1, L]) -> the valid text positions
    [B, n_text] (bool) the original attends to, or None where FastVideo's own attention already
    is the original's (no mask, every position valid) or where the mask cannot be read that way
    (a sample with no valid token)."""
    return _code().longcat_text_mask(mask, batch, n_text)


def _make_model_forward(original):
    signature = inspect.signature(original)

    @functools.wraps(original)             # other wrappers read the signature through it
    def forward(self, *args, **kwargs):
        caption = getattr(self, "caption_embedder", None)
        if caption is None or getattr(caption, "text_tokens_zero_pad", True):
            return original(self, *args, **kwargs)
        try:
            bound = signature.bind(self, *args, **kwargs).arguments
        except TypeError:
            return original(self, *args, **kwargs)
        hidden, text = bound.get("hidden_states"), bound.get("encoder_hidden_states")
        n_text = _text_length(text)
        valid = None if n_text is None or not hasattr(hidden, "shape") else \
            valid_text(bound.get("encoder_attention_mask"), int(hidden.shape[0]), n_text)
        token = _VALID.set(valid)
        try:
            return original(self, *args, **kwargs)
        finally:
            _VALID.reset(token)
    return forward


def _make_cross_forward(original):
    @functools.wraps(original)
    def forward(self, x, context, *args, **kwargs):
        valid = _VALID.get()
        if valid is None or context.dim() != 3 or tuple(context.shape[:2]) != tuple(valid.shape):
            return original(self, x, context, *args, **kwargs)
        token = _ROUTE.set((self.attn, valid))
        try:
            return original(self, x, context, *args, **kwargs)
        finally:
            _ROUTE.reset(token)
    return forward


def _make_local_attention_forward(original):
    @functools.wraps(original)
    def forward(self, q, k, v, *args, **kwargs):
        route = _ROUTE.get()
        if route is None or route[0] is not self or args or kwargs.get("freqs_cis") is not None:
            return original(self, q, k, v, *args, **kwargs)
        return _code().longcat_masked_text_attention(q, k, v, route[1])
    return forward


def _install():
    from fastvideo.attention import LocalAttention
    from fastvideo.models.dits.longcat import LongCatCrossAttention, LongCatTransformer3DModel
    undo = [wrap_method(LongCatTransformer3DModel, "forward", _make_model_forward),
            wrap_method(LongCatCrossAttention, "forward", _make_cross_forward),
            wrap_method(LocalAttention, "forward", _make_local_attention_forward)]
    return undo_all(undo)


# --- the upstream patch ------------------------------------------------------------------------

_LONGCAT = "fastvideo/models/dits/longcat.py"
_MASK_PARAM = "context_mask: torch.Tensor | None = None,  # [B, N_text] valid text tokens (None: every token)"


def _source(name: str) -> str:
    import inspect as _inspect
    return _inspect.getsource(getattr(_code(), name))


PATCH = Patch(
    name="varlen-text",
    title="LongCat: without text zero padding, each sample cross-attends to its own valid text tokens",
    description="""\
        What: with `text_tokens_zero_pad=False` and an `encoder_attention_mask` that leaves some
        text token out, `LongCatTransformer3DModel.forward` turns the mask into the valid tokens
        of each sample (`longcat_text_mask`) and hands it through the blocks to
        `LongCatCrossAttention`, which attends every sample's image tokens to its own valid text
        tokens only: one masked attention call for the whole batch
        (`longcat_masked_text_attention`). Without a mask, with every token valid, or with zero
        padding on, nothing changes (`self.attn`, as before).

        Why: the mask reaches `CaptionEmbedder` only, which uses it for nothing but zeroing
        padded tokens when `text_tokens_zero_pad` is set; the cross-attention then attends to
        every padded position. LongCat-Video's cross-attention without zero padding is varlen
        (each sample's valid tokens, packed), so FastVideo's output differs from the first
        cross-attention on (`blocks.0.cross_attn`, relative L2 0.19-0.87 on longcat-convert's
        golden cases). With zero padding on (the released config) both agree already.

        Evidence: longcat-convert's gate, `parity e2e-fixed` of tiny-b/cases/varlen and
        extra/tiny-c/cases/{kv_continue,i2v_b2,two_loras}: every row within the float32 policy
        (stock: known difference `varlen-text`). Cost: one attention call per cross-attention, as
        before (`make bench --sections fixes`, docs/fixes.md in longcat-convert).

        Leaves alone: the projections and norms (they run on every text position, as before),
        the released config's zero-padded path, the attention backend choice where no token is
        masked.""",
    edits=(
        Edit(_LONGCAT, "modulate_fp32", "", lambda: _source("longcat_text_mask"), where="after-scope"),
        Edit(_LONGCAT, "longcat_text_mask", "", lambda: _source("longcat_masked_text_attention"),
             where="after-scope"),
        Edit(_LONGCAT, "LongCatCrossAttention.forward",
             "num_cond_latents: int = 0,  # Number of conditioning latent frames (for I2V)", _MASK_PARAM,
             where="after"),
        Edit(_LONGCAT, "LongCatCrossAttention.forward", "out_noise = self.attn(q, k, v)", '''\
             if context_mask is not None:  # each sample's own valid text tokens
                 out_noise = longcat_masked_text_attention(q, k, v, context_mask)
             else:''', where="guard"),
        Edit(_LONGCAT, "LongCatCrossAttention.forward", "out = self.attn(q, k, v)", '''\
             if context_mask is not None:  # each sample's own valid text tokens
                 out = longcat_masked_text_attention(q, k, v, context_mask)
             else:''', where="guard"),
        Edit(_LONGCAT, "LongCatTransformerBlock.forward",
             "skip_crs_attn: bool = False,  # Skip cross-attention (for cache init)", _MASK_PARAM, where="after"),
        Edit(_LONGCAT, "LongCatTransformerBlock.forward", "num_cond_latents=cross_num_cond)",
             "num_cond_latents=cross_num_cond,\ncontext_mask=context_mask)"),
        Edit(_LONGCAT, "LongCatTransformer3DModel.forward", "context = self.caption_embedder(encoder_hidden_states,", '''\
            # Without zero padding, LongCat-Video attends each sample to its own valid text tokens only.
            text_mask = None if self.caption_embedder.text_tokens_zero_pad else longcat_text_mask(
                encoder_attention_mask, B, context.shape[1])''', where="after"),
        Edit(_LONGCAT, "LongCatTransformer3DModel.forward", "skip_crs_attn=skip_crs_attn,",
             "context_mask=text_mask,", where="after"),
    ),
    new_files=(NewFile("fastvideo/tests/transformers/test_longcat_varlen_text.py", '''\
        # SPDX-License-Identifier: Apache-2.0
        """LongCat without text zero padding: each sample attends to its own valid text tokens
        (CPU, no download: a tiny LongCat cross-attention)."""
        import torch

        from fastvideo.attention import selector
        from fastvideo.configs.models.dits.longcat import LongCatVideoArchConfig, LongCatVideoConfig
        from fastvideo.forward_context import set_forward_context
        from fastvideo.models.dits import longcat
        from fastvideo.platforms.cpu import CpuPlatform


        def test_cross_attention_attends_to_valid_text_only(monkeypatch):
            # On a CPU the platform names no attention backend; SDPA is the one it would use.
            monkeypatch.setattr(CpuPlatform, "get_attn_backend_cls",
                                classmethod(lambda cls, *a, **k: "fastvideo.attention.backends.sdpa.SDPABackend"))
            selector._cached_get_attn_backend.cache_clear()
            torch.manual_seed(0)
            config = LongCatVideoConfig(arch_config=LongCatVideoArchConfig(hidden_size=32, num_attention_heads=2))
            layer = longcat.LongCatCrossAttention(32, 2, config)
            selector._cached_get_attn_backend.cache_clear()
            with torch.no_grad():
                for p in layer.parameters():                 # the linears are allocated uninitialised
                    p.normal_(0, 0.2)
            x, text = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
            mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
            with torch.no_grad(), set_forward_context(current_timestep=0, attn_metadata=None):
                out = layer(x, text, context_mask=mask)
                # each sample on its own valid tokens, one at a time
                alone = torch.cat([layer(x[b:b + 1], text[b:b + 1, mask[b]]) for b in range(2)])
            torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)
        '''),),
    test="fastvideo/tests/transformers/test_longcat_varlen_text.py",
)

FIX = Fix("varlen-text", "with text_tokens_zero_pad off, each sample cross-attends to its own valid text tokens "
                         "only (the original's varlen attention), one masked attention call per batch", _install, PATCH)
