"""longcat-convert convert SOURCE OUTPUT"""
from __future__ import annotations

import click

from .. import precheck
from ..convert import Options, convert
from ..progress import Reporter
from .common import emit, write_options


@click.command("convert")
@click.argument("source")
@click.argument("output", type=click.Path())
@write_options
@click.option("--no-lora", is_flag=True, help="Do not convert the LoRAs in lora/.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) when SOURCE is a repo id.")
@click.option("--workload", default="t2v", show_default=True,
              help="t2v, i2v, vc or refine: the FastVideo LongCat pipeline class model_index.json names "
                   "(LongCatPipeline, LongCatImageToVideoPipeline, LongCatVideoContinuationPipeline; "
                   "refine runs through LongCatPipeline).")
def command(source, output, dtype, max_shard_size, components, force, strict, fsync, source_sha256,
            no_hash, quiet, as_json, no_lora, revision, workload):
    """Convert a LongCat-Video checkpoint to FastVideo's native layout.

    SOURCE is a LongCat-Video model folder (with dit/), a bare dit/ folder, or a
    Hugging Face repo id such as meituan-longcat/LongCat-Video (local cache first;
    HF_HUB_OFFLINE is respected). OUTPUT must not exist (unless --force).
    """
    precheck.convert(source, output)
    opts = Options(dtype=dtype, max_shard_size=max_shard_size, components=components, loras=not no_lora,
                   force=force, strict=strict, fsync=fsync, revision=revision, source_sha256=source_sha256,
                   hash_tensors=not no_hash, workload=workload)
    summary = convert(source, output, opts, Reporter(quiet=quiet or as_json))
    try:                                # OUTPUT is complete: a Ctrl-C now only cuts the summary short
        emit(summary, as_json, f"converted {summary['tensors']} tensors ({summary['bytes'] / 1e9:.2f} GB) "
                               f"into {summary['output']} in {summary['seconds']:.1f}s")
    except KeyboardInterrupt:
        pass
    return 0
