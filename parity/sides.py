"""The DiT sides of a comparison, loaded in one place.

A side is what is compared: the reference (our re-implementation of the
original, ORIGINAL weights from SOURCE; in bf16/fp16 also a float32 copy, the
truth) and FastVideo's native LongCat DiT (CONVERTED weights, FastVideo's LoRA
layers). Runners decide how they run: in this process, streamed block by block,
or in the ranks of a sequence-parallel run (which build the native side
themselves from ``Sides.native_loras``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch

import fixes
from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader

from . import native as nat
from . import refside
from .inputs import effective_bsa
from .setup import Setup, lora_files

ZERO_PAD_NOTE = ("text_tokens_zero_pad=false: the original attends each sample to its valid text tokens only; "
                 "FastVideo's native model attends to every padded token (known difference, expected to fail "
                 "from the first cross-attention on)")
ZERO_PAD_FIXED_NOTE = ("text_tokens_zero_pad=false: the original attends each sample to its valid text tokens only; "
                       "the fix varlen-text (fixes/varlen_text.py) makes FastVideo's cross-attention do the same")


def zero_pad_note() -> str:
    return ZERO_PAD_FIXED_NOTE if "varlen-text" in fixes.active() else ZERO_PAD_NOTE
BSA_NOTE = ("block-sparse attention on both sides ({params}): the reference's (reference/bsa.py) and FastVideo's "
            "own path (enable_bsa(), self_attn.bsa_params, its vendored Triton flash_attn_bsa_3d{interp})")
BSA_COND_NOTE = ("BSA with num_cond_latents > 0: the original makes both halves of the condition split "
                 "block-sparse, FastVideo's native model computes that split densely (known difference, expected "
                 "to diverge from the first self-attention on)")
BSA_KV_NOTE = ("BSA with a KV-cache continuation: the original attends the new frames block-sparsely to cache + new "
               "frames, FastVideo's native forward_with_kv_cache uses dense SDPA (known difference; the self-attention "
               "there has no hook on either side, so it shows from the first layer after it)")
BSA_FIXED_NOTE = ("BSA in the {what}: the fix {fix} (fixes/bsa.py) makes FastVideo's native model block-sparse "
                  "there, as the original")


@dataclass
class Sides:
    """Loaded models for one parity run (one LoRA group)."""
    ref: torch.nn.Module
    native: torch.nn.Module | None     # None: the native side runs elsewhere (SP ranks)
    truth: torch.nn.Module | None      # float32 reference, low precision only
    config: object                     # the source's ReferenceConfig (dims, BSA defaults, zero padding)
    notes: list[str] = field(default_factory=list)
    native_loras: list[tuple[str, float]] = field(default_factory=list)   # converted LoRA files, multipliers
    readers: tuple = ()                # blocks mode: (source reader, converted reader)
    dims: object = None                # the source's table.Dims (the mapping table's reading of config.json)

    @property
    def zero_pad(self) -> bool:
        return self.config.text_tokens_zero_pad

    @property
    def references(self) -> list[torch.nn.Module]:
        return [m for m in (self.ref, self.truth) if m is not None]


def _native_config(setup: Setup, dims) -> dict:
    tdir = nat.transformer_dir(setup.converted)
    ncfg = nat.read_native_config(tdir)
    ndims = nat.native_dims(ncfg)
    if ndims != dims:
        raise BadInput(f"{tdir / 'config.json'}: converted config {ndims} does not match the source's {dims}")
    return ncfg


def load_sides(setup: Setup, loras: tuple[tuple[str, float], ...] = (), *, native: bool = True) -> Sides:
    """The reference (and truth) with ``loras`` applied, and unless ``native=False`` the
    native model with their converted copies applied through FastVideo's LoRA layers."""
    opened = refside.open_source(setup.source)
    config, _, model_dir = opened
    dims = refside.source_dims(setup.source)
    ncfg = _native_config(setup, dims)
    ref = refside.load_reference(opened, dtype=setup.dtype, device=setup.device, attention=setup.attention)
    truth = None
    if setup.low_precision:
        truth = refside.load_reference(opened, dtype=torch.float32, device=setup.device, attention=setup.attention)
    model = None
    if native and setup.fastvideo:              # parity --fastvideo: FastVideo's own loader builds it
        from .built import inspect_module
        model = nat.load_native_via_fastvideo(setup.converted, dtype=setup.dtype, device=setup.device,
                                              overrides=setup.fastvideo)
        setup.record_built("transformer (TransformerLoader)", inspect_module(model))
    elif native:
        model = nat.build_native_model(ncfg, dtype=setup.dtype, device=setup.device)
        nat.load_state(model, ShardedReader(nat.transformer_dir(setup.converted)), device=setup.device)
    sides = Sides(ref, model, truth, config, dims=dims)
    for name, multiplier in loras:
        orig, conv = lora_files(setup, model_dir, name)
        for m in sides.references:
            refside.apply_lora(m, orig, multiplier)
        if model is not None:
            nat.apply_lora(model, conv, multiplier)
        sides.native_loras.append((str(conv), float(multiplier)))
        sides.notes.append(f"LoRA {orig.stem} at multiplier {multiplier}: original format on the reference, "
                           f"converted format through FastVideo's LoRA layers on the native side")
    if not sides.zero_pad:
        sides.notes.append(zero_pad_note())
    return sides


def load_block_sides(setup: Setup) -> Sides:
    """Blocks mode: one-block models of each implementation (embedders and final layer
    loaded, block weights streamed in by the runner), with both shard readers."""
    config, src, _ = refside.open_source(setup.source)
    dims = refside.source_dims(setup.source)
    ncfg = _native_config(setup, dims)
    conv = ShardedReader(nat.transformer_dir(setup.converted))

    def nonblock(reader):
        return [k for k in reader.keys() if not k.startswith("blocks.")]
    ref = refside.build_reference(config, depth=1, dtype=setup.dtype, device=setup.device, attention=setup.attention)
    model = nat.build_native_model(dict(ncfg, depth=1), dtype=setup.dtype, device=setup.device)
    truth = None
    if setup.low_precision:
        truth = refside.build_reference(config, depth=1, dtype=torch.float32, device=setup.device,
                                        attention=setup.attention)
    for m, reader in ((ref, src), (model, conv), (truth, src)):
        if m is not None:
            nat.load_state(m, reader, keys=nonblock(reader), device=setup.device, strict=False)
    sides = Sides(ref, model, truth, config, readers=(src, conv), dims=dims)
    if not sides.zero_pad:
        sides.notes.append(zero_pad_note())
    return sides


def one_block_dims(sides: Sides):
    return replace(sides.dims, depth=1)


def bsa_notes(setup: Setup, params: dict, T: int, num_cond_latents: int, continuation: bool) -> list[str]:
    from reference import triton_cpu
    interp = ", in Triton's interpreter" if triton_cpu.wants_interpreter(setup.device) else ""
    notes = [BSA_NOTE.format(params=params, interp=interp)]
    fixed = fixes.active()
    if T > 1 and num_cond_latents and not continuation:    # both use BSA only for T > 1
        notes.append(BSA_FIXED_NOTE.format(fix="bsa-cond-split-dense", what="condition split")
                     if "bsa-cond-split-dense" in fixed else BSA_COND_NOTE)
    if T > 1 and continuation:
        notes.append(BSA_FIXED_NOTE.format(fix="bsa-kv-cache-dense", what="K/V-cache continuation")
                     if "bsa-kv-cache-dense" in fixed else BSA_KV_NOTE)
    return notes


@contextlib.contextmanager
def bsa_for(setup: Setup, sides: Sides, wanted: dict | None, report: dict, *, T: int, num_cond_latents: int = 0,
            continuation: bool = False, extra_notes=()):
    """Every loaded side with the block-sparse attention ``wanted`` asks for (None: each
    model as its config builds it), back to the config's setting afterwards; yields the
    effective ``bsa_params`` (None: dense). ``T``: the forward's latent frames (new frames
    in a continuation), for the report's notes."""
    params = effective_bsa(wanted, sides.config)
    if params is None and sides.config.enable_bsa:
        params = sides.config.bsa_params.to_dict()
    if params is not None:
        for note in bsa_notes(setup, params, T, num_cond_latents, continuation) + list(extra_notes):
            if note not in report["notes"]:
                report["notes"].append(note)
    default = sides.config.bsa_params.to_dict() if sides.config.enable_bsa else None
    try:
        for m in sides.references:
            m.set_bsa(params)
        if sides.native is not None:
            nat.set_bsa(sides.native, params, setup.device)
        yield params
    finally:
        for m in sides.references:
            m.set_bsa(None)                  # as its config.json says
        if sides.native is not None:
            nat.set_bsa(sides.native, default, setup.device)
