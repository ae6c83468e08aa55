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
