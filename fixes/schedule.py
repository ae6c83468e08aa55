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

The original's schedule is computed in fixes/schedule_code.py, by ``longcat_input_sigmas`` and
``longcat_enhance_hf_schedule`` (torch only, nothing of reference/): the run-time fix
calls them, and the upstream patch puts the same functions into FastVideo's LongCat
pipeline config, so both forms compute the same numbers with the same code.

Run-time fixes, each a layer of its own on the stage's ``forward`` (fixes/patching.py):
- ``schedule-reshift``: a LongCat pipeline reaching the stage with no sigmas or
  timesteps of its own gets the original's sigmas before the shift
  (``ForwardBatch.sigmas``, FastVideo's public mechanism); the scheduler then shifts
  them once.
- ``use-distill-unread``: the same with the distilled sigmas when
  ``pipeline_config.use_distill`` is set.
- ``enhance-hf-unread``: after the stage, when ``pipeline_config.enhance_hf`` is set
  and the batch carries conditioning latents (video continuation), the scheduler's
  timesteps and sigmas are replaced as the original replaces them.

Upstream (the patches): two hooks of the pipeline config that the generic stage
consults, ``input_sigmas(num_inference_steps)`` (the sigmas before the shift, when the
caller gave none) and ``adjust_timesteps(scheduler, batch, timesteps)`` (after
``set_timesteps``); the LongCat config defines both.

Proven by the gate steps ``parity sampling-fixed`` of the trajectory cases (every
row within the float32 policy; ``traj_vc_cache_hf`` for enhance_hf) and
``parity pipeline-fixed pipeline_t2v``.
"""
from __future__ import annotations

import inspect

from .base import Fix, wrap_method
from .series import Edit, NewFile, Patch


def _code():
    from . import schedule_code
    return schedule_code


def _source(name: str) -> str:
    return inspect.getsource(getattr(_code(), name))


# --- the run-time fixes --------------------------------------------------------------------

def _longcat_config(fastvideo_args):
    pc = getattr(fastvideo_args, "pipeline_config", None)
    return pc if "LongCat" in type(pc).__name__ else None


def _reshift(original):
    def forward(self, batch, fastvideo_args):
        if _longcat_config(fastvideo_args) is not None and batch.sigmas is None and batch.timesteps is None:
            batch.sigmas = _code().longcat_input_sigmas(batch.num_inference_steps)
        return original(self, batch, fastvideo_args)
    return forward


def _distill(original):
    def forward(self, batch, fastvideo_args):
        pc = _longcat_config(fastvideo_args)
        if pc is not None and bool(getattr(pc, "use_distill", False)) and batch.sigmas is None \
                and batch.timesteps is None:
            batch.sigmas = _code().longcat_input_sigmas(batch.num_inference_steps, True)
        return original(self, batch, fastvideo_args)
    return forward


def _enhance_hf(original):
    def forward(self, batch, fastvideo_args):
        batch = original(self, batch, fastvideo_args)
        pc = _longcat_config(fastvideo_args)
        if pc is not None and bool(getattr(pc, "enhance_hf", False)) and int(getattr(batch, "num_cond_latents", 0)
                                                                             or 0) > 0:
            batch.timesteps, self.scheduler.sigmas = _code().longcat_enhance_hf_schedule(self.scheduler.timesteps)
            self.scheduler.timesteps = batch.timesteps
        return batch
    return forward


def _stage():
    from fastvideo.pipelines.stages.timestep_preparation import TimestepPreparationStage
    return TimestepPreparationStage


# --- the upstream patches --------------------------------------------------------------------

_STAGE = "fastvideo/pipelines/stages/timestep_preparation.py"
_CONFIG = "fastvideo/configs/pipelines/longcat.py"

RESHIFT_PATCH = Patch(
    name="schedule-reshift",
    title="LongCat: schedule from the original's sigmas, shifted once",
    description="""\
        What: the LongCat pipeline config gains `input_sigmas(num_inference_steps)`, the
        sigmas before the shift (`linspace(1, 0.001, steps)`, LongCat-Video's own schedule);
        `TimestepPreparationStage.forward` hands them to `scheduler.set_timesteps(sigmas=...)`
        when the caller gave neither sigmas nor timesteps and the pipeline config has the hook.

        Why: without sigmas the stage calls `scheduler.set_timesteps(num_inference_steps)`.
        LongCat's FlowMatchEulerDiscreteScheduler (shift 12) then spaces the timesteps between
        its already-shifted sigma_max and sigma_min and shifts them a second time: a 6-step
        schedule ends near t=126 where LongCat-Video's ends at t=11.9. LongCat-Video builds
        linspace(1, 0.001, steps) and shifts it once.

        Evidence: longcat-convert's gate, `parity sampling` of tiny-a/cases/traj_t2v_cfg: stock
        FastVideo first diverges at `schedule.timesteps` (known difference `schedule-reshift`);
        with this series every row of every trajectory case is within the float32 policy
        (`parity sampling-fixed`, run again against patched FastVideo).

        Leaves alone: pipelines without the hook, callers that pass sigmas or timesteps, the
        scheduler itself, and LongCat's refinement (LongCatRefineTimestepStage sets its own).""",
    edits=(
        Edit(_CONFIG, "umt5_postprocess_text", "", lambda: _source("longcat_input_sigmas"), where="after-scope"),
        Edit(_CONFIG, "LongCatT2V480PConfig.__post_init__", "", '''\
            def input_sigmas(self, num_inference_steps: int) -> list[float]:
                """The sigmas before the scheduler's shift, for a caller that gives none."""
                return longcat_input_sigmas(num_inference_steps)''', where="after-scope"),
        Edit(_STAGE, "TimestepPreparationStage.forward", "sigmas = batch.sigmas", '''\
            sigmas = batch.sigmas
            input_sigmas = getattr(fastvideo_args.pipeline_config, "input_sigmas", None)
            if timesteps is None and sigmas is None and input_sigmas is not None:
                # The pipeline defines its schedule by the sigmas before the shift (LongCat).
                sigmas = batch.sigmas = input_sigmas(num_inference_steps)'''),
    ),
    new_files=(NewFile("fastvideo/tests/stages/test_longcat_timestep_schedule.py", '''\
        # SPDX-License-Identifier: Apache-2.0
        """LongCat's schedule: the original's sigmas, shifted once (CPU, no download)."""
        from types import SimpleNamespace

        import pytest
        import torch

        from fastvideo.configs.pipelines.longcat import LongCatT2V480PConfig
        from fastvideo.models.schedulers.scheduling_flow_match_euler_discrete import (
            FlowMatchEulerDiscreteScheduler)
        from fastvideo.pipelines.pipeline_batch_info import ForwardBatch
        from fastvideo.pipelines.stages import timestep_preparation


        def _schedule(config, steps, monkeypatch, **batch_fields):
            monkeypatch.setattr(timestep_preparation, "get_local_torch_device", lambda: torch.device("cpu"))
            scheduler = FlowMatchEulerDiscreteScheduler(shift=12.0)
            batch = ForwardBatch(data_type="video", num_inference_steps=steps, **batch_fields)
            stage = timestep_preparation.TimestepPreparationStage(scheduler)
            batch = stage.forward(batch, SimpleNamespace(pipeline_config=config))
            return batch.timesteps, scheduler


        def _shifted_once(sigmas, shift=12.0):
            s = torch.tensor(sigmas, dtype=torch.float32)
            return shift * s / (1 + (shift - 1) * s) * 1000


        def test_longcat_schedule_is_shifted_once(monkeypatch):
            timesteps, _ = _schedule(LongCatT2V480PConfig(), 6, monkeypatch)
            expected = _shifted_once(torch.linspace(1, 0.001, 6).tolist())
            torch.testing.assert_close(timesteps.float().cpu(), expected, rtol=1e-6, atol=1e-4)
            assert float(timesteps[-1]) == pytest.approx(11.87, abs=0.01)   # stock: about 126
        '''),),
    test="fastvideo/tests/stages/test_longcat_timestep_schedule.py",
)

DISTILL_PATCH = Patch(
    name="use-distill-unread",
    title="LongCat: honour pipeline_config.use_distill (the distilled schedule)",
    description="""\
        What: `LongCatT2V480PConfig.input_sigmas` returns the distilled sigmas when
        `use_distill` is set: `steps` of the 50-step ladder (every 20th of the 1000 training
        timesteps), picked at floor(i * 50 / steps), as LongCat-Video's distilled sampling does.

        Why: `use_distill` is declared in configs/pipelines/longcat.py and read by no stage, so
        a distilled LongCat runs the full-model schedule.

        Evidence: longcat-convert's gate, `parity sampling-fixed` of
        extra/tiny-a/cases/traj_t2v_distill: every row within the float32 policy (stock:
        first divergence at `schedule.timesteps`, known difference `use-distill-unread`).

        Leaves alone: everything with `use_distill=False`; depends on the previous patch.""",
    edits=(
        Edit(_CONFIG, "LongCatT2V480PConfig.input_sigmas", "return longcat_input_sigmas(num_inference_steps)",
             "return longcat_input_sigmas(num_inference_steps, use_distill=self.use_distill)"),
    ),
    new_files=(NewFile("fastvideo/tests/stages/test_longcat_distill_schedule.py", '''\
        # SPDX-License-Identifier: Apache-2.0
        """LongCat with use_distill: the distilled schedule (CPU, no download)."""
        from types import SimpleNamespace

        import torch

        from fastvideo.configs.pipelines.longcat import LongCatT2V480PConfig
        from fastvideo.models.schedulers.scheduling_flow_match_euler_discrete import (
            FlowMatchEulerDiscreteScheduler)
        from fastvideo.pipelines.pipeline_batch_info import ForwardBatch
        from fastvideo.pipelines.stages import timestep_preparation


        def test_longcat_use_distill_takes_the_distilled_ladder(monkeypatch):
            monkeypatch.setattr(timestep_preparation, "get_local_torch_device", lambda: torch.device("cpu"))
            scheduler = FlowMatchEulerDiscreteScheduler(shift=12.0)
            config = LongCatT2V480PConfig()
            config.use_distill = True
            batch = ForwardBatch(data_type="video", num_inference_steps=4)
            timestep_preparation.TimestepPreparationStage(scheduler).forward(
                batch, SimpleNamespace(pipeline_config=config))
            # steps 4 of the 50-step ladder: 1000, 760, 500, 260 before the shift
            s = torch.tensor([1.0, 0.76, 0.5, 0.26])
            expected = 12.0 * s / (1 + 11.0 * s) * 1000
            torch.testing.assert_close(batch.timesteps.float().cpu(), expected, rtol=1e-5, atol=1e-3)
        '''),),
    test="fastvideo/tests/stages/test_longcat_distill_schedule.py",
)

ENHANCE_HF_PATCH = Patch(
    name="enhance-hf-unread",
    title="LongCat: honour pipeline_config.enhance_hf in video continuation",
    description="""\
        What: `TimestepPreparationStage.forward` lets the pipeline config adjust the timesteps
        after `set_timesteps` (`adjust_timesteps(scheduler, batch, timesteps)`, when the config
        has it); LongCat's does so for a video continuation (conditioning latents) with
        `enhance_hf`: the timesteps above 500 are kept and the rest replaced by 500, 450, ...,
        50, the scheduler's sigmas by timesteps / 1000 and a terminal 0, as LongCat-Video's
        continuation does.

        Why: `enhance_hf` is declared in configs/pipelines/longcat.py and read by no stage.

        Evidence: longcat-convert's gate, `parity sampling-fixed` of
        extra/tiny-a/cases/traj_vc_cache_hf: every row within the float32 policy (stock: the
        schedule differs from `schedule.timesteps` on, known difference `enhance-hf-unread`).

        Leaves alone: `enhance_hf=False`, text-to-video and image-to-video without
        conditioning latents, pipelines without the hook.""",
    edits=(
        Edit(_CONFIG, "longcat_input_sigmas", "", lambda: _source("longcat_enhance_hf_schedule"),
             where="after-scope"),
        Edit(_CONFIG, "LongCatT2V480PConfig.input_sigmas", "", '''\
            def adjust_timesteps(self, scheduler, batch, timesteps: torch.Tensor) -> torch.Tensor:
                """With enhance_hf, a video continuation's finer low-noise tail."""
                if not self.enhance_hf or not getattr(batch, "num_cond_latents", 0):
                    return timesteps
                timesteps, scheduler.sigmas = longcat_enhance_hf_schedule(timesteps)
                scheduler.timesteps = timesteps
                return timesteps''', where="after-scope"),
        Edit(_STAGE, "TimestepPreparationStage.forward", "batch.timesteps = timesteps", '''\
            adjust_timesteps = getattr(fastvideo_args.pipeline_config, "adjust_timesteps", None)
            if adjust_timesteps is not None:
                timesteps = adjust_timesteps(scheduler, batch, timesteps)
            batch.timesteps = timesteps'''),
    ),
    new_files=(NewFile("fastvideo/tests/stages/test_longcat_enhance_hf_schedule.py", '''\
        # SPDX-License-Identifier: Apache-2.0
        """LongCat video continuation with enhance_hf: the finer low-noise tail (CPU, no download)."""
        from types import SimpleNamespace

        import torch

        from fastvideo.configs.pipelines.longcat import LongCatT2V480PConfig
        from fastvideo.models.schedulers.scheduling_flow_match_euler_discrete import (
            FlowMatchEulerDiscreteScheduler)
        from fastvideo.pipelines.pipeline_batch_info import ForwardBatch
        from fastvideo.pipelines.stages import timestep_preparation


        def test_longcat_enhance_hf_tail(monkeypatch):
            monkeypatch.setattr(timestep_preparation, "get_local_torch_device", lambda: torch.device("cpu"))
            scheduler = FlowMatchEulerDiscreteScheduler(shift=12.0)
            config = LongCatT2V480PConfig()
            config.enhance_hf = True
            batch = ForwardBatch(data_type="video", num_inference_steps=8, sigmas=[1.0, 0.8, 0.6, 0.4, 0.2])
            batch.num_cond_latents = 1
            timestep_preparation.TimestepPreparationStage(scheduler).forward(
                batch, SimpleNamespace(pipeline_config=config))
            tail = batch.timesteps[-10:].float().cpu()
            torch.testing.assert_close(tail, torch.arange(500.0, 0.0, -50.0))
            assert bool((batch.timesteps[:-10] > 500).all())
            assert float(scheduler.sigmas[-1]) == 0.0
        '''),),
    test="fastvideo/tests/stages/test_longcat_enhance_hf_schedule.py",
)

RESHIFT = Fix("schedule-reshift", "the original's sigmas (linspace(1, 0.001, steps)) handed to the timestep stage, "
                                  "shifted once by the scheduler", lambda: wrap_method(_stage(), "forward", _reshift),
              RESHIFT_PATCH)
DISTILL = Fix("use-distill-unread", "pipeline_config.use_distill selects the original's distilled sigmas",
              lambda: wrap_method(_stage(), "forward", _distill), DISTILL_PATCH)
ENHANCE_HF = Fix("enhance-hf-unread", "pipeline_config.enhance_hf gives a video continuation the original's "
                                      "schedule (timesteps above 500, then 500, 450, ..., 50)",
                 lambda: wrap_method(_stage(), "forward", _enhance_hf), ENHANCE_HF_PATCH)
