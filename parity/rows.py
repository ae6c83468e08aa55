"""Row order, defined once for every kind of row a report holds.

A row is one compared quantity: a DiT layer (``x_embedder`` ... ``blocks.3.attn`` ...
``output``, named in the original's vocabulary), a row of a denoising loop
(``timesteps``, ``step.2.dit_out``, ``output.latents``), or a row of a pipeline
component (``encoder.block.1``, ``latents.normalized``, ``decode.video``). Every
report, every judge call and every plot sorts rows with :func:`row_key`, which
follows the order in which a prompt becomes frames:

  weights checks -> text encoding -> VAE encoding -> the loop's schedule ->
  one DiT forward (its K/V cache after the self-attention that made it) ->
  the loop's steps -> decoding -> frames

so a report of any mode reads, and plots, left to right in the order things
happen. Names this table does not know sort last, by name.
"""
from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache

from longcat_convert import table

STEP_FIELDS = ("timestep", "dit_in", "dit_out", "noise_pred", "latents")

# Phases, in run order.
WEIGHTS, TEXT, ENCODE, SCHEDULE, DIT, STEPS, DECODE, UNKNOWN = range(8)

_STEP = re.compile(r"^step\.(\d+)\.(\w+)$")
_CACHE = re.compile(r"^kv_cache\.(\d+)\.([kv])$")
_PARTS = re.compile(r"\d+|\D+")

# Component rows: (pattern, phase) in order; ``{i}`` matches a block / cache index.
_COMPONENT_ROWS = [
    ("weights.{*}", WEIGHTS),
    ("input_ids", TEXT), ("attention_mask", TEXT),
    ("text.input_ids", TEXT), ("text.attention_mask", TEXT),
    ("text.negative_input_ids", TEXT), ("text.negative_attention_mask", TEXT),
    ("encoder.embed_tokens", TEXT),
    ("encoder.block.{i}.layer.0", TEXT), ("encoder.block.{i}.layer.1", TEXT), ("encoder.block.{i}", TEXT),
    ("encoder.final_layer_norm", TEXT),
    ("prompt_embeds.valid_tokens", TEXT), ("prompt_embeds", TEXT),
    ("text.prompt_embeds.valid_tokens", TEXT), ("text.prompt_embeds", TEXT),
    ("text.negative_prompt_embeds.valid_tokens", TEXT), ("text.negative_prompt_embeds", TEXT),
    ("encoder.conv_in", ENCODE), ("encoder.down_blocks.{i}", ENCODE), ("encoder.mid_block", ENCODE),
    ("encoder.norm_out", ENCODE), ("encoder.conv_out", ENCODE), ("quant_conv", ENCODE),
    ("encoder.feat_cache.{i}", ENCODE),
    ("latent_dist.mean", ENCODE), ("latent_dist.std", ENCODE), ("latents.sample", ENCODE),
    ("latents.normalized", ENCODE),
    ("latents.initial", SCHEDULE), ("timesteps", SCHEDULE), ("sigmas", SCHEDULE),
    ("output.latents", STEPS),
    ("decode.latents", DECODE), ("post_quant_conv", DECODE), ("decoder.conv_in", DECODE),
    ("decoder.mid_block", DECODE), ("decoder.up_blocks.{i}", DECODE), ("decoder.norm_out", DECODE),
    ("decoder.conv_out", DECODE), ("decoder.feat_cache.{i}", DECODE),
    ("decode.video", DECODE), ("output.video", DECODE), ("frames", DECODE), ("output.frames", DECODE),
]


def _pattern(p: str) -> re.Pattern:
    return re.compile("^" + re.escape(p).replace(r"\{i\}", r"(\d+)").replace(r"\{\*\}", r"(.+)") + "$")


def _family(k: int) -> int:
    """Indexed rows of one module family (``encoder.block.{i}.layer.0``, ``...layer.1``,
    ``encoder.block.{i}``) sort block by block: they share the first pattern's place."""
    p = _COMPONENT_ROWS[k][0]
    if "{i}" not in p:
        return k
    head = p[: p.index("{i}")]
    return next(j for j, (q, _) in enumerate(_COMPONENT_ROWS) if q.startswith(head))


_COMPILED = [(_pattern(p), phase, _family(k), k) for k, (p, phase) in enumerate(_COMPONENT_ROWS)]


@lru_cache(maxsize=1)
def _dit_templates() -> tuple[str, ...]:
    """The compared layers of a one-block DiT, block index abstracted, in hook order
    (derived from the mapping table)."""
    one = replace(table.Dims.from_original_config(
        {"hidden_size": 8, "num_heads": 1, "depth": 1, "in_channels": 1, "caption_channels": 1,
         "adaln_tembed_dim": 1}), depth=1)
    return tuple(re.sub(r"^blocks\.0\b", "blocks.{i}", o) for o, _ in table.layer_pairs(one)) + ("output",)


def forward_rank(name: str) -> tuple | None:
    """Where a DiT layer's forward hook fires (embedders, then per block attn,
    cross_attn, ffn, the block, then final_layer, output), None for a name that is
    no DiT layer. A sub-entry such as ``blocks.3.attn.kv_cache.k`` sorts right after
    its layer, and so does a returned cache ``kv_cache.3.k`` (block 3's
    self-attention made it)."""
    name = name[len("act."):] if name.startswith("act.") else name
    cache = _CACHE.match(name)
    if cache:
        name = f"blocks.{cache.group(1)}.attn.kv_cache.{cache.group(2)}"
    m = re.match(r"^blocks\.(\d+)(?=\.|$)", name)
    block = int(m.group(1)) if m else -1
    generic = re.sub(r"^blocks\.\d+(?=\.|$)", "blocks.{i}", name)
    tmpl = _dit_templates()
    first_block = next(k for k, t in enumerate(tmpl) if "{i}" in t)
    for k in sorted(range(len(tmpl)), key=lambda k: -len(tmpl[k])):
        t = tmpl[k]
        if generic == t or generic.startswith(t + "."):
            phase = 0 if k < first_block else (1 if "{i}" in t else 2)
            return (phase, block, k, generic != t, name)
    return None


def row_key(name: str) -> tuple:
    """The sort key of any row name (see the module docstring)."""
    m = _STEP.match(name)
    if m:
        f = m.group(2)
        return (STEPS, int(m.group(1)), STEP_FIELDS.index(f) if f in STEP_FIELDS else len(STEP_FIELDS), f)
    for pat, phase, family, k in _COMPILED:
        hit = pat.match(name)
        if hit:
            idx = tuple(int(g) for g in hit.groups() if g.isdigit())
            return (phase, family, idx, k, name) if phase != STEPS else (STEPS, 1 << 30, 0, name)
    dit = forward_rank(name)
    if dit is not None:
        return (DIT, dit)
    # Natural order: "rank2" before "rank10".
    return (UNKNOWN, tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in _PARTS.findall(name)))


def ordered(names) -> list[str]:
    """Distinct row names in run order."""
    return sorted(set(names), key=row_key)


def is_loop_row(name: str) -> bool:
    """A row a denoising loop records (trajectory cases' ``traj.*`` keys and ``output.latents``)."""
    return name in ("timesteps", "sigmas", "output.latents") or bool(_STEP.match(name) or _CACHE.match(name))
