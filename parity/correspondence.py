"""Which layers are compared, named in both vocabularies, and how their
outputs are brought to a common form. The pairs come from the mapping table."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from longcat_convert import table


@dataclass(frozen=True)
class LayerPair:
    name: str          # original module name (forward-hook vocabulary of the reference)
    native: str        # FastVideo module name
    kind: str          # x_embedder | t_embedder | y_embedder | attn | cross_attn | ffn | block | final_layer | output


def _kind(name: str) -> str:
    if name.startswith("blocks."):
        parts = name.split(".")
        return "block" if len(parts) == 2 else parts[2]
    return name


def layer_pairs(dims) -> list[LayerPair]:
    """Every compared layer in forward order, then the model output."""
    pairs = [LayerPair(o, n, _kind(o)) for o, n in table.layer_pairs(dims)]
    return pairs + [LayerPair("output", "output", "output")]


def common_form(pair: LayerPair, ref_out: torch.Tensor, native_out: torch.Tensor, *,
                mask: torch.Tensor | None, zero_pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring a reference and a native output of the same layer to one shape.

    The only module whose boundary differs is the caption embedder: the
    original's ``y_embedder`` returns the projection [B, 1, N, C] before the
    model zeroes padded tokens, while FastVideo's ``caption_embedder`` returns
    [B, N, C] with that zeroing (text_tokens_zero_pad) already applied. We apply
    the same zeroing to the reference side, so the comparison measures the
    projection and nothing else.
    """
    if pair.kind == "y_embedder":
        ref_out = ref_out.squeeze(1)
        if zero_pad and mask is not None:
            ref_out = ref_out * mask.to(ref_out.device)[:, :, None].to(ref_out.dtype)
    return ref_out, native_out


def common_rows(pairs: list[LayerPair], *, mask: torch.Tensor | None, zero_pad: bool):
    """``common_form`` as the judge takes it: ``(row, native, reference) -> (native, reference)``."""
    by_name = {p.name: p for p in pairs}

    def common(row: str, native_out: torch.Tensor, ref_out: torch.Tensor):
        pair = by_name.get(row)
        if pair is None:
            return native_out, ref_out
        ref_out, native_out = common_form(pair, ref_out, native_out, mask=mask, zero_pad=zero_pad)
        return native_out, ref_out
    return common
