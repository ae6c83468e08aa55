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
from .series import Edit, NewFile, Patch


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


PATCH = Patch(
    name="kv-cache-flag-unread",
    title="LongCat: LongCatKVCacheInitStage honours the declared enable_kv_cache",
    description="""\
        What: `LongCatKVCacheInitStage.forward` reads the LongCat pipeline config's declared
        field `enable_kv_cache` when the config has no `use_kv_cache` attribute.

        Why: the stage reads `pipeline_config.use_kv_cache`, which no config declares (absent,
        it means True), while configs/pipelines/longcat.py declares `enable_kv_cache`, which no
        stage reads. Setting `enable_kv_cache=False` therefore still prefills and uses a cache
        that LongCat-Video (with its cache off) does not build.

        Evidence: longcat-convert's gate, `parity sampling-fixed` of
        extra/tiny-a/cases/traj_vc_nocache: every row within the float32 policy (stock: known
        difference `kv-cache-flag-unread`).

        Leaves alone: a config that sets `use_kv_cache` itself (it still wins), and everything
        with the cache on.""",
    edits=(Edit("fastvideo/pipelines/stages/longcat_kv_cache_init.py", "LongCatKVCacheInitStage.forward",
                "use_kv_cache = getattr(fastvideo_args.pipeline_config, 'use_kv_cache', True)", '''\
                    pipeline_config = fastvideo_args.pipeline_config
                    use_kv_cache = getattr(pipeline_config, 'use_kv_cache', getattr(pipeline_config, 'enable_kv_cache', True))'''),),
    new_files=(NewFile("fastvideo/tests/stages/test_longcat_kv_cache_flag.py", '''\
        # SPDX-License-Identifier: Apache-2.0
        """LongCat video continuation: enable_kv_cache=False builds no cache (CPU, no download)."""
        from types import SimpleNamespace

        from fastvideo.configs.pipelines.longcat import LongCatT2V480PConfig
        from fastvideo.pipelines.pipeline_batch_info import ForwardBatch
        from fastvideo.pipelines.stages.longcat_kv_cache_init import LongCatKVCacheInitStage


        def test_enable_kv_cache_false_skips_the_cache():
            config = LongCatT2V480PConfig()
            config.enable_kv_cache = False
            batch = ForwardBatch(data_type="video")
            batch = LongCatKVCacheInitStage(transformer=None).forward(batch, SimpleNamespace(pipeline_config=config))
            assert batch.use_kv_cache is False
            assert batch.kv_cache_dict == {}
        '''),),
    test="fastvideo/tests/stages/test_longcat_kv_cache_flag.py",
)
FIX = Fix(FIX.finding, FIX.summary, FIX.install, PATCH)
