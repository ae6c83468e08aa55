"""Options shared by the converter commands and the --json summary."""
from __future__ import annotations

import json

import click

from ..components import MODES
from ..dtypes import CHOICES as DTYPE_CHOICES, HELP as DTYPE_HELP
from ..writer import DEFAULT_MAX_SHARD


def write_options(f):
    """--dtype, --max-shard-size, --components, --force, --strict, --no-fsync, --source-sha256,
    --no-hash, --quiet, --json."""
    opts = [
        click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default=None,
                     help=f"Cast floating-point tensors to {DTYPE_HELP} (default: keep each tensor's dtype)."),
        click.option("--max-shard-size", default=DEFAULT_MAX_SHARD, show_default=True,
                     help="Largest output shard, e.g. 5GB, 500MB, 2GiB."),
        click.option("--components", type=click.Choice(MODES), default="copy", show_default=True,
                     help="vae/, text_encoder/, tokenizer/, scheduler/: copy, hard-link or leave out."),
        click.option("--force", is_flag=True, help="Replace OUTPUT if it exists."),
        click.option("--strict", is_flag=True, help="Fail on NaN/Inf values instead of warning."),
        click.option("--fsync/--no-fsync", default=True, show_default=True,
                     help="Flush OUTPUT to disk before it is renamed into place."),
        click.option("--source-sha256", is_flag=True,
                     help="Also record the plain sha256 of every source shard (one more pass)."),
        click.option("--no-hash", is_flag=True,
                     help="Skip the sha256 of every output tensor in conversion.json (the slowest part "
                          "of a copy); verify still compares every byte."),
        click.option("--quiet", "-q", is_flag=True, help="No progress output."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def emit(summary: dict, as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(text, err=True)
