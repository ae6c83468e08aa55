"""``bf16-dit-input``: the DiT's input precision in FastVideo's LongCat denoising stages.

FastVideo: ``fastvideo/pipelines/stages/longcat_denoising.py``
(``LongCatDenoisingStage.forward``), ``longcat_i2v_denoising.py`` and
``longcat_vc_denoising.py``: ``target_dtype = torch.bfloat16``, hard-coded (their
comment: an FSDP-wrapped model loaded in float32 computes in bf16), and the
latents and timestep are cast to it before every DiT call, with CUDA autocast to
bf16 around the call. A float32 model therefore never sees float32 input: at
float32 this rounding is the first difference from the original once the schedule
agrees (relative L2 1.6e-3 at ``step.0.dit_in``).

Fix: ``target_dtype`` is the transformer's parameter dtype. Mechanism, without
touching FastVideo's code: while one of these stages runs, the name ``torch`` in
its module answers ``bfloat16`` with that dtype (everything else is torch
itself); in bf16 nothing changes. Upstream, the change is one line per stage:
``target_dtype = next(self.transformer.parameters()).dtype`` (or the pipeline
config's ``dit_precision``, which also covers the FSDP case the comment names).

Proven by the gate steps ``parity sampling-original-sigmas-fixed`` (every row of
every trajectory case within the float32 policy).
"""
from __future__ import annotations

import contextvars
import types

from .base import Fix, undo_all, wrap_method
from .series import Edit, NewFile, Patch

_MODULES = ("fastvideo.pipelines.stages.longcat_denoising", "fastvideo.pipelines.stages.longcat_i2v_denoising",
            "fastvideo.pipelines.stages.longcat_vc_denoising")
_STAGES = ("LongCatDenoisingStage", "LongCatI2VDenoisingStage", "LongCatVCDenoisingStage")
_DTYPE = contextvars.ContextVar("longcat_dit_dtype", default=None)     # None: outside a stage


class _TorchWithModelDtype(types.ModuleType):
    """``torch`` (or the layer under this one), except that ``bfloat16`` is the running
    stage's model dtype."""

    def __init__(self, under):
        super().__init__("torch")
        self._under = under

    def __getattr__(self, name):
        if name == "bfloat16":
            return _DTYPE.get() or self._under.bfloat16
        return getattr(self._under, name)


def proxy_over(under):
    return _TorchWithModelDtype(under)


def _make(original):
    def forward(self, batch, fastvideo_args):
        token = _DTYPE.set(next(self.transformer.parameters()).dtype)
        try:
            return original(self, batch, fastvideo_args)
        finally:
            _DTYPE.reset(token)
    return forward


def _install():
    import importlib
    undo = []
    for mod_name, cls_name in zip(_MODULES, _STAGES):
        mod = importlib.import_module(mod_name)
        undo.append(wrap_method(mod, "torch", proxy_over, key="bf16-dit-input"))
        undo.append(wrap_method(getattr(mod, cls_name), "forward", _make))
    return undo_all(undo)


FIX = Fix("bf16-dit-input", "the LongCat denoising stages hand the DiT input in the model's dtype, not a hard-coded "
                            "bfloat16", _install)


_TARGET = "target_dtype = torch.bfloat16"
_OURS = "target_dtype = next(self.transformer.parameters()).dtype  # the DiT's own precision"

PATCH = Patch(
    name="bf16-dit-input",
    title="LongCat: denoising stages hand the DiT its input in the DiT's dtype",
    description="""\
        What: the three LongCat denoising stages (`LongCatDenoisingStage`,
        `LongCatI2VDenoisingStage`, `LongCatVCDenoisingStage`) take `target_dtype` from the
        transformer's parameters instead of a hard-coded `torch.bfloat16`; the latents and the
        timestep are cast to it and CUDA autocast follows it, as before.

        Why: with `target_dtype = torch.bfloat16` a float32 LongCat never sees float32 input:
        every step rounds the latents and the timestep to bf16 first. Once the schedule agrees,
        this rounding is the first difference from LongCat-Video at float32 (relative L2 1.6e-3 at
        `step.0.dit_in`). The stages' comment names an FSDP case (a model loaded in float32 whose
        sharded submodules compute in bf16); there the parameters FSDP exposes hold that dtype.

        Evidence: longcat-convert's gate, `parity sampling-original-sigmas-fixed` and
        `sampling-fixed` of every trajectory case: every row within the float32 policy.

        Leaves alone: bf16 models (unchanged: the parameter dtype is bf16), the scheduler step,
        the CFG arithmetic.""",
    edits=tuple(Edit(f"fastvideo/pipelines/stages/{f}.py", f"{c}.forward", _TARGET, _OURS)
                for f, c in zip(("longcat_denoising", "longcat_i2v_denoising", "longcat_vc_denoising"), _STAGES)),
    new_files=(NewFile("fastvideo/tests/stages/test_longcat_denoising_dtype.py", '''\
        # SPDX-License-Identifier: Apache-2.0
        """LongCat denoising: a float32 DiT gets float32 input (CPU, no download)."""
        from types import SimpleNamespace

        import torch

        from fastvideo.models.schedulers.scheduling_flow_match_euler_discrete import (
            FlowMatchEulerDiscreteScheduler)
        from fastvideo.pipelines.pipeline_batch_info import ForwardBatch
        from fastvideo.pipelines.stages.longcat_denoising import LongCatDenoisingStage


        class _RecordingDiT(torch.nn.Module):

            def __init__(self):
                super().__init__()
                self.scale = torch.nn.Parameter(torch.ones(1))
                self.seen = []

            def forward(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask=None):
                self.seen.append((hidden_states.dtype, timestep.dtype))
                return hidden_states * self.scale


        def test_float32_dit_gets_float32_input():
            dit = _RecordingDiT()
            scheduler = FlowMatchEulerDiscreteScheduler(shift=12.0)
            scheduler.set_timesteps(sigmas=[1.0, 0.5], device="cpu")
            batch = ForwardBatch(data_type="video", latents=torch.randn(1, 2, 1, 2, 2), timesteps=scheduler.timesteps,
                                 prompt_embeds=[torch.zeros(1, 3, 4)], do_classifier_free_guidance=False)
            args = SimpleNamespace(model_loaded={"transformer": True}, disable_autocast=False)
            # Built without __init__: its attention-backend lookup is not what this test is about.
            stage = LongCatDenoisingStage.__new__(LongCatDenoisingStage)
            stage.transformer, stage.scheduler, stage.pipeline = dit, scheduler, None
            stage.forward(batch, args)
            assert dit.seen and all(d == (torch.float32, torch.float32) for d in dit.seen)
        '''),),
    test="fastvideo/tests/stages/test_longcat_denoising_dtype.py",
)
FIX = Fix(FIX.finding, FIX.summary, FIX.install, PATCH)
