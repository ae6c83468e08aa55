"""``fsdp-bf16-params``: the precision FSDP inference computes the DiT in.

FastVideo: ``fastvideo/models/loader/component_loader.py:1137`` (``TransformerLoader.load``) calls
``maybe_load_fsdp_model(..., default_dtype=<dit_precision>, param_dtype=torch.bfloat16,
reduce_dtype=torch.float32, ...)``, the dtypes written into the call (their comment: "make these
configurable"). ``maybe_load_fsdp_model`` (models/loader/fsdp_load.py) builds its
``MixedPrecisionPolicy`` from them and ``fully_shard`` applies it, so with
``use_fsdp_inference=True`` the parameters are stored in the requested precision but every
wrapped module computes with bfloat16 copies: at ``dit_precision=fp32`` FSDP lowers the DiT's
precision to bfloat16. (On a GPU, the stages' CUDA autocast hides the mixed dtypes; on a CPU
the bfloat16 parameters meet float32 input and the first DiT call fails.)

Fix: for an FSDP inference load (``fsdp_inference`` true, ``training_mode`` false) the policy's ``param_dtype`` is the
requested precision (``default_dtype``, from ``dit_precision``) and ``reduce_dtype`` the
requested precision, never below float32 (unchanged in bfloat16, where FastVideo reduces in
float32). Mechanism, without touching FastVideo's code: the name ``maybe_load_fsdp_model``
that component_loader looks up is a wrapper that sets these two keywords and calls the
original. Upstream, the change is the call's two arguments:
``param_dtype=default_dtype, reduce_dtype=torch.promote_types(default_dtype, torch.float32)``
for inference.

Proven by tests/test_fsdp.py (stock: the policy's param_dtype is bfloat16 where float32 was
asked; fixed: float32, and the FSDP run's rows agree with one process within the float32 policy).
"""
from __future__ import annotations

from . import patching
from .base import Fix


def _make(original):
    def maybe_load_fsdp_model(*args, **kwargs):
        import torch
        requested = kwargs.get("default_dtype")
        if requested is not None and kwargs.get("fsdp_inference") and not kwargs.get("training_mode", True):
            kwargs["param_dtype"] = requested
            kwargs["reduce_dtype"] = torch.promote_types(requested, torch.float32)
        return original(*args, **kwargs)
    maybe_load_fsdp_model.lcc_fix = "fsdp-bf16-params"
    return maybe_load_fsdp_model


def _install():
    import fastvideo.models.loader.component_loader as cl
    return patching.wrap(cl, "maybe_load_fsdp_model", _make, key="fsdp-bf16-params")


FIX = Fix("fsdp-bf16-params", "FSDP inference keeps the DiT in the requested precision: the MixedPrecisionPolicy's "
                              "param_dtype (and reduce_dtype, never below float32) from dit_precision, not a "
                              "hard-coded bfloat16", _install)
