"""``schedule-reshift`` and ``use-distill-unread``: FastVideo's schedule for LongCat.

FastVideo: ``fastvideo/pipelines/stages/timestep_preparation.py``,
``TimestepPreparationStage.forward``. Without ``batch.sigmas`` it calls
``scheduler.set_timesteps(num_inference_steps)``, and LongCat's
``FlowMatchEulerDiscreteScheduler`` spaces the timesteps between its
already-shifted ``sigma_max`` / ``sigma_min`` and shifts them again (a 6-step
schedule ends near 126 where the original's ends at 11.9). The original builds
``linspace(1, 0.001, steps)`` and shifts it once; distilled, it takes every
``1000 / steps``-th of a 1000-step ladder. ``use_distill`` is declared in
FastVideo's LongCat config and read by no stage.

Fix: when a LongCat pipeline reaches the timestep stage with no sigmas of its
own, hand the stage the original's sigmas before the shift
(``ForwardBatch.sigmas``, FastVideo's public mechanism), distilled when
``pipeline_config.use_distill`` is set and ``use-distill-unread`` is installed.
The scheduler then shifts them once, as the original does.

Proven by the gate steps ``parity sampling-fixed`` of the trajectory cases
(every row within the float32 policy) and ``parity pipeline-fixed pipeline_t2v``.
"""
from __future__ import annotations

from .base import Fix, wrap_method

_active = {"reshift": False, "distill": False}


def _original_sigmas(steps: int, distill: bool) -> list[float]:
    from reference.sampling import input_sigmas
    return input_sigmas(int(steps), distill).tolist()


def _is_longcat(args) -> bool:
    return "LongCat" in type(getattr(args, "pipeline_config", None)).__name__


def _make(original):
    def forward(self, batch, fastvideo_args):
        if getattr(batch, "sigmas", None) is None and batch.timesteps is None and _is_longcat(fastvideo_args):
            distill = _active["distill"] and bool(getattr(fastvideo_args.pipeline_config, "use_distill", False))
            if _active["reshift"] or distill:
                batch.sigmas = _original_sigmas(batch.num_inference_steps, distill)
        return original(self, batch, fastvideo_args)
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
