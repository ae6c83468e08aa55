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

Fix: while a LongCat DiT with ``text_tokens_zero_pad`` off runs a forward with a
mask that leaves some token out, each cross-attention runs FastVideo's own
``LongCatCrossAttention.forward`` once per sample, on that sample's image tokens
and its valid text tokens only (one call for the batch when every sample has the
same valid positions). Without such a mask, or with zero padding on, or when a
sample has no valid token at all, FastVideo runs unchanged. Upstream: pass the
mask (or the per-sample text lengths) to the cross-attention and attend varlen
(``flash_attn_varlen_func`` with the text lengths, or an attention mask over the
keys).

Not bit for bit where the samples' valid lengths differ (relative L2 up to 2.7e-7 at
``blocks.0.cross_attn``): the original projects every sample's valid text in one
packed matmul (sum of the lengths as rows); here FastVideo's ``to_k`` / ``to_v`` run
per sample on fewer rows, and the CPU BLAS rounds a matmul of another row count
differently (measured: the same ``to_k`` on 7 rows and on those 7 of 10 rows differ
by 8e-7). The queries, the norms and everything else agree exactly.

Proven by the gate steps ``parity e2e-fixed`` of ``tiny-b/cases/varlen`` and
``extra/tiny-c/cases/{kv_continue,i2v_b2,two_loras}`` (every row within the
float32 policy).
"""
from __future__ import annotations

import contextvars
import functools
import inspect

from .base import Fix, undo_all, wrap_method

# The running forward's valid text positions, [B, N_text] bool; None: attend as FastVideo does.
_VALID = contextvars.ContextVar("longcat_valid_text", default=None)


def _text_length(encoder_hidden_states) -> int | None:
    h = encoder_hidden_states[0] if isinstance(encoder_hidden_states, (list, tuple)) else encoder_hidden_states
    if h is None or not hasattr(h, "shape") or h.dim() not in (3, 4):
        return None
    return int(h.shape[-2])


def valid_text(mask, batch: int, n_text: int):
    """An encoder attention mask ([B, L], [B, 1, L] or [B, 1, 1, L]) -> the valid text positions
    [B, n_text] (bool) the original attends to, or None where FastVideo's own attention already
    is the original's (no mask, every position valid) or where the mask cannot be read that way
    (a sample with no valid token)."""
    import torch
    if mask is None or not torch.is_tensor(mask):
        return None
    if mask.dim() == 4 and tuple(mask.shape[1:3]) == (1, 1):
        mask = mask[:, 0, 0]
    elif mask.dim() == 3 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 2 or mask.shape[0] != batch:
        return None
    valid = mask != 0
    if valid.shape[1] < n_text:                      # a short mask: the rest is padding
        valid = torch.cat([valid, valid.new_zeros(batch, n_text - valid.shape[1])], dim=1)
    valid = valid[:, :n_text]
    if bool(valid.all()) or not bool(valid.any(dim=1).all()):
        return None
    return valid


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
        import torch
        valid = _VALID.get()
        if (valid is None or context.dim() != 3 or tuple(context.shape[:2]) != tuple(valid.shape)
                or x.shape[0] != valid.shape[0]):
            return original(self, x, context, *args, **kwargs)
        valid = valid.to(context.device)
        if bool((valid == valid[:1]).all()):          # the same positions in every sample: one call
            return original(self, x, context[:, valid[0]], *args, **kwargs)
        return torch.cat([original(self, x[b:b + 1], context[b:b + 1, valid[b]], *args, **kwargs)
                          for b in range(x.shape[0])], dim=0)
    return forward


def _install():
    from fastvideo.models.dits.longcat import LongCatCrossAttention, LongCatTransformer3DModel
    undo = [wrap_method(LongCatTransformer3DModel, "forward", _make_model_forward),
            wrap_method(LongCatCrossAttention, "forward", _make_cross_forward)]
    return undo_all(undo)


FIX = Fix("varlen-text", "with text_tokens_zero_pad off, each sample cross-attends to its own valid text tokens "
                         "only (the original's varlen attention)", _install)
