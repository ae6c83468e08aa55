"""Sampling parity: the original's denoising loop (reference/sampling.py, our
reference DiT with the original weights) against FastVideo's REAL LongCat
pipeline stages (its scheduler class, its timestep preparation, its
LongCat denoising / i2v / KV-cache / video-continuation / refinement stages,
the native DiT with the converted weights), driven through a ``ForwardBatch``
that holds the case's latents and text embeddings.

Nothing of FastVideo's loop runs on our side: the stages run as its pipelines
run them. We only observe: forward hooks on the native transformer record
what each DiT call received and returned (and its wall time), and a wrapper
around the scheduler instance's ``step`` records what it received and returned.

Stages per workload (FastVideo's pipeline classes, minus text encoding, VAE
encoding/decoding and latent preparation, whose results the case supplies):

  t2v     TimestepPreparationStage -> LongCatDenoisingStage
  i2v     TimestepPreparationStage -> LongCatRefineTimestepStage (no-op) -> LongCatI2VDenoisingStage
  vc      TimestepPreparationStage -> LongCatKVCacheInitStage -> LongCatVCDenoisingStage
  refine  TimestepPreparationStage -> LongCatRefineTimestepStage -> LongCatDenoisingStage
          (LongCatI2VDenoisingStage with conditioning frames, as in its i2v pipeline)

Two run-time adjustments (fastvideo 0.2.1 on a CPU; README "Sampling parity"):
the stages ask ``get_local_torch_device()``, which answers ``mps`` on a CPU
platform, so the stage modules' name is pointed at the CPU; and the denoising
stages hand the DiT bfloat16 latents whatever the model's dtype, relying on
CUDA autocast to let them meet float32 weights. Without CUDA that autocast is
off and the patch embedding fails, so a float32 native model gets a pre-hook
that casts those inputs back to float32 AFTER the stage rounded them: the
rounding, which is FastVideo's, stays visible in the comparison.
"""
from __future__ import annotations

import contextlib
import io
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longcat_convert.errors import BadInput

from . import native as nat
from . import report as R
from .policy import dtype_name
from .trajectory import TrajectoryCase, judge_rows

SIGMAS = ("fastvideo", "original")


@dataclass
class LoopCase:
    """One sampling comparison: the loop settings and what it starts from."""
    name: str
    settings: object                          # reference.sampling.Settings
    inputs: object                            # reference.sampling.Inputs
    loras: list[tuple[str, float]] = field(default_factory=list)
    description: str = ""
    golden: dict = field(default_factory=dict)
    bsa: dict | None = None                   # block-sparse attention on both sides (parity/inputs.py)


def from_trajectory(case: TrajectoryCase, model_dir: Path | None) -> LoopCase:
    return LoopCase(case.name, case.settings(model_dir), case.loop_inputs(), case.loras(), case.description,
                    dict(case.expected), case.bsa())


def generate(dims, settings, *, shape=(3, 4, 6), text_len=12, valid=None, batch=1, seed=0,
             name="generated") -> LoopCase:
    """Seeded loop inputs: noise latents (clean-looking conditioning frames are
    just more noise here), positive and negative text with ``valid`` tokens."""
    from reference.sampling import Inputs
    from .inputs import generate as generate_forward
    fwd = generate_forward(dims, shape=shape, text_len=text_len, valid=valid, batch=batch, seed=seed, name=name)
    g = torch.Generator().manual_seed(seed + 1)
    neg = torch.randn(fwd.encoder_hidden_states.shape, generator=g)
    inp = Inputs(latents=fwd.hidden_states, prompt_embeds=fwd.encoder_hidden_states,
                 prompt_attention_mask=fwd.encoder_attention_mask,
                 negative_prompt_embeds=neg if settings.cfg else None,
                 negative_prompt_attention_mask=fwd.encoder_attention_mask.clone() if settings.cfg else None)
    s = settings
    desc = (f"generated {s.mode}: latents {list(fwd.hidden_states.shape)}, {s.steps} steps, guidance "
            f"{s.guidance_scale}, shift {s.scheduler.shift}, seed {seed}")
    return LoopCase(name, settings, inp, description=desc)


# --------------------------------------------------------------------- reference side

class _Timed:
    """A DiT callable that keeps the wall time of each denoising call (not the cache prefill)."""

    def __init__(self, dit, device):
        self.dit, self.device, self.seconds = dit, torch.device(device), []

    def __call__(self, **kw):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.dit(**kw)
        _sync(self.device)
        if not kw.get("return_kv"):
            self.seconds.append(time.perf_counter() - t0)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_reference(model, case: LoopCase, *, dtype, device) -> tuple[dict, list[float]]:
    from reference.sampling import sample
    rows: dict = {}
    timed = _Timed(model, device)

    def record(name, t):
        rows[name] = t.detach().float().cpu().clone()
    with torch.no_grad():
        sample(timed, case.settings, case.inputs, dtype=dtype, device=device, record=record)
    return rows, timed.seconds


# --------------------------------------------------------------------- native side

def _stage_classes(mode: str, num_cond_latents: int = 0) -> list:
    from fastvideo.pipelines.stages.longcat_denoising import LongCatDenoisingStage
    from fastvideo.pipelines.stages.longcat_i2v_denoising import LongCatI2VDenoisingStage
    from fastvideo.pipelines.stages.longcat_kv_cache_init import LongCatKVCacheInitStage
    from fastvideo.pipelines.stages.longcat_refine_timestep import LongCatRefineTimestepStage
    from fastvideo.pipelines.stages.longcat_vc_denoising import LongCatVCDenoisingStage
    from fastvideo.pipelines.stages.timestep_preparation import TimestepPreparationStage
    return {
        "t2v": [TimestepPreparationStage, LongCatDenoisingStage],
        "i2v": [TimestepPreparationStage, LongCatRefineTimestepStage, LongCatI2VDenoisingStage],
        "vc": [TimestepPreparationStage, LongCatKVCacheInitStage, LongCatVCDenoisingStage],
        # Refinement from a stage-1 video alone goes through FastVideo's t2v pipeline; with
        # conditioning frames (refining a continuation) through its i2v pipeline.
        "refine": [TimestepPreparationStage, LongCatRefineTimestepStage,
                   LongCatI2VDenoisingStage if num_cond_latents else LongCatDenoisingStage],
    }[mode]


def _point_stages_at(device: torch.device) -> None:
    """0.2.1's stages place tensors on get_local_torch_device(), 'mps' on a CPU platform."""
    if device.type == "cuda":
        return
    import fastvideo.pipelines.stages.longcat_refine_timestep as refine_ts
    import fastvideo.pipelines.stages.timestep_preparation as ts
    for mod in (ts, refine_ts):
        mod.get_local_torch_device = lambda: device


def native_scheduler(converted: Path | None, settings, args):
    """FastVideo's scheduler: loaded by its own SchedulerLoader from CONVERTED/scheduler
    when the bundle has one, else its registered class built from the case's config."""
    sched_dir = None
    if converted is not None:
        root = converted.parent if converted.name == "transformer" else converted
        if (root / "scheduler" / "scheduler_config.json").is_file():
            sched_dir = root / "scheduler"
    if sched_dir is not None:
        from fastvideo.models.loader.component_loader import SchedulerLoader
        return SchedulerLoader().load(str(sched_dir), args)
    from fastvideo.models.registry import ModelRegistry
    cls, _ = ModelRegistry.resolve_model_cls("FlowMatchEulerDiscreteScheduler")
    return cls(shift=settings.scheduler.shift, num_train_timesteps=settings.scheduler.num_train_timesteps)


class _Observer:
    """Records a native loop through hooks: what each DiT call and each scheduler step saw."""

    def __init__(self, model, scheduler, device):
        self.rows: dict = {}
        self.seconds: list[float] = []
        self.step = 0
        self.device = torch.device(device)
        self._t0 = 0.0
        self._handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         model.register_forward_hook(self._post, with_kwargs=True)]
        dtype = next(model.parameters()).dtype
        if dtype == torch.float32 and self.device.type != "cuda":
            # After the recording hook: the DiT gets float32 copies of the bfloat16
            # latents/text the stage handed it (what CUDA autocast would let through).
            self._handles.append(model.register_forward_pre_hook(_cast_inputs_to(dtype), with_kwargs=True))
        self._scheduler = scheduler
        original_step = scheduler.step

        def step(model_output, timestep, sample, *a, **k):
            out = original_step(model_output, timestep, sample, *a, **k)
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            self._put(f"step.{self.step}.noise_pred", model_output)
            self._put(f"step.{self.step}.latents", prev)
            self.step += 1
            return out
        scheduler.step = step        # an instance attribute: the class and other instances are untouched

    def _put(self, name, t):
        self.rows[name] = t.detach().float().cpu().clone()

    def _pre(self, _mod, _args, kw):
        if not kw.get("return_kv"):
            self._put(f"step.{self.step}.timestep", kw["timestep"])
            self._put(f"step.{self.step}.dit_in", kw["hidden_states"])
        _sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, _mod, _args, kw, out):
        _sync(self.device)
        if kw.get("return_kv"):
            for i, (k, v) in sorted(out[1].items()):
                self._put(f"kv_cache.{i}.k", k)
                self._put(f"kv_cache.{i}.v", v)
            return
        self.seconds.append(time.perf_counter() - self._t0)
        self._put(f"step.{self.step}.dit_out", out[0] if isinstance(out, tuple) else out)

    def close(self):
        for h in self._handles:
            h.remove()
        del self._scheduler.step


def _cast_inputs_to(dtype):
    def hook(_mod, args, kw):
        for k in ("hidden_states", "encoder_hidden_states"):
            if torch.is_tensor(kw.get(k)) and kw[k].is_floating_point():
                kw[k] = kw[k].to(dtype)
        return args, kw
    return hook


def run_native(model, case: LoopCase, *, dtype, device, sigmas: str = "fastvideo",
               converted: Path | None = None) -> tuple[dict, list[float], list[str]]:
    """FastVideo's stages for the case's workload -> (rows, seconds per DiT call, notes)."""
    if sigmas not in SIGMAS:
        raise BadInput(f"--sigmas {sigmas!r}: choose {' or '.join(SIGMAS)}")
    nat.ensure_runtime()
    from fastvideo.configs.pipelines.longcat import LongCatT2V480PConfig
    from fastvideo.fastvideo_args import FastVideoArgs
    from fastvideo.pipelines.pipeline_batch_info import ForwardBatch
    from reference.sampling import input_sigmas

    s, inp = case.settings, case.inputs
    device = torch.device(device)
    _point_stages_at(device)
    args = FastVideoArgs(model_path=str(converted or "."), pipeline_config=LongCatT2V480PConfig())
    args.model_loaded["transformer"] = True          # the stages use the model we hand them
    notes = []
    if s.mode == "vc" and not s.use_kv_cache:
        # The public switch. 0.2.1's KV-cache stage reads a different attribute
        # (use_kv_cache, default on), so this does not turn the cache off.
        args.pipeline_config.enable_kv_cache = False
        notes.append("vc without KV cache: FastVideo's config field enable_kv_cache=False is set, but its "
                     "LongCatKVCacheInitStage reads pipeline_config.use_kv_cache (not a declared field, default "
                     "True), so the native loop still prefills and uses the cache")
    scheduler = native_scheduler(converted, s, args)

    def text(t):   # FastVideo's text stage hands [B, N, C] embeddings in the DiT's precision
        return t.to(device=device, dtype=dtype)[:, 0] if t.dim() == 4 else t.to(device=device, dtype=dtype)
    kw = dict(data_type="video", generator=torch.Generator().manual_seed(0), num_inference_steps=s.steps,
              guidance_scale=s.guidance_scale if s.cfg else 1.0, latents=inp.latents.to(device, torch.float32).clone(),
              prompt_embeds=[text(inp.prompt_embeds)], prompt_attention_mask=[inp.prompt_attention_mask.to(device)],
              t_thresh=s.t_thresh)
    if s.cfg:
        kw.update(negative_prompt_embeds=[text(inp.negative_prompt_embeds)],
                  negative_attention_mask=[inp.negative_prompt_attention_mask.to(device)])
    batch = ForwardBatch(**kw)
    if s.mode != "t2v":
        batch.num_cond_latents = s.num_cond_latents   # what FastVideo's VAE-encoding stages would set
    if s.mode == "refine":
        # The refinement timestep stage acts only when a stage-1 video is named; the
        # stage that would encode it is replaced by the case's prepared latents.
        batch.refine_from = str(case.name)
    if sigmas == "original":
        # The public mechanism: SamplingParam.sigmas -> ForwardBatch.sigmas, shifted by FastVideo's scheduler.
        batch.sigmas = input_sigmas(s.steps, s.use_distill and s.mode != "refine").tolist()
        notes.append("--sigmas original: FastVideo was handed the original's sigmas (before the shift) through "
                     "ForwardBatch.sigmas")
    if s.use_distill:
        notes.append("use_distill: FastVideo 0.2.1 declares the flag in its LongCat config but no stage reads it")
    if s.enhance_hf:
        notes.append("enhance_hf: FastVideo 0.2.1 declares the flag in its LongCat config but no stage reads it")

    obs = _Observer(model, scheduler, device)
    try:
        # The stages draw tqdm progress bars on stderr; the report is what this tool prints.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            for cls in _stage_classes(s.mode, s.num_cond_latents):
                if cls.__name__ == "LongCatKVCacheInitStage":
                    stage = cls(transformer=model)
                elif "Denoising" in cls.__name__:
                    stage = cls(transformer=model, scheduler=scheduler)
                else:
                    stage = cls(scheduler=scheduler)
                batch = stage(batch, args)
                if cls.__name__ in ("TimestepPreparationStage", "LongCatRefineTimestepStage"):
                    obs._put("timesteps", batch.timesteps)
                    obs._put("sigmas", scheduler.sigmas)
    finally:
        obs.close()
    obs._put("output.latents", batch.latents)
    return obs.rows, obs.seconds, notes


# --------------------------------------------------------------------- the comparison

def _median_ms(seconds: list[float]) -> float | None:
    return round(1000 * statistics.median(seconds), 3) if seconds else None


def run_sampling(setup, cases: list[LoopCase], *, sigmas: str = "fastvideo", title: str | None = None) -> dict:
    """The sampling-parity report: every row of every case, in loop order."""
    from .runner import LOW_PRECISION, bsa_for, by_loras, load_sides
    if sigmas not in SIGMAS:
        raise BadInput(f"--sigmas {sigmas!r}: choose {' or '.join(SIGMAS)}")
    dname = dtype_name(setup.dtype)
    env = R.environment(setup.device, dname, setup.attention)
    report = R.new_report("parity", title or f"LongCat sampling parity ({dname}, {setup.device}, sigmas {sigmas})",
                          mode="sampling", policy=setup.policy, dtype=setup.dtype, device=setup.device, env=env)
    report["timing"] = []
    lowp = setup.dtype if setup.dtype in LOW_PRECISION else None
    for loras, group in by_loras(setup, cases).items():
        sides = load_sides(setup, loras)
        report["notes"] += [n for n in sides.notes if n not in report["notes"]]
        for case in group:
            T = case.inputs.latents.shape[2]
            with bsa_for(setup, sides, case, report, T=T, num_cond_latents=case.settings.num_cond_latents):
                ref, ref_s = run_reference(sides.ref, case, dtype=setup.dtype, device=setup.device)
                truth = None
                if sides.truth is not None:
                    truth, _ = run_reference(sides.truth, case, dtype=torch.float32, device=setup.device)
                got, nat_s, notes = run_native(sides.native, case, dtype=setup.dtype, device=setup.device,
                                               sigmas=sigmas, converted=Path(setup.converted))
            report["notes"] += [n for n in notes if n not in report["notes"]]
            judge_rows(report, case.name, got, ref, policy=setup.policy, dtype=setup.dtype, device=setup.device,
                       truth=truth, lowp_dtype=lowp, names=("native pipeline", "reference"))
            r_ms, n_ms = _median_ms(ref_s), _median_ms(nat_s)
            report["timing"].append({
                "case": case.name, "dit_calls": {"reference": len(ref_s), "native": len(nat_s)},
                "reference_ms_per_dit_call": r_ms, "native_ms_per_dit_call": n_ms,
                "native_over_reference": round(n_ms / r_ms, 3) if r_ms and n_ms else None})
    report["notes"].append("sampling rows: timesteps/sigmas as the loop starts, then per step what the DiT received "
                           "and returned and what the Euler step received and returned (noise_pred/latents: the "
                           "noisy frames only where a loop steps a slice); timing: median wall time per denoising "
                           "DiT call, CFG batch included")
    return R.finalize(report)

