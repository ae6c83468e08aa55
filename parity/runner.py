"""Reference (original weights) vs FastVideo native (converted weights), on the
same inputs, layer by layer.

Modes:
  e2e    each model runs on its own activations; errors accumulate with depth.
  layer  each native module is fed the reference's input to that module
         (its first, token-stream argument), so its error is local.
  blocks one block of each implementation in memory at a time (blocks.py).

In low precision (bf16/fp16) the reference also runs in float32 (the truth):
metrics are the native output against that truth, and ``noise_ratio`` divides
that error by the reference's own error in the same low dtype.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longcat_convert.errors import BadInput

from . import native as nat
from . import refside
from .capture import Feeder, Recorder
from .correspondence import LayerPair, common_form, forward_rank, layer_pairs
from .inputs import Inputs, effective_bsa
from .metrics import layer_metrics, noise_ratio, rel_l2
from .policy import Policy, dtype_name
from . import report as R

LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass
class Setup:
    source: Path                      # original model folder or dit/ folder
    converted: Path                   # converted output folder or its transformer/
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    attention: str = "sdpa"
    mode: str = "e2e"
    loras: tuple[tuple[str, float], ...] = ()   # (LoRA name = file stem in SOURCE/lora, multiplier);
                                                # when empty, each case's own LoRAs apply
    policy: Policy = field(default_factory=Policy.load)


@dataclass
class Sides:
    """Loaded models for one parity run."""
    ref: torch.nn.Module
    native: torch.nn.Module
    truth: torch.nn.Module | None      # float32 reference, low precision only
    dims: object
    zero_pad: bool
    notes: list[str]
    config: object = None              # the source's ReferenceConfig (BSA defaults)


def resolve_lora_files(setup: Setup, model_dir: Path, name: str) -> tuple[Path, Path]:
    """(original-format file in SOURCE/lora, converted file in CONVERTED/lora/NAME)."""
    stem = Path(name).stem if name.endswith(".safetensors") else Path(name).name
    orig = model_dir / "lora" / f"{stem}.safetensors"
    if not orig.is_file():
        raise BadInput(f"{orig}: no such LoRA in the source model folder (SOURCE must be the model folder "
                       "holding dit/ and lora/)")
    out = Path(setup.converted)
    out = out.parent if out.name == "transformer" else out
    conv = out / "lora" / stem / f"{stem}.safetensors"
    if not conv.is_file():
        raise BadInput(f"{conv}: the converted folder has no LoRA {stem!r}; convert the model folder again")
    return orig, conv


def load_sides(setup: Setup, loras: tuple[tuple[str, float], ...] = ()) -> Sides:
    opened = refside.open_source(setup.source)
    config, _, model_dir = opened
    ref = refside.load_reference(opened, dtype=setup.dtype, device=setup.device, attention=setup.attention)
    dims = config.dims
    tdir = nat.transformer_dir(setup.converted)
    ncfg = nat.read_native_config(tdir)
    ndims = nat.native_dims(ncfg)
    if ndims != dims:
        raise BadInput(f"{tdir / 'config.json'}: converted config {ndims} does not match the source's {dims}")
    from longcat_convert.shards import ShardedReader
    native = nat.build_native_model(ncfg, dtype=setup.dtype, device=setup.device)
    nat.load_state(native, ShardedReader(tdir), device=setup.device)
    truth = None
    if setup.dtype in LOW_PRECISION:
        truth = refside.load_reference(opened, dtype=torch.float32, device=setup.device,
                                       attention=setup.attention)
    notes = []
    for name, multiplier in loras:
        orig, conv = resolve_lora_files(setup, model_dir, name)
        for m in (ref, truth):
            if m is not None:
                refside.apply_lora(m, orig, multiplier)
        nat.apply_lora(native, conv, multiplier)
        notes.append(f"LoRA {orig.stem} at multiplier {multiplier}: original format on the reference, "
                     f"converted format through FastVideo's LoRA layers on the native model")
    zero_pad = config.text_tokens_zero_pad
    if not zero_pad:
        notes.append("text_tokens_zero_pad=false: the original attends each sample to its valid text tokens only; "
                     "FastVideo's native model attends to every padded token (known difference, expected to fail "
                     "from the first cross-attention on)")
    return Sides(ref, native, truth, dims, zero_pad, notes, config)


BSA_NOTE = ("block-sparse attention on both sides ({params}): the reference's (reference/bsa.py) and FastVideo's "
            "own path (enable_bsa(), self_attn.bsa_params, its vendored Triton flash_attn_bsa_3d{interp})")
BSA_COND_NOTE = ("BSA with num_cond_latents > 0: the original makes both halves of the condition split "
                 "block-sparse, FastVideo's native model computes that split densely (known difference, expected "
                 "to diverge from the first self-attention on)")
BSA_KV_NOTE = ("BSA with a KV-cache continuation: the original attends the new frames block-sparsely to cache + new "
               "frames, FastVideo's native forward_with_kv_cache uses dense SDPA (known difference; the self-attention "
               "there has no hook on either side, so it shows from the first layer after it)")


def _bsa_notes(setup: Setup, params: dict, T: int, num_cond_latents: int, continuation: bool) -> list[str]:
    from reference import triton_cpu
    interp = ", in Triton's interpreter" if triton_cpu.wants_interpreter(setup.device) else ""
    notes = [BSA_NOTE.format(params=params, interp=interp)]
    if T > 1 and num_cond_latents and not continuation:    # both use BSA only for T > 1
        notes.append(BSA_COND_NOTE)
    if T > 1 and continuation:
        notes.append(BSA_KV_NOTE)
    return notes


@contextlib.contextmanager
def bsa_for(setup: Setup, sides: Sides, inp: Inputs, report: dict, *, T: int, num_cond_latents: int = 0,
            continuation: bool = False):
    """Both sides with the block-sparse attention ``inp`` asks for (off: each model as its
    config builds it), back to the config's setting afterwards. ``T``: the forward's latent
    frames (new frames in a continuation), for the report's notes."""
    params = effective_bsa(inp.bsa, sides.config)
    if params is None and sides.config.enable_bsa:
        params = sides.config.bsa_params.to_dict()
    if params is not None:
        for note in _bsa_notes(setup, params, T, num_cond_latents, continuation):
            if note not in report["notes"]:
                report["notes"].append(note)
    default = sides.config.bsa_params.to_dict() if sides.config.enable_bsa else None
    refs = [m for m in (sides.ref, sides.truth) if m is not None]
    try:
        for m in refs:
            m.set_bsa(params)
        nat.set_bsa(sides.native, params, setup.device)
        yield
    finally:
        for m in refs:
            m.set_bsa(None)                  # as its config.json says
        nat.set_bsa(sides.native, default, setup.device)


def _compare(report: dict, pairs: list[LayerPair], ref_acts: dict, nat_acts: dict, *, setup: Setup,
             inp: Inputs, case: str | None, zero_pad: bool, truth_acts: dict | None = None) -> None:
    for pair in pairs:
        if pair.name not in ref_acts and pair.native not in nat_acts:
            continue  # not run in this forward (e.g. attn under a KV cache)
        if pair.name not in ref_acts or pair.native not in nat_acts:
            # A module that runs in one implementation only is a divergence in itself.
            side = "the reference" if pair.name in ref_acts else "the native model"
            R.add_layer(report, name=pair.name, native_name=pair.native, metrics={}, passed=False,
                        failures=[f"ran in {side} only"], case=case)
            continue
        r, n = common_form(pair, ref_acts[pair.name], nat_acts[pair.native],
                           mask=inp.encoder_attention_mask, zero_pad=zero_pad)
        if truth_acts is not None:
            t, _ = common_form(pair, truth_acts[pair.name], nat_acts[pair.native],
                               mask=inp.encoder_attention_mask, zero_pad=zero_pad)
            m = layer_metrics(n, t)
            m["ref_rel_l2"] = rel_l2(r, t)
            m["noise_ratio"], m["noise_floor"] = noise_ratio(n, r, t, setup.dtype)
        else:
            m = layer_metrics(n, r)
        fails = setup.policy.failures(m, setup.dtype, setup.device, pair.name)
        R.add_layer(report, name=pair.name, native_name=pair.native, metrics=m, passed=not fails,
                    failures=fails, case=case)


def _cached_attn_names(sides: Sides, cached: bool) -> tuple[list[str], list[str]]:
    """In a KV-cache continuation both implementations run self-attention as a plain method
    (the original does), so no hook sees ``attn`` / ``self_attn``. Their output projections
    do run as modules and return the same thing: recorded in its place."""
    if not cached:
        return [], []
    n = len(sides.ref.blocks)
    return [f"blocks.{i}.attn.proj" for i in range(n)], [f"blocks.{i}.self_attn.to_out" for i in range(n)]


def _as_attn(acts: dict, suffix: str) -> None:
    for key in [k for k in acts if k.endswith(suffix)]:
        acts.setdefault(key[: -len(suffix)], acts[key])
        del acts[key]


@dataclass
class ReferenceForward:
    """The reference half of one compared forward (and its float32 truth in low precision)."""
    ref_acts: dict
    truth_acts: dict | None
    kvs: tuple                          # (reference K/V, truth K/V) when the forward returns a cache
    inputs: dict                        # the reference's module inputs (layer mode feeds them to the native side)
    nat_names: list[str]                # what the native side must record
    nat_proj: list[str]


def reference_forward(setup: Setup, sides: Sides, inp: Inputs, pairs: list[LayerPair], *,
                      kv_ref=None, overrides: dict | None = None) -> ReferenceForward:
    """Run the reference (and truth) once, recording every compared layer. The native
    side runs in this process (``_forward_pair``) or in the ranks of an SP run."""
    overrides = overrides or {}
    ref_names = [p.name for p in pairs if p.kind != "output"]
    nat_names = [p.native for p in pairs if p.kind != "output"]
    ref_proj, nat_proj = _cached_attn_names(sides, bool(kv_ref or (kv_ref is None and inp.kv_cache)))
    layer = setup.mode == "layer"
    with Recorder(sides.ref, ref_names, inputs=layer) as rrec, Recorder(sides.ref, ref_proj) as rproj:
        r_out, r_kv = refside.run(sides.ref, inp, setup.dtype, setup.device, kv_cache=kv_ref, **overrides)
    ref_acts = dict(rproj.outputs, **rrec.outputs, output=r_out)
    _as_attn(ref_acts, ".proj")
    truth_acts, t_kv = None, None
    if sides.truth is not None:
        # The truth sees the low-precision reference's module inputs in layer mode,
        # so its outputs are the exact counterpart of each local computation.
        feeds = rrec.inputs if layer else {}
        with Recorder(sides.truth, ref_names) as trec, Recorder(sides.truth, ref_proj) as tproj, \
                Feeder(sides.truth, feeds):
            t_out, t_kv = refside.run(sides.truth, inp, torch.float32, setup.device,
                                      kv_cache=kv_ref, **overrides)
        truth_acts = dict(tproj.outputs, **trec.outputs, output=t_out)
        _as_attn(truth_acts, ".proj")
    return ReferenceForward(ref_acts, truth_acts, (r_kv, t_kv), rrec.inputs, nat_names, nat_proj)


def _forward_pair(setup: Setup, sides: Sides, inp: Inputs, pairs: list[LayerPair], *,
                  kv_ref=None, kv_nat=None, overrides: dict | None = None):
    """Run reference (and truth) then native once; returns recorded activations and outputs."""
    overrides = overrides or {}
    ref = reference_forward(setup, sides, inp, pairs, kv_ref=kv_ref, overrides=overrides)
    layer = setup.mode == "layer"
    feeds = {p.native: ref.inputs[p.name] for p in pairs if layer and p.name in ref.inputs}
    with Recorder(sides.native, ref.nat_names) as nrec, Recorder(sides.native, ref.nat_proj) as nproj, \
            Feeder(sides.native, feeds):
        n_out, n_kv = nat.run(sides.native, inp, setup.dtype, setup.device,
                              kv_cache=(kv_ref if layer else kv_nat), **overrides)
    nat_acts = dict(nproj.outputs, **nrec.outputs, output=n_out)
    _as_attn(nat_acts, ".to_out")
    r_kv, t_kv = ref.kvs
    return ref.ref_acts, nat_acts, ref.truth_acts, (r_kv, n_kv, t_kv)


def _with_caches(pairs: list[LayerPair], acts: tuple, kvs: tuple) -> list[LayerPair]:
    """Returned K/V caches become layers of their own, right after the
    self-attention that made them (added to the recorded activations in place)."""
    ref_acts, nat_acts, truth_acts = acts
    r_kv, n_kv, t_kv = kvs
    if not r_kv:
        return pairs
    extra = []
    for i in sorted(r_kv):
        for j, kind in enumerate(("k", "v")):
            pair = LayerPair(f"blocks.{i}.attn.kv_cache.{kind}", f"blocks.{i}.self_attn.kv_cache.{kind}", "kv_cache")
            ref_acts[pair.name], nat_acts[pair.native] = r_kv[i][j], n_kv[i][j]
            if truth_acts is not None:
                truth_acts[pair.name] = t_kv[i][j]
            extra.append(pair)
    return sorted(pairs + extra, key=lambda p: forward_rank(p.name))


def run_case(setup: Setup, sides: Sides, inp: Inputs, report: dict, pairs: list[LayerPair]) -> None:
    with bsa_for(setup, sides, inp, report, T=inp.hidden_states.shape[2], num_cond_latents=inp.num_cond_latents,
                 continuation=bool(inp.kv_cache)):
        ref_acts, nat_acts, truth_acts, kvs = _forward_pair(setup, sides, inp, pairs)
    compared = _with_caches(pairs, (ref_acts, nat_acts, truth_acts), kvs)
    _compare(report, compared, ref_acts, nat_acts, setup=setup, inp=inp, case=inp.name,
             zero_pad=sides.zero_pad, truth_acts=truth_acts)


def run_kv_continuation(setup: Setup, sides: Sides, inp: Inputs, cond_frames: int, report: dict,
                        pairs: list[LayerPair]) -> None:
    """Video continuation: the first ``cond_frames`` latent frames are encoded
    once into a per-block K/V cache (return_kv, skip_crs_attn), then the rest
    is denoised against that cache. Each step is compared; the caches too."""
    T = inp.hidden_states.shape[2]
    if not 0 < cond_frames < T:
        raise BadInput(f"--kv-cache-frames {cond_frames} must be in [1, T={T})")
    ts = inp.timestep if inp.timestep.ndim == 2 else inp.timestep[:, None].expand(-1, T)
    cond = dict(hidden_states=inp.hidden_states[:, :, :cond_frames], timestep=torch.zeros_like(ts[:, :cond_frames]),
                num_cond_latents=0, return_kv=True, skip_crs_attn=True)
    with bsa_for(setup, sides, inp, report, T=cond_frames):
        ref_acts, nat_acts, truth_acts, kvs = _forward_pair(setup, sides, inp, pairs, overrides=cond)
    r_kv, n_kv, _ = kvs
    cache_pairs = _with_caches(pairs, (ref_acts, nat_acts, truth_acts), kvs)
    _compare(report, cache_pairs, ref_acts, nat_acts, setup=setup, inp=inp, case=f"{inp.name}:cache",
             zero_pad=sides.zero_pad, truth_acts=truth_acts)
    cont = dict(hidden_states=inp.hidden_states[:, :, cond_frames:], timestep=ts[:, cond_frames:],
                num_cond_latents=cond_frames, return_kv=False, skip_crs_attn=False)
    with bsa_for(setup, sides, inp, report, T=T - cond_frames, continuation=True):
        ref_acts, nat_acts, truth_acts, _ = _forward_pair(setup, sides, inp, pairs, kv_ref=r_kv, kv_nat=n_kv,
                                                           overrides=cont)
    _compare(report, pairs, ref_acts, nat_acts, setup=setup, inp=inp, case=f"{inp.name}:continue",
             zero_pad=sides.zero_pad, truth_acts=truth_acts)


def by_loras(setup: Setup, items: list) -> dict[tuple, list]:
    """Inputs (or loop cases) grouped by the LoRAs they run with (--lora, else each one's
    own ``loras``), so each group loads the models once."""
    groups: dict[tuple, list] = {}
    for item in items:
        key = setup.loras or tuple((Path(p).stem, float(m)) for p, m in item.loras)
        groups.setdefault(key, []).append(item)
    return groups


def run_parity(setup: Setup, inputs: list[Inputs], *, kv_cache_frames: int = 0, title: str | None = None) -> dict:
    """The parity report for every input (one case per input) in e2e or layer mode."""
    if setup.mode not in ("e2e", "layer"):
        raise BadInput(f"--mode {setup.mode}: run_parity handles e2e and layer (blocks mode has its own runner)")
    env = R.environment(setup.device, dtype_name(setup.dtype), setup.attention)
    report = R.new_report("parity", title or f"LongCat parity ({setup.mode}, {dtype_name(setup.dtype)}, "
                          f"{setup.device})", mode=setup.mode, policy=setup.policy, dtype=setup.dtype,
                          device=setup.device, env=env)
    for loras, group in by_loras(setup, inputs).items():
        sides = load_sides(setup, loras)
        report["notes"] += [n for n in sides.notes if n not in report["notes"]]
        pairs = layer_pairs(sides.dims)
        for inp in group:
            if kv_cache_frames:
                run_kv_continuation(setup, sides, inp, kv_cache_frames, report, pairs)
            else:
                run_case(setup, sides, inp, report, pairs)
    return R.finalize(report)
