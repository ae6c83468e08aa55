"""longcat-convert verify SOURCE OUTPUT"""
from __future__ import annotations

import click

from ..progress import Reporter
from ..verify import verify
from .common import emit


@click.command("verify")
@click.argument("source")
@click.argument("output", type=click.Path())
@click.option("--revision", default=None, help="Hub revision when SOURCE is a repo id.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def command(source, output, revision, quiet, as_json):
    """Check that OUTPUT is, bitwise, the conversion of SOURCE.

    Re-reads both sides: every tensor, the config, model_index.json, every LoRA
    and the copied components. Exit 0 when exact, 1 when not (naming the keys).
    Works for `convert` outputs and (SOURCE = the native folder) `export` outputs.
    """
    summary = verify(source, output, revision=revision, reporter=Reporter(quiet=quiet or as_json))
    emit(summary, as_json, f"verified: {summary['tensors']} tensors ({summary['bytes'] / 1e9:.2f} GB) "
                           f"and {len(summary['loras'])} LoRA file(s) match, bit for bit")
    return 0
