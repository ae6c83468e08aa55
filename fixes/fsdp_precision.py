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
from .series import Edit, NewFile, Patch


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


_LOADER = "fastvideo/models/loader/component_loader.py"

PATCH = Patch(
    name="fsdp-bf16-params",
    title="FSDP inference computes the DiT in the precision asked (dit_precision), not bfloat16",
    description="""\
        What: `TransformerLoader.load` hands `maybe_load_fsdp_model` the requested precision
        (`default_dtype`, from `dit_precision`) as the mixed-precision policy's `param_dtype`, and
        that precision, never below float32, as its `reduce_dtype`, when it loads for FSDP
        inference (`use_fsdp_inference` on, `training_mode` off). Training and every load without
        FSDP inference keep bfloat16 and float32, as before.

        Why: the call writes `param_dtype=torch.bfloat16, reduce_dtype=torch.float32` whatever
        `dit_precision` says ("TODO: make these configurable"); `fully_shard` applies the policy,
        so with `use_fsdp_inference=True` at `dit_precision=fp32` every wrapped block computes
        with bfloat16 copies of its float32 parameters. On a GPU the stages' CUDA autocast hides
        the mixed dtypes and the DiT silently runs in bf16; on a CPU the bfloat16 parameters meet
        float32 input and the first DiT call fails ("Input type (float) and bias type
        (c10::BFloat16)"). LongCat-Video computes in the precision it loads.

        Evidence: longcat-convert's feature matrix on 2 gloo processes (`features`, row
        `use_fsdp_inference`): stock, both ranks crash (the policy's param_dtype is bfloat16); with
        this change every row of both ranks equals the one-process run bit for bit (`exact`).
        Gate steps `features` / `features-patched` of the tiny bundle.

        Leaves alone: training (bf16 compute, float32 reduction), bf16 inference (unchanged:
        bfloat16 and float32), `output_dtype`, the loads without FSDP.""",
    edits=(
        Edit(_LOADER, "TransformerLoader.load", "model = maybe_load_fsdp_model(", """\
            # FSDP inference computes in the precision asked (dit_precision): its mixed-precision
            # policy keeps the parameters in that dtype and reduces in it, never below float32.
            fsdp_inference = fastvideo_args.use_fsdp_inference and not fastvideo_args.training_mode""",
             where="before"),
        Edit(_LOADER, "TransformerLoader.load", "param_dtype=torch.bfloat16,",
             "param_dtype=default_dtype if fsdp_inference else torch.bfloat16,"),
        Edit(_LOADER, "TransformerLoader.load", "reduce_dtype=torch.float32,",
             "reduce_dtype=torch.promote_types(default_dtype, torch.float32) if fsdp_inference else torch.float32,"),
    ),
    new_files=(NewFile("fastvideo/tests/loader/test_longcat_fsdp_inference_dtype.py", '''\
        # SPDX-License-Identifier: Apache-2.0
        """FSDP inference loads the DiT's mixed-precision policy in the precision asked (CPU, no
        download: a config-only model folder; the FSDP load itself is stopped where it starts)."""
        import json

        import pytest
        import torch
        from safetensors.torch import save_file

        from fastvideo.attention import selector
        from fastvideo.configs.pipelines.longcat import LongCatT2V480PConfig
        from fastvideo.fastvideo_args import FastVideoArgs
        from fastvideo.models.loader import component_loader
        from fastvideo.platforms.cpu import CpuPlatform


        class _Stop(Exception):
            pass


        @pytest.mark.parametrize("precision, fsdp, param, reduce", [
            ("fp32", True, torch.float32, torch.float32),
            ("bf16", True, torch.bfloat16, torch.float32),
            ("fp32", False, torch.bfloat16, torch.float32),
        ])
        def test_fsdp_inference_policy_follows_dit_precision(tmp_path, monkeypatch, precision, fsdp, param, reduce):
            # On a CPU the platform names no attention backend; SDPA is the one it would use.
            monkeypatch.setattr(CpuPlatform, "get_attn_backend_cls",
                                classmethod(lambda cls, *a, **k: "fastvideo.attention.backends.sdpa.SDPABackend"))
            selector._cached_get_attn_backend.cache_clear()
            (tmp_path / "config.json").write_text(json.dumps({"_class_name": "LongCatTransformer3DModel"}))
            save_file({"unused": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
            seen = {}

            def load(**kwargs):
                seen.update(kwargs)
                raise _Stop

            monkeypatch.setattr(component_loader, "maybe_load_fsdp_model", load)
            config = LongCatT2V480PConfig()
            config.dit_precision = precision
            # Layerwise offload (on by default) turns FSDP inference off: FSDP users turn it off.
            args = FastVideoArgs(model_path=str(tmp_path), pipeline_config=config, use_fsdp_inference=fsdp,
                                 dit_layerwise_offload=False)
            assert args.use_fsdp_inference is fsdp
            with pytest.raises(_Stop):
                component_loader.TransformerLoader().load(str(tmp_path), args)
            assert (seen["param_dtype"], seen["reduce_dtype"]) == (param, reduce)
        '''),),
    test="fastvideo/tests/loader/test_longcat_fsdp_inference_dtype.py",
)

FIX = Fix("fsdp-bf16-params", "FSDP inference keeps the DiT in the requested precision: the MixedPrecisionPolicy's "
                              "param_dtype (and reduce_dtype, never below float32) from dit_precision, not a "
                              "hard-coded bfloat16", _install, PATCH)
