"""``longcat-convert golden-check``: the reference (or the real upstream code) against golden data."""
from __future__ import annotations

from pathlib import Path

import click

from .backends import NAMES


@click.command("golden-check")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("cases", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write report.json, report.md and report.html into this folder.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "bfloat16", "float16"]), help="Model dtype.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--attention", default="sdpa", show_default=True, type=click.Choice(NAMES),
              help="Attention kernel (flash2/flash3 need flash-attn installed).")
@click.option("--reference", "reference", default="ours", show_default=True, type=click.Choice(["ours", "upstream"]),
              help="ours: the clean-room reference; upstream: the real LongCat-Video code from --upstream-path.")
@click.option("--upstream-path", type=click.Path(path_type=Path), default=None,
              help="A LongCat-Video git checkout (with --reference upstream).")
@click.option("--quiet", is_flag=True, help="Print only the verdict line.")
def golden_check_cmd(checkpoint, cases, report_dir, dtype, device, attention, reference, upstream_path, quiet):
    """Run CHECKPOINT (a model folder holding dit/, or a dit/ folder) on golden CASE files and
    compare every recorded activation. Exit 0 iff all are within tolerance, 1 otherwise."""
    from rich.console import Console

    from parity.report import print_table, write_reports

    from .check import golden_check

    report = golden_check(checkpoint, list(cases), dtype=dtype, device=device, attention=attention,
                          reference=reference, upstream_path=upstream_path)
    console = Console(stderr=True, highlight=False)
    if report_dir is not None:
        written = write_reports(report, report_dir)
    if quiet:
        verdict = "PASSED" if report["passed"] else f"FAILED (first divergent: {report['first_divergent']})"
        console.print(f"golden-check: {verdict}")
    else:
        print_table(report)
        if report_dir is not None:
            console.print("reports: " + ", ".join(str(p) for p in written))
    return 0 if report["passed"] else 1


def register(cli) -> None:
    cli.add_command(golden_check_cmd)
