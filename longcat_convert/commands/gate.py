"""The ``gate`` command: the CI parity gate over a golden folder (parity/gate.py)."""
from __future__ import annotations

from pathlib import Path

import click

from parity.gate import DEFAULT_GOLDEN, load_manifest, plan_steps, run_step, write_junit


GOLDEN = Path("golden")          # relative: the working folder's golden/, as the README writes it


@click.command("gate")
@click.option("--golden", type=click.Path(path_type=Path), default=None,
              help="Golden folder with gate.json and the model folders it names  [default: ./golden in the working "
                   "folder].")
@click.option("--bundled", is_flag=True,
              help="Run the golden matrix that comes with the tool (golden/ beside the installed package) instead "
                   "of ./golden; not with --golden.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=Path("reports/gate"),
              show_default=True, help="Where converted models, step reports, summary.md and junit.xml go.")
@click.option("--junit", type=click.Path(path_type=Path), default=None, help="JUnit XML path (default REPORT/junit.xml).")
@click.option("--known", "known_file", type=click.Path(path_type=Path), default=None,
              help="Known-differences catalogue the manifest's ids refer to (default: the one shipped; docs/ci.md).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress line per step on stderr; the table of steps and the verdict line still print.")
def gate_cmd(golden: Path | None, bundled: bool, report_dir: Path, junit: Path | None, known_file: Path | None,
             quiet: bool):
    """Run the whole golden matrix: convert, verify, golden-check and parity for every case.

    GOLDEN is ./golden in the working folder unless --golden or --bundled says otherwise."""
    from longcat_convert import precheck
    from longcat_convert.errors import BadInput
    if bundled and golden is not None:
        raise BadInput("--bundled with --golden: give one (--bundled runs the matrix installed with the tool)")
    golden = DEFAULT_GOLDEN if bundled else (golden if golden is not None else GOLDEN)
    precheck.gate(golden, report_dir, junit, known_file)       # before any step runs
    from rich.console import Console
    from rich.table import Table
    import os
    console = Console(stderr=True, width=None if os.isatty(2) else 160)       # progress
    out = Console(width=None if os.isatty(1) else 160)                        # the result
    manifest = load_manifest(golden)
    steps = plan_steps(golden, report_dir, manifest, known_file)
    root = click.get_current_context().find_root().command
    # A CI's step summary gets the gate's own table at the end, not every step's report
    # (a known difference's report says FAILED while the gate counts it as reproduced).
    ci_summary = os.environ.pop("GITHUB_STEP_SUMMARY", None)
    try:
        for s in steps:
            if not quiet:
                console.print(f"[dim]gate:[/] {s.model}: {s.name} ...")
            run_step(s, root)
    finally:
        if ci_summary is not None:
            os.environ["GITHUB_STEP_SUMMARY"] = ci_summary
    t = Table(title="longcat-convert gate")
    for c in ("model", "step", "result", "seconds", "detail"):
        t.add_column(c)
    for s in steps:
        t.add_row(s.model, s.name, "[green]pass[/]" if s.ok else "[bold red]FAIL[/]", f"{s.seconds:.1f}", s.message)
    out.print(t)
    junit = junit or report_dir / "junit.xml"
    write_junit(steps, junit)
    failed = [s for s in steps if not s.ok]

    def verdict(s) -> str:
        return "**FAIL**" if not s.ok else ("known difference, reproduced" if s.expect else "pass")
    lines = [f"### longcat-convert gate: {'PASSED' if not failed else 'FAILED'} "
             f"({len(steps) - len(failed)} of {len(steps)} steps)", "",
             "| model | step | result | detail |", "|---|---|---|---|"]
    lines += [f"| {s.model} | {s.name} | {verdict(s)} | {s.message} |" for s in steps]
    text = "\n".join(lines) + "\n"
    (report_dir / "summary.md").write_text(text)
    if ci_summary:
        with open(ci_summary, "a") as f:
            f.write(text)
    out.print(f"gate: {len(steps) - len(failed)} passed, {len(failed)} failed  (JUnit: {junit})")
    return 1 if failed else 0
