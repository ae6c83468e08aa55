"""LongCat's variable-length text attention as FastVideo code: the run-time fix
(fixes/varlen_text.py) calls these functions and the upstream patch inserts their
source into FastVideo's ``fastvideo/models/dits/longcat.py``, so both forms run the
same code. torch only."""
from __future__ import annotations

import torch


def longcat_text_mask(encoder_attention_mask: torch.Tensor | None, batch_size: int,
                      num_text_tokens: int) -> torch.Tensor | None:
    """The valid text tokens each sample attends to ([B, N_text], bool), or None where every
    sample attends to every token (no mask, every token valid, or a mask that cannot be read
    that way: a sample with no valid token). Takes masks of shape [B, L], [B, 1, L] or
    [B, 1, 1, L]; positions beyond L are padding."""
    mask = encoder_attention_mask
    if mask is None or not torch.is_tensor(mask):
        return None
    if mask.dim() == 4 and tuple(mask.shape[1:3]) == (1, 1):
        mask = mask[:, 0, 0]
    elif mask.dim() == 3 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 2 or mask.shape[0] != batch_size:
        return None
    valid = mask != 0
    if valid.shape[1] < num_text_tokens:
        valid = torch.cat([valid, valid.new_zeros(batch_size, num_text_tokens - valid.shape[1])], dim=1)
    valid = valid[:, :num_text_tokens]
    if bool(valid.all()) or not bool(valid.any(dim=1).all()):
        return None
    return valid


def longcat_masked_text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  context_mask: torch.Tensor) -> torch.Tensor:
    """Cross-attention of every sample's image tokens to its own valid text tokens, all samples
    in one call ([B, S, heads, head_dim] in and out; ``context_mask`` [B, N_text] bool)."""
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2),
                                                           k.transpose(1, 2),
                                                           v.transpose(1, 2),
                                                           attn_mask=context_mask[:, None, None, :].to(q.device))
    return out.transpose(1, 2)
