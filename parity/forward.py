"""The in-process runner of DiT forwards (``parity --mode e2e|layer``): both sides run
here on the same inputs, hooks record every compared layer, and the result comes
back as rows named in the original's vocabulary. Nothing here judges.

e2e    each model runs on its own activations; errors accumulate with depth.
layer  each native module is fed the reference's input to that module (its first,
       token-stream argument), so its error is local.

A K/V-cache continuation (``--kv-cache-frames K``, or a case that carries a
cache) is planned as forwards by :func:`plan`; the sequence-parallel runner
(parity/sp.py) runs the same plan with the native half in its ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from longcat_convert.errors import BadInput

from . import native as nat
from . import refside
from .capture import Feeder, Recorder
from .correspondence import LayerPair
from .inputs import Inputs
from .setup import Setup
from .sides import Sides


@dataclass
class Step:
    """One forward of an input's plan."""
    label: str                         # the report's case name
    overrides: dict                    # forward arguments replacing the input's
    T: int                             # latent frames this forward denoises (BSA notes)
    num_cond_latents: int = 0
    continuation: bool = False         # attends to a K/V cache
    cache_from: str | None = None      # label of the step whose returned cache it continues from
    returns_cache: bool = False


def plan(inp: Inputs, kv_cache_frames: int = 0) -> list[Step]:
    """The forwards of one input: one, or a cache prefill of the first ``kv_cache_frames``
    latent frames (return_kv, skip_crs_attn) followed by the rest against that cache."""
    T = inp.hidden_states.shape[2]
    if not kv_cache_frames:
        return [Step(inp.name, {}, T, inp.num_cond_latents, continuation=bool(inp.kv_cache),
                     returns_cache=inp.return_kv)]
    if not 0 < kv_cache_frames < T:
        raise BadInput(f"--kv-cache-frames {kv_cache_frames} must be in [1, T={T})")
    ts = inp.timestep if inp.timestep.ndim == 2 else inp.timestep[:, None].expand(-1, T)
    cond = dict(hidden_states=inp.hidden_states[:, :, :kv_cache_frames],
                timestep=torch.zeros_like(ts[:, :kv_cache_frames]), num_cond_latents=0, return_kv=True,
                skip_crs_attn=True)
    cont = dict(hidden_states=inp.hidden_states[:, :, kv_cache_frames:], timestep=ts[:, kv_cache_frames:],
                num_cond_latents=kv_cache_frames, return_kv=False, skip_crs_attn=False)
    first = Step(f"{inp.name}:cache", cond, kv_cache_frames, returns_cache=True)
    return [first, Step(f"{inp.name}:continue", cont, T - kv_cache_frames, continuation=True,
                        cache_from=first.label)]


@dataclass
class Rows:
    """What one compared forward produced, keyed by the original's layer names."""
    label: str
    reference: dict
    native: dict = field(default_factory=dict)
    truth: dict | None = None
    native_names: dict = field(default_factory=dict)       # row -> FastVideo module name
    settings: dict = field(default_factory=dict)           # what this forward ran with (the report's case settings)


def _cached_attn_names(depth: int, cached: bool) -> tuple[list[str], list[str]]:
    """In a KV-cache continuation both implementations run self-attention as a plain method
    (the original does), so no hook sees ``attn`` / ``self_attn``. Their output projections
    do run as modules and return the same thing: recorded in its place."""
    if not cached:
        return [], []
    return [f"blocks.{i}.attn.proj" for i in range(depth)], [f"blocks.{i}.self_attn.to_out" for i in range(depth)]


def as_attn(acts: dict, suffix: str) -> None:
    """Rename ``blocks.<i>.attn<suffix>`` recordings to the attention module they stand for."""
    for key in [k for k in acts if k.endswith(suffix)]:
        acts.setdefault(key[: -len(suffix)], acts[key])
        del acts[key]


@dataclass
class ReferenceForward:
    """The reference half of one compared forward (and its float32 truth in low precision)."""
    acts: dict
    truth_acts: dict | None
    kv: dict | None
    truth_kv: dict | None
    inputs: dict                        # the reference's module inputs (layer mode feeds them to the native side)
    nat_names: list[str]                # what the native side must record
    nat_proj: list[str]

    def feeds(self, pairs: list[LayerPair], layer: bool) -> dict:
        """Layer mode: native module -> the reference's input to its counterpart."""
        return {p.native: self.inputs[p.name] for p in pairs if layer and p.name in self.inputs}


def reference_forward(setup: Setup, sides: Sides, inp: Inputs, pairs: list[LayerPair], *,
                      kv=None, overrides: dict | None = None) -> ReferenceForward:
    """Run the reference (and truth) once, recording every compared layer."""
    overrides = overrides or {}
    ref_names = [p.name for p in pairs if p.kind != "output"]
    nat_names = [p.native for p in pairs if p.kind != "output"]
    ref_proj, nat_proj = _cached_attn_names(sides.dims.depth, bool(kv or (kv is None and inp.kv_cache)))
    layer = setup.mode == "layer"
    with Recorder(sides.ref, ref_names, inputs=layer) as rrec, Recorder(sides.ref, ref_proj) as rproj:
        r_out, r_kv = refside.run(sides.ref, inp, setup.dtype, setup.device, kv_cache=kv, **overrides)
    acts = dict(rproj.outputs, **rrec.outputs, output=r_out)
    as_attn(acts, ".proj")
    truth_acts, t_kv = None, None
    if sides.truth is not None:
        # The truth sees the low-precision reference's module inputs in layer mode,
        # so its outputs are the exact counterpart of each local computation.
        with Recorder(sides.truth, ref_names) as trec, Recorder(sides.truth, ref_proj) as tproj, \
                Feeder(sides.truth, rrec.inputs if layer else {}):
            t_out, t_kv = refside.run(sides.truth, inp, torch.float32, setup.device, kv_cache=kv, **overrides)
        truth_acts = dict(tproj.outputs, **trec.outputs, output=t_out)
        as_attn(truth_acts, ".proj")
    return ReferenceForward(acts, truth_acts, r_kv, t_kv, rrec.inputs, nat_names, nat_proj)


def native_forward(setup: Setup, model, inp: Inputs, ref: ReferenceForward, pairs: list[LayerPair], *,
                   kv=None, overrides: dict | None = None) -> tuple[dict, dict | None]:
    """Run the native model once, recording what ``ref`` says -> (activations by native
    module name, returned K/V cache)."""
    feeds = ref.feeds(pairs, setup.mode == "layer")
    with Recorder(model, ref.nat_names) as nrec, Recorder(model, ref.nat_proj) as nproj, Feeder(model, feeds):
        out, n_kv = nat.run(model, inp, setup.dtype, setup.device, kv_cache=kv, **(overrides or {}))
    acts = dict(nproj.outputs, **nrec.outputs, output=out)
    as_attn(acts, ".to_out")
    return acts, n_kv


def to_rows(label: str, pairs: list[LayerPair], ref: ReferenceForward, nat_acts: dict,
            n_kv: dict | None) -> Rows:
    """Both halves as rows named after the original's layers; a returned K/V cache becomes
    rows of its own, right after the self-attention that made it."""
    rows = Rows(label, dict(ref.acts), {}, None if ref.truth_acts is None else dict(ref.truth_acts))
    for p in pairs:
        rows.native_names[p.name] = p.native
        if p.native in nat_acts:
            rows.native[p.name] = nat_acts[p.native]
    if ref.kv:
        for i in sorted(ref.kv):
            for j, kind in enumerate(("k", "v")):
                name = f"blocks.{i}.attn.kv_cache.{kind}"
                rows.native_names[name] = f"blocks.{i}.self_attn.kv_cache.{kind}"
                rows.reference[name] = ref.kv[i][j]
                if n_kv and i in n_kv:
                    rows.native[name] = n_kv[i][j]
                if rows.truth is not None:
                    rows.truth[name] = ref.truth_kv[i][j]
    return rows


def run_input(setup: Setup, sides: Sides, inp: Inputs, pairs: list[LayerPair], report: dict,
              kv_cache_frames: int = 0) -> list[Rows]:
    """Every forward of one input, both sides in this process."""
    from .sides import bsa_for
    out, ref_kv, nat_kv = [], {}, {}
    for step in plan(inp, kv_cache_frames):
        kv_ref = ref_kv.get(step.cache_from)
        kv_nat = kv_ref if setup.mode == "layer" else nat_kv.get(step.cache_from)
        with bsa_for(setup, sides, inp.bsa, report, T=step.T, num_cond_latents=step.num_cond_latents,
                     continuation=step.continuation) as bsa:
            ref = reference_forward(setup, sides, inp, pairs, kv=kv_ref, overrides=step.overrides)
            acts, n_kv = native_forward(setup, sides.native, inp, ref, pairs, kv=kv_nat, overrides=step.overrides)
        ref_kv[step.label], nat_kv[step.label] = ref.kv, n_kv
        if not step.returns_cache:
            ref.kv = None
        rows = to_rows(step.label, pairs, ref, acts, n_kv)
        rows.settings = step_settings(step, bsa)
        out.append(rows)
    return out


def step_settings(step: Step, bsa: dict | None) -> dict:
    """What one forward ran with, as the report's case settings say it."""
    return {"bsa": bsa is not None, "cond": bool(step.num_cond_latents) and not step.continuation,
            "continuation": step.continuation, "latent_frames": step.T}
