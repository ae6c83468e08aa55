"""longcat-convert export NATIVE OUTPUT"""
from __future__ import annotations

import click

from ..convert import Options
from ..export import export
from ..progress import Reporter
from .common import emit, write_options


@click.command("export")
@click.argument("native")
@click.argument("output", type=click.Path())
@write_options
def command(native, output, dtype, max_shard_size, components, force, strict, fsync, source_sha256,
            no_hash, quiet, as_json):
    """Write the original LongCat-Video layout (dit/) back from a FastVideo folder.

    NATIVE is a FastVideo LongCat folder (with transformer/) or its transformer/
    folder. The result runs in the original code; original -> native -> original
    is bitwise identical.
    """
    opts = Options(dtype=dtype, max_shard_size=max_shard_size, components=components, force=force,
                   strict=strict, fsync=fsync, source_sha256=source_sha256,
                   hash_tensors=not no_hash)
    summary = export(native, output, opts, Reporter(quiet=quiet or as_json))
    try:                                # OUTPUT is complete: a Ctrl-C now only cuts the summary short
        emit(summary, as_json, f"exported {summary['tensors']} tensors ({summary['bytes'] / 1e9:.2f} GB) "
                               f"into {summary['output']} in {summary['seconds']:.1f}s")
    except KeyboardInterrupt:
        pass
    return 0
