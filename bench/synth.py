"""Synthetic checkpoints for the benchmarks, built once and cached outside the repo.

``build_checkpoint(dir, dims, dtype, shards)`` writes a LongCat-Video model folder
(``dir/dit/``: config.json, shards, index) with the table's real key names and
shapes for ``dims``; ``cached_checkpoint`` keeps one per (dtype, blocks) under
``cache_dir()`` ($LONGCAT_BENCH_CACHE, default ~/.cache/longcat-convert-bench).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from scripts.synth import REAL_DIMS, build_checkpoint as _build
from longcat_convert.table import Dims, table_hash

__all__ = ["REAL_DIMS", "build_checkpoint", "cache_dir", "cached_checkpoint", "real_dims"]


def cache_dir() -> Path:
    d = Path(os.environ.get("LONGCAT_BENCH_CACHE") or Path.home() / ".cache" / "longcat-convert-bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def real_dims(blocks: int) -> Dims:
    """The released config (hidden 4096, 32 heads, caption 4096, adaLN 512, in/out 16) with ``blocks`` blocks."""
    return dataclasses.replace(REAL_DIMS, depth=blocks)


def build_checkpoint(folder: str | Path, dims: Dims, dtype: str = "bf16", shards: int = 2) -> Path:
    return _build(folder, dims, dtype, shards, seed=0, fill="pool")


def cached_checkpoint(dtype: str, blocks: int, shards: int | None = None) -> Path:
    """A model folder for the released widths with ``blocks`` blocks, sharded like the
    release (about 5 GB per shard, at least 2 shards)."""
    dims = real_dims(blocks)
    folder = cache_dir() / f"{dtype}-{blocks}blocks"
    stamp = {"dtype": dtype, "blocks": blocks, "table": table_hash(), "shards": shards}
    marker = folder / ".complete"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    itemsize = 4 if dtype == "fp32" else 2
    from longcat_convert.table import original_shapes
    import math
    total = sum(math.prod(s) for s in original_shapes(dims).values()) * itemsize
    n = shards or max(2, math.ceil(total / 5e9))
    # in a child process, so the benchmark's own process stays small
    import subprocess
    import sys
    code = ("import sys; from bench.synth import build_checkpoint, real_dims; "
            f"build_checkpoint({str(folder)!r}, real_dims({blocks}), {dtype!r}, {n})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    marker.write_text(json.dumps(stamp))
    return folder
