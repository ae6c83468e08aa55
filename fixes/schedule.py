"""``schedule-reshift``, ``use-distill-unread`` and ``enhance-hf-unread``: FastVideo's
schedule for LongCat.

FastVideo: ``fastvideo/pipelines/stages/timestep_preparation.py``,
``TimestepPreparationStage.forward``. Without ``batch.sigmas`` it calls
``scheduler.set_timesteps(num_inference_steps)``, and LongCat's
``FlowMatchEulerDiscreteScheduler`` spaces the timesteps between its
already-shifted ``sigma_max`` / ``sigma_min`` and shifts them again (a 6-step
schedule ends near 126 where the original's ends at 11.9). The original builds
``linspace(1, 0.001, steps)`` and shifts it once; distilled, it takes every
``1000 / steps``-th of a 1000-step ladder. ``use_distill`` and ``enhance_hf`` are
declared in FastVideo's LongCat pipeline config (``configs/pipelines/longcat.py``)
and read by no stage. With ``enhance_hf`` the original's video continuation keeps
the shifted timesteps above 500 and replaces the rest by 500, 450, ..., 50 (sigmas
= timesteps / 1000, then 0): more, finer steps at low noise.

Fixes, all in the one stage (one wrapper, so the three install and remove in any
order):
- ``schedule-reshift``: a LongCat pipeline reaching the stage with no sigmas of its
  own gets the original's sigmas before the shift (``ForwardBatch.sigmas``,
  FastVideo's public mechanism); the scheduler then shifts them once.
- ``use-distill-unread``: the same with the distilled sigmas when
  ``pipeline_config.use_distill`` is set.
- ``enhance-hf-unread``: after the stage, when ``pipeline_config.enhance_hf`` is set
  and the batch carries conditioning latents (video continuation), the scheduler's
  timesteps and sigmas are replaced as the original replaces them -- the way
  FastVideo's own ``LongCatRefineTimestepStage`` replaces them for refinement.

Proven by the gate steps ``parity sampling-fixed`` of the trajectory cases (every
row within the float32 policy; ``traj_vc_cache_hf`` for enhance_hf) and
``parity pipeline-fixed pipeline_t2v``.
"""
from __future__ import annotations

from .base import Fix, wrap_method

_active = {"reshift": False, "distill": False, "enhance_hf": False}


def _original_sigmas(steps: int, distill: bool) -> list[float]:
    from reference.sampling import input_sigmas
    return input_sigmas(int(steps), distill).tolist()


def _is_longcat(args) -> bool:
    return "LongCat" in type(getattr(args, "pipeline_config", None)).__name__


def _enhance_hf(stage, batch) -> None:
    """Keep the timesteps above the tail's start, append the uniform tail; sigmas =
    timesteps / 1000 and a terminal 0, as the original sets them after set_timesteps."""
    import numpy as np
    import torch
    from reference.sampling import HF_TAIL_START, HF_TAIL_STEPS, NUM_TIMESTEPS
    ts = stage.scheduler.timesteps
    # The tail in float32 (numpy's linspace, as the original builds it), then on the schedule's device.
    tail = torch.from_numpy(np.linspace(HF_TAIL_START, 0, HF_TAIL_STEPS, dtype=np.float32, endpoint=False))
    ts = torch.cat([ts[ts > HF_TAIL_START], tail.to(device=ts.device, dtype=ts.dtype)])
    stage.scheduler.timesteps = ts
    stage.scheduler.sigmas = torch.cat([ts / NUM_TIMESTEPS, torch.zeros(1, device=ts.device, dtype=ts.dtype)])
    batch.timesteps = ts


def _make(original):
    def forward(self, batch, fastvideo_args):
        longcat = _is_longcat(fastvideo_args)
        pc = getattr(fastvideo_args, "pipeline_config", None)
        if getattr(batch, "sigmas", None) is None and batch.timesteps is None and longcat:
            distill = _active["distill"] and bool(getattr(pc, "use_distill", False))
            if _active["reshift"] or distill:
                batch.sigmas = _original_sigmas(batch.num_inference_steps, distill)
        batch = original(self, batch, fastvideo_args)
        if (_active["enhance_hf"] and longcat and bool(getattr(pc, "enhance_hf", False))
                and int(getattr(batch, "num_cond_latents", 0) or 0) > 0):
            _enhance_hf(self, batch)
        return batch
    return forward


_wrapped = {"undo": None}


def _install(key: str):
    from fastvideo.pipelines.stages.timestep_preparation import TimestepPreparationStage
    if _wrapped["undo"] is None:
        _wrapped["undo"] = wrap_method(TimestepPreparationStage, "forward", _make)
    _active[key] = True

    def undo() -> None:
        _active[key] = False
        if not any(_active.values()) and _wrapped["undo"] is not None:
            _wrapped["undo"]()
            _wrapped["undo"] = None
    return undo


RESHIFT = Fix("schedule-reshift", "the original's sigmas (linspace(1, 0.001, steps)) handed to the timestep stage, "
                                  "shifted once by the scheduler", lambda: _install("reshift"))
DISTILL = Fix("use-distill-unread", "pipeline_config.use_distill selects the original's distilled sigmas",
              lambda: _install("distill"))
ENHANCE_HF = Fix("enhance-hf-unread", "pipeline_config.enhance_hf gives a video continuation the original's "
                                      "schedule (timesteps above 500, then 500, 450, ..., 50)",
                 lambda: _install("enhance_hf"))
