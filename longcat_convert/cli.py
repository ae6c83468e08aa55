"""The ``longcat-convert`` command line: a thin layer over library functions.

Exit codes: 0 ok, 1 a check ran and failed (verify mismatch, tolerance
exceeded), 2 bad input or usage. The commands live in longcat_convert/commands/,
one module each, and are registered here.
"""
from __future__ import annotations

import sys

import click

from . import __version__
from .errors import invoke


class _Group(click.Group):
    """Registers the converter's commands up front and the rest only when asked for.

    The reference and parity commands import torch (about a second and ~300 MB of
    anonymous memory); `convert`, `verify`, `plan` and `export` never need it.
    """

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None:
            _register_all()
            cmd = super().get_command(ctx, name)
        return cmd

    def list_commands(self, ctx):
        _register_all()
        return super().list_commands(ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="longcat-convert")
def cli() -> None:
    """Convert LongCat-Video checkpoints to FastVideo's native layout and prove parity."""


_registered = {"convert": False, "all": False}


def _register() -> None:
    if not _registered["convert"]:
        from .commands import register as register_convert
        register_convert(cli)
        _registered["convert"] = True


def _register_all() -> None:
    _register()
    if not _registered["all"]:
        _registered["all"] = True
        from .commands import register_parity
        register_parity(cli)


def main(argv: list[str] | None = None) -> int:
    _register()
    # The console-script wrapper passes main()'s return value to sys.exit.
    return invoke(cli, argv)


if __name__ == "__main__":
    sys.exit(main())
