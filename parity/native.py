"""FastVideo's real native LongCat DiT (fastvideo==0.2.1), set up to run in a
single process on the CPU or one GPU.

fastvideo is imported lazily: the converter and the reference never need it.
The run-time adjustments below touch fastvideo internals without editing the
package; each is needed on 0.2.1 and is documented in the README.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from longcat_convert.errors import BadInput

FASTVIDEO_VERSION = "0.2.1"
_SDPA_BACKEND = "fastvideo.attention.backends.sdpa.SDPABackend"
_runtime_ready = False
_dist_dir: tempfile.TemporaryDirectory | None = None


def fastvideo_available() -> str | None:
    """None when fastvideo 0.2.1 imports; otherwise why not (for skip reasons)."""
    try:
        import importlib.metadata as md
        v = md.version("fastvideo")
    except Exception:
        return "fastvideo is not installed (run `make install`)"
    if v != FASTVIDEO_VERSION:
        return f"fastvideo {v} is installed; this tool is pinned to {FASTVIDEO_VERSION}"
    return None


def ensure_runtime() -> None:
    """Initialise FastVideo's single-process runtime once per process."""
    global _runtime_ready, _dist_dir
    if _runtime_ready:
        return
    why = fastvideo_available()
    if why:
        raise BadInput(why)
    os.environ.setdefault("FASTVIDEO_LOGGING_LEVEL", "WARNING")
    import warnings
    # Every native block enters autocast(device_type='cuda'); on a CPU torch warns each time.
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # triton prints a banner on import
        from fastvideo.platforms.cpu import CpuPlatform
        import fastvideo.distributed as fvd
        import fastvideo.layers.lora.linear as fv_lora

    # 0.2.1's CpuPlatform names no attention backend; SDPA is what it would pick.
    CpuPlatform.get_attn_backend_cls = classmethod(lambda cls, *a, **k: _SDPA_BACKEND)
    # 0.2.1 reports 'mps' as the local device on a CPU platform, which breaks LoRA merging.
    import torch
    if not torch.cuda.is_available():
        fv_lora.get_local_torch_device = lambda: torch.device("cpu")
    _dist_dir = tempfile.TemporaryDirectory(prefix="lcc-dist-")
    fvd.maybe_init_distributed_environment_and_model_parallel(
        1, 1, distributed_init_method="file://" + str(Path(_dist_dir.name) / "init"))
    _runtime_ready = True


@contextlib.contextmanager
def forward_context():
    from fastvideo.forward_context import set_forward_context
    with set_forward_context(current_timestep=0, attn_metadata=None):
        yield


def arch_kwargs(native_cfg: dict) -> dict:
    """FastVideo arch-config fields from a native transformer/config.json dict."""
    from fastvideo.configs.models.dits.longcat import LongCatVideoArchConfig
    from dataclasses import fields
    valid = {f.name for f in fields(LongCatVideoArchConfig)}
    kw = {k: v for k, v in native_cfg.items() if k in valid and not k.startswith("_")}
    if "patch_size" in kw:
        kw["patch_size"] = tuple(kw["patch_size"])
    return kw


def build_native_model(native_cfg: dict, dtype=None, device="cpu"):
    """An uninitialised ``LongCatTransformer3DModel`` for a native config dict.

    Its linears are allocated with torch.empty: load every weight before use.
    """
    ensure_runtime()
    import torch
    from fastvideo.configs.models.dits.longcat import LongCatVideoArchConfig, LongCatVideoConfig
    from fastvideo.models.dits.longcat import LongCatTransformer3DModel
    arch = LongCatVideoArchConfig(**arch_kwargs(native_cfg))
    # The wrapper config, not the arch config: cross-attention reads config.arch_config.
    model = LongCatTransformer3DModel(config=LongCatVideoConfig(arch_config=arch), hf_config={})
    model = model.to(device=device, dtype=dtype or torch.float32)
    return model.eval()
