"""The ``gate`` command: the CI parity gate over a golden folder (parity/gate.py)."""
from __future__ import annotations

from pathlib import Path

import click

from longcat_convert.errors import BadInput

from parity.gate import DEFAULT_GOLDEN, load_manifest, plan_steps, run_step, steps_per_model, write_junit


def parse_threads(spec: str) -> tuple[int, ...]:
    """``auto`` -> 1, the machine's cores, twice that; else a comma list of positive counts."""
    import os
    if spec == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return tuple(dict.fromkeys((1, cores, 2 * cores)))
    try:
        out = tuple(dict.fromkeys(int(x) for x in spec.split(",")))
    except ValueError:
        out = ()
    if not out or any(n < 1 for n in out):
        raise BadInput(f"--threads {spec!r}: auto, or thread counts like 1,2,4")
    return out


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
@click.option("--threads", "threads_spec", default="auto", show_default=True, metavar="auto|N[,N...]",
              help="Torch thread counts every float-comparing step runs at; its verdict, first divergent row "
                   "and pinned sizes must be the same at each. auto: 1, the machine's cores and twice that "
                   "(oversubscribed).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress line per step on stderr; the table of steps and the verdict line still print.")
def gate_cmd(golden: Path | None, bundled: bool, report_dir: Path, junit: Path | None, known_file: Path | None,
             threads_spec: str, quiet: bool):
    """Run the whole golden matrix: convert, verify, golden-check and parity for every case.

    GOLDEN is ./golden in the working folder unless --golden or --bundled says otherwise."""
    from longcat_convert import precheck
    if bundled and golden is not None:
        raise BadInput("--bundled with --golden: give one (--bundled runs the matrix installed with the tool)")
    golden = DEFAULT_GOLDEN if bundled else (golden if golden is not None else GOLDEN)
    threads = parse_threads(threads_spec)
    precheck.gate(golden, report_dir, junit, known_file)       # before any step runs
    from rich.console import Console
    from rich.table import Table
    import os
    console = Console(stderr=True, width=None if os.isatty(2) else 160)       # progress
    out = Console(width=None if os.isatty(1) else 160)                        # the result
    manifest = load_manifest(golden)
    steps = plan_steps(golden, report_dir, manifest, known_file)
    if not quiet:
        console.print("[dim]gate:[/] " + ", ".join(f"{m}: {n} steps" for m, n in steps_per_model(steps).items())
                      + f"; float-comparing steps at {', '.join(map(str, threads))} threads", highlight=False)
    root = click.get_current_context().find_root().command
    # A CI's step summary gets the gate's own table at the end, not every step's report
    # (a known difference's report says FAILED while the gate counts it as reproduced).
    ci_summary = os.environ.pop("GITHUB_STEP_SUMMARY", None)
    try:
        for s in steps:
            if not quiet:
                console.print(f"[dim]gate:[/] {s.model}: {s.name} ...")
            run_step(s, root, threads)
    finally:
        if ci_summary is not None:
            os.environ["GITHUB_STEP_SUMMARY"] = ci_summary
    t = Table(title="longcat-convert gate")
    for c in ("model", "step", "result", "seconds", "detail"):
        t.add_column(c)
    for s in steps:
        t.add_row(s.model, s.name, "[green]pass[/]" if s.ok else "[bold red]FAIL[/]", f"{s.seconds:.1f}", s.message)
    out.print(t)
    smallest = sorted((m for s in steps for m in s.margins), key=lambda m: m["room"])[:10]
    margin_lines = [f"{m['model']}: {m['step']}: {m['pin']} ({m['row']}): room {m['room']:.3g} ({m['detail']}"
                    f"{', at ' + str(m['threads']) + ' threads' if m.get('threads') else ''})"
                    + (f" -- holds: {m['held']}" if m["held"] else "") for m in smallest]
    out.print("smallest margins (room: the factor a pin can move by before its verdict flips; fragile below 3):")
    for line in margin_lines:
        out.print("  " + line, highlight=False, markup=False)
    junit = junit or report_dir / "junit.xml"
    write_junit(steps, junit)
    failed = [s for s in steps if not s.ok]

    def verdict(s) -> str:
        return "**FAIL**" if not s.ok else ("known difference, reproduced" if s.expect else "pass")
    lines = [f"### longcat-convert gate: {'PASSED' if not failed else 'FAILED'} "
             f"({len(steps) - len(failed)} of {len(steps)} steps)", "",
             "| model | step | result | detail |", "|---|---|---|---|"]
    lines += [f"| {s.model} | {s.name} | {verdict(s)} | {s.message} |" for s in steps]
    lines += ["", "Steps per model: " + ", ".join(f"{m} {n}" for m, n in steps_per_model(steps).items())
              + f"; float-comparing steps ran at {', '.join(map(str, threads))} threads.", "",
              "Smallest margins (room: the factor a pin can move by before its verdict flips; fragile below 3):", ""]
    lines += [f"- {line}" for line in margin_lines]
    import json as _json
    (report_dir / "margins.json").write_text(_json.dumps([m for s in steps for m in s.margins], indent=1,
                                                         default=str) + "\n")
    text = "\n".join(lines) + "\n"
    (report_dir / "summary.md").write_text(text)
    if ci_summary:
        with open(ci_summary, "a") as f:
            f.write(text)
    out.print(f"gate: {len(steps) - len(failed)} passed, {len(failed)} failed  (JUnit: {junit})")
    return 1 if failed else 0
