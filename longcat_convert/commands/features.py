"""The ``features`` command: FastVideo's own runtime features, one row per feature and
setting, each a FastVideo run judged against the same run without it (parity/features.py)."""
from __future__ import annotations

from pathlib import Path

import click

from longcat_convert import dtypes

from .parity import DEVICE_OPTION


@click.command("features")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("converted", type=click.Path(path_type=Path))
@click.option("--case", "case_path", type=click.Path(path_type=Path), default=None,
              help="A pipeline case (golden/tiny-bundle/cases/pipeline_t2v.safetensors); run shortened to "
                   "2 steps and 5 frames. Default: generated pipeline settings.")
@click.option("--only", multiple=True, help="Run only this feature (FastVideo's field or method name, or "
                                            "NAME=SETTING); repeatable.")
@click.option("--fastvideo", "overrides", multiple=True, metavar="KEY=VALUE",
              help="A FastVideoArgs / PipelineConfig / SamplingParam field applied to every run, baselines "
                   "included; repeatable.")
@click.option("--dtype", type=click.Choice(dtypes.CHOICES), default="fp32", show_default=True,
              help=f"Every component's precision in the baseline (dit_precision, vae_precision, "
                   f"text_encoder_precisions): {dtypes.HELP}.")
@click.option("--device", **DEVICE_OPTION)
@click.option("--tolerances", type=click.Path(path_type=Path), default=None, help="Tolerance policy file.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write report.json, report.md and report.html here.")
@click.option("--fixes", "fixes_spec", default=None, metavar="all|NAME,...",
              help="Every run (baselines included) with our corrections of FastVideo's LongCat port installed "
                   "(docs/fixes.md): all, or names.")
@click.option("--pins", "pins_path", type=click.Path(path_type=Path), default=None,
              help="A JSON file of the verdicts this matrix must reproduce ({\"verdicts\": {\"FEATURE=SETTING\": "
                   "verdict}}): the headline says what changed, and any change exits 1.")
@click.option("-q", "--quiet", is_flag=True, help="Print the headline and the report paths only.")
def features_cmd(source, converted, case_path, only, overrides, dtype, device, tolerances, report_dir, fixes_spec,
                 pins_path, quiet):
    """The FastVideo feature matrix: every offload flag, FSDP, both compile paths, attention
    backends, transformer_quant, enable_teacache, VAE tiling, the precision fields and LoRA
    through FastVideo's own loading, each run through build_pipeline on CONVERTED (a whole
    model folder) and judged against the same run without it and against the reference
    (SOURCE). Results on stdout, progress on stderr. Exit 0 when the matrix ran (verdicts are
    findings, docs/features.md), 1 when a verdict differs from --pins, 2 on bad input or when the
    baseline run itself fails."""
    from longcat_convert import precheck
    precheck.features(source, converted, case=case_path, device_name=device, tolerances=tolerances,
                      report=report_dir, fixes_spec=fixes_spec, dtype=dtype, overrides=overrides)  # inputs first
    from parity.known import Catalogue
    from parity.verdicts import load_pins
    pins = load_pins(pins_path) if pins_path is not None else None     # torch-free: still before the run
    catalogue = Catalogue.load()                                          # its findings tag the matrix's
    from parity.native import prepare_process
    prepare_process(device)                    # the run's environment, before anything imports triton
    import fixes
    from rich.console import Console
    from parity import features, render
    from parity.overrides import parse_overrides
    from parity.policy import Policy
    from reference.loading import parse_device
    parse_device(device)
    err = Console(stderr=True, highlight=False)
    from parity import native as nat
    fix_names = fixes.parse(fixes_spec)
    with nat.fixes_installed(fix_names, device):
        report = features.features_report(
            source, converted, policy=Policy.load(tolerances), dtype=dtypes.torch_dtype(dtype), device=device,
            case_path=case_path, only=tuple(only), overrides=parse_overrides(overrides),
            progress=None if quiet else (lambda s: err.print(f"[dim]features: {s}[/dim]")), pins=pins)
    if fix_names:
        report["fixes"] = fixes.describe(fix_names)
        report["title"] += f" with fixes: {', '.join(fix_names)}"
    if fixes.in_fastvideo():            # a patched copy (fixes build): its patches, named in the environment too
        report["patched_fastvideo"] = fixes.describe(fixes.in_fastvideo())
        report["title"] += " on patched FastVideo"
    from parity import known
    known.annotate(report, catalogue)   # the catalogue's findings this matrix shows (features_findings)
    written = render.write_reports(report, report_dir) if report_dir is not None else []
    out = Console(highlight=False, soft_wrap=True)          # results on stdout; progress on stderr
    if not quiet:
        out.print("verdicts: " + "; ".join(f"{v}: {w}" for v, w in report["legend"].items()), markup=False)
        for line in render.features_lines(report):
            out.print(line, markup=False)
    out.print(f"features: {report['headline']} in {report['features_wall_s']} s", markup=False)
    if written:
        out.print("reports: " + ", ".join(str(p) for p in written), markup=False)
    return 0 if report["passed"] else 1
