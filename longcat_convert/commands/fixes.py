"""The ``fixes`` commands: our fixes of FastVideo's LongCat as a patch series (fixes/series.py).

- ``fixes export DEST [--against DIR]``: the series as NNNN-<fix>.patch, computed against the
  FastVideo tree DIR (the folder holding ``fastvideo/``; default: the installed package's).
- ``fixes build DEST [--against DIR] [--series SERIES]``: a patched copy of DIR's FastVideo in
  DEST (``PYTHONPATH=DEST`` runs it); with ``--series`` the .patch files there are applied with
  ``patch -p1`` instead of the series computed here. DIR is only read.
- ``fixes list``: the fixes and their patches.

Neither imports torch or FastVideo.
"""
from __future__ import annotations

from pathlib import Path

import click


def installed_root() -> Path:
    """The folder that holds the importable ``fastvideo`` package (found, not imported)."""
    import importlib.util
    from longcat_convert.errors import BadInput
    spec = importlib.util.find_spec("fastvideo")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("fastvideo is not installed; pass --against DIR (the folder that holds fastvideo/)")
    return Path(list(spec.submodule_search_locations)[0]).parent


@click.group("fixes")
def fixes_group() -> None:
    """Our fixes of FastVideo's LongCat as a patch series FastVideo can merge (docs/fixes.md)."""


_AGAINST = click.option("--against", "against", type=click.Path(path_type=Path), default=None,
                        help="FastVideo source tree: the folder that holds fastvideo/ (default: the installed "
                             "package's).")


_QUIET = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")


@fixes_group.command("export")
@click.argument("dest", type=click.Path(path_type=Path))
@_AGAINST
@_QUIET
def export_cmd(dest: Path, against: Path | None, quiet: bool) -> int:
    """Write the series into DEST as NNNN-<fix>.patch (apply with patch -p1 or git apply in DIR)."""
    from fixes import series
    root = against or installed_root()
    results = series.series(root)                    # every refusal before anything is written
    dest.mkdir(parents=True, exist_ok=True)
    for r in results:
        (dest / r.filename).write_text(r.text)
        if not quiet:
            click.echo(str(dest / r.filename))
    if not quiet:
        click.echo(f"{len(results)} patches against {root} (FastVideo {series.fastvideo_version(root)})", err=True)
    return 0


@fixes_group.command("build")
@click.argument("dest", type=click.Path(path_type=Path))
@_AGAINST
@click.option("--series", "series_dir", type=click.Path(path_type=Path), default=None,
              help="Apply these NNNN-*.patch files (patch -p1) instead of computing the series.")
@_QUIET
def build_cmd(dest: Path, against: Path | None, series_dir: Path | None, quiet: bool) -> int:
    """A patched COPY of FastVideo in DEST/fastvideo; run it with PYTHONPATH=DEST."""
    from fixes import series
    root = against or installed_root()
    info = series.build_patched(dest, root, series_dir=series_dir)
    if not quiet:
            click.echo(f"{dest / 'fastvideo'}: FastVideo {info['version']} from {info['source']} with "
                   f"{len(info['patches'])} patches: {', '.join(info['fixes'])}")
    return 0


@fixes_group.command("list")
@click.option("-q", "--quiet", is_flag=True, help="The fix names only, one a line.")
def list_cmd(quiet: bool) -> int:
    """The fixes, the finding each closes, and its patch's FastVideo test."""
    import fixes
    for n, f in fixes.FIXES.items():
        test = f.patch.test if f.patch is not None else "(run-time only)"
        click.echo(n if quiet else f"{n}\t{f.finding}\t{test}")
    return 0


command = fixes_group
