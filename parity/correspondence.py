"""Which layers are compared, named in both vocabularies, and how their
outputs are brought to a common form. The pairs come from the mapping table."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

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


@lru_cache(maxsize=1)
def _templates() -> tuple[str, ...]:
    """The compared layers of a one-block model, block index abstracted, in hook order."""
    one = replace(table.Dims.from_original_config(
        {"hidden_size": 8, "num_heads": 1, "depth": 1, "in_channels": 1, "caption_channels": 1,
         "adaln_tembed_dim": 1}), depth=1)
    return tuple(re.sub(r"^blocks\.0\b", "blocks.{i}", o) for o, _ in table.layer_pairs(one)) + ("output",)


def forward_rank(name: str) -> tuple:
    """Sort key: the order in which the compared layers' forward hooks fire,
    derived from the mapping table (embedders, then per block attn, cross_attn,
    ffn, the block, then final_layer, output). A sub-entry such as
    ``blocks.3.attn.kv_cache.k`` sorts right after its layer, and so does a
    golden case's returned cache ``kv_cache.3.k`` (block 3's self-attention made
    it); unknown names last."""
    name = name[len("act."):] if name.startswith("act.") else name
    cache = re.match(r"^kv_cache\.(\d+)\.([kv])$", name)
    if cache:
        name = f"blocks.{cache.group(1)}.attn.kv_cache.{cache.group(2)}"
    m = re.match(r"^blocks\.(\d+)(?=\.|$)", name)
    block = int(m.group(1)) if m else -1
    generic = re.sub(r"^blocks\.\d+(?=\.|$)", "blocks.{i}", name)
    tmpl = _templates()
    first_block = next(k for k, t in enumerate(tmpl) if "{i}" in t)
    for k in sorted(range(len(tmpl)), key=lambda k: -len(tmpl[k])):
        t = tmpl[k]
        if generic == t or generic.startswith(t + "."):
            phase = 0 if k < first_block else (1 if "{i}" in t else 2)
            return (phase, block, k, generic != t, name)
    return (3, block, 0, True, name)


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
