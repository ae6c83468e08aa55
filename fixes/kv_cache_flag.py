"""``kv-cache-flag-unread``: turning the K/V cache off in a video continuation.

FastVideo: ``fastvideo/pipelines/stages/longcat_kv_cache_init.py``,
``LongCatKVCacheInitStage.forward`` reads ``pipeline_config.use_kv_cache`` (not a
declared field; absent, it means True), while the LongCat pipeline config declares
``enable_kv_cache``, which no stage reads. Setting ``enable_kv_cache=False``
therefore still prefills and uses a cache the original does not build.

Fix: while that stage runs, a pipeline config without ``use_kv_cache`` answers it
with its ``enable_kv_cache``. Upstream: read ``enable_kv_cache`` in the stage.

Proven by the gate step ``parity sampling-original-sigmas-fixed traj_vc_nocache``.
"""
from __future__ import annotations

from .base import Fix, wrap_method


def _make(original):
    def forward(self, batch, fastvideo_args):
        pc = fastvideo_args.pipeline_config
        if hasattr(pc, "use_kv_cache") or not hasattr(pc, "enable_kv_cache"):
            return original(self, batch, fastvideo_args)
        pc.use_kv_cache = bool(pc.enable_kv_cache)
        try:
            return original(self, batch, fastvideo_args)
        finally:
            del pc.use_kv_cache
    return forward


def _install():
    from fastvideo.pipelines.stages.longcat_kv_cache_init import LongCatKVCacheInitStage
    return wrap_method(LongCatKVCacheInitStage, "forward", _make)


FIX = Fix("kv-cache-flag-unread", "LongCatKVCacheInitStage honours the declared enable_kv_cache", _install)
