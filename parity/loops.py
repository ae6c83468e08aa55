"""The loop sides of sampling parity: the original's denoising loop (reference/sampling.py, our
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

Two run-time adjustments (fastvideo 0.2.1 on a CPU; docs/sampling-parity.md):
the stages ask ``get_local_torch_device()``, which answers ``mps`` on a CPU
platform, so it is pointed at the CPU (``native.point_fastvideo_at``); and the denoising
stages hand the DiT bfloat16 latents whatever the model's dtype, relying on
CUDA autocast to let them meet float32 weights. Without CUDA that autocast is
off and the patch embedding fails, so a float32 native model gets a pre-hook
that casts those inputs back to float32 AFTER the stage rounded them: the
rounding, which is FastVideo's, stays visible in the comparison.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

import fixes
from longcat_convert.errors import BadInput

from . import native as nat
from .capture import LoopObserver, TimedDiT
from .cases import LoopCase
from .setup import converted_root

SIGMAS = ("fastvideo", "original")


def check_sigmas(sigmas: str) -> None:
    if sigmas not in SIGMAS:
        raise BadInput(f"--sigmas {sigmas!r}: choose {' or '.join(SIGMAS)}")


# --------------------------------------------------------------------- the original's loop

def run_reference(model, case: LoopCase, *, dtype, device) -> tuple[dict, list[float]]:
    from reference.sampling import sample
    rows: dict = {}
    timed = TimedDiT(model, device)

    def record(name, t):
        rows[name] = t.detach().float().cpu().clone()
    with torch.no_grad():
        sample(timed, case.settings, case.inputs, dtype=dtype, device=device, record=record)
    return rows, timed.seconds



# --------------------------------------------------------------------- FastVideo's stages

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


def native_scheduler(converted: Path | None, settings, args):
    """FastVideo's scheduler: loaded by its own SchedulerLoader from CONVERTED/scheduler
    when the bundle has one, else its registered class built from the case's config."""
    sched_dir = None
    if converted is not None:
        root = converted_root(converted)
        if (root / "scheduler" / "scheduler_config.json").is_file():
            sched_dir = root / "scheduler"
    if sched_dir is not None:
        from fastvideo.models.loader.component_loader import SchedulerLoader
        return SchedulerLoader().load(str(sched_dir), args)
    from fastvideo.models.registry import ModelRegistry
    cls, _ = ModelRegistry.resolve_model_cls("FlowMatchEulerDiscreteScheduler")
    return cls(shift=settings.scheduler.shift, num_train_timesteps=settings.scheduler.num_train_timesteps)


def run_native(model, case: LoopCase, *, dtype, device, sigmas: str = "fastvideo",
               converted: Path | None = None) -> tuple[dict, list[float], list[str]]:
    """FastVideo's stages for the case's workload -> (rows, seconds per DiT call, notes)."""
    check_sigmas(sigmas)
    nat.ensure_runtime()
    from fastvideo.configs.pipelines.longcat import LongCatT2V480PConfig
    from fastvideo.fastvideo_args import FastVideoArgs
    from fastvideo.pipelines.pipeline_batch_info import ForwardBatch
    from reference.sampling import input_sigmas

    s, inp = case.settings, case.inputs
    device = torch.device(device)
    nat.point_fastvideo_at(device)
    args = FastVideoArgs(model_path=str(converted or "."), pipeline_config=LongCatT2V480PConfig())
    args.model_loaded["transformer"] = True          # the stages use the model we hand them
    # The loop's switches, where a FastVideo user sets them: its LongCat pipeline config.
    args.pipeline_config.use_distill = bool(s.use_distill)
    args.pipeline_config.enhance_hf = bool(s.enhance_hf)
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
    fixed = set(fixes.active())
    for flag, on, fix in (("use_distill", s.use_distill, "use-distill-unread"),
                          ("enhance_hf", s.enhance_hf, "enhance-hf-unread")):
        if on:
            notes.append(f"{flag}: FastVideo 0.2.1 declares the flag in its LongCat config but no stage reads it"
                         + (f" (read here by the fix {fix})" if fix in fixed else ""))

    obs = LoopObserver(model, scheduler, device)
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
                    obs.put("timesteps", batch.timesteps)
                    obs.put("sigmas", scheduler.sigmas)
    finally:
        obs.close()
    obs.put("output.latents", batch.latents)
    return obs.rows, obs.seconds, notes


