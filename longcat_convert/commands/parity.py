"""The ``parity`` and ``golden-check`` commands: options in, a mode of parity/modes.py
or parity/golden_check.py run, the report written and shown."""
from __future__ import annotations

from pathlib import Path

import click

from longcat_convert import dtypes
from longcat_convert.checks.flags import DEVICE_HELP, ints, lora_spec

QUIET_HELP = "Print only the verdict line (and errors); the libraries' logs and progress bars silenced."
DEVICE_OPTION = dict(default="cpu", show_default=True, help=f"Where both sides run: {DEVICE_HELP}.")
DTYPE_HELP = f"Both sides' precision: {dtypes.HELP}."


def quiet_option(f):
    """-q/--quiet, worded the same on every command that judges."""
    return click.option("--quiet", "-q", is_flag=True, help=QUIET_HELP)(f)


def quiet_libraries() -> None:
    """--quiet: the libraries a run loads (transformers, diffusers, huggingface_hub, FastVideo,
    their tqdm bars) say nothing but errors; set before they are imported."""
    import logging
    import os
    for k, v in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                 ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TQDM_DISABLE", "1"),
                 ("FASTVIDEO_LOGGING_LEVEL", "ERROR"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ[k] = v
    for name in ("transformers", "diffusers", "huggingface_hub", "fastvideo", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Progress bars that ignore all of the above (FastVideo's shard loading passes its own
    # disable=): this command's Python-level stderr is held until it ends, when click closes
    # the context; errors are printed after that, on the real stderr.
    import contextlib
    import io
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.with_resource(contextlib.redirect_stderr(io.StringIO()))


@click.command("parity")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("converted", type=click.Path(path_type=Path))
@click.option("--mode", type=click.Choice(["e2e", "layer", "blocks", "sampling"]), default="e2e", show_default=True,
              help="e2e: each model on its own activations; layer: native modules fed the reference's inputs; "
                   "blocks: one block of each model in memory at a time (real-size checkpoints); sampling: the "
                   "original's denoising loop vs FastVideo's LongCat pipeline stages, step by step.")
@click.option("--case", "cases", multiple=True, type=click.Path(path_type=Path),
              help="Golden case (.safetensors with .json beside it); repeatable. Trajectory cases with --mode "
                   "sampling. Without it, inputs are generated.")
@click.option("--shape", default="3,4,6", show_default=True, help="Generated latent T,H,W.")
@click.option("--text-len", default=12, show_default=True, help="Generated text tokens.")
@click.option("--valid", default=None, help="Valid text tokens, one number or one per sample (default: all).")
@click.option("--batch", default=1, show_default=True)
@click.option("--timestep", default=700.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--num-cond-latents", default=None, type=int,
              help="Image-to-video / continuation / refinement: clean leading latent frames (default 0; "
                   "sampling: 1 for i2v, 2 for vc).")
@click.option("--kv-cache-frames", default=0, show_default=True,
              help="Video continuation: encode this many leading frames into a K/V cache, then continue.")
@click.option("--lora", "loras", multiple=True,
              help="NAME[:MULTIPLIER]: a LoRA in SOURCE/lora (converted copy in CONVERTED/lora/NAME); repeatable, "
                   "several apply at once. Replaces the LoRAs a case names.")
@click.option("--lora-multiplier", default=1.0, show_default=True, help="Multiplier of a --lora given without one.")
@click.option("--bsa-sparsity", default=None,
              help="Generated inputs: block-sparse attention on both sides with this sparsity (or 'none': CDF only). "
                   "Any --bsa-* flag switches BSA on; keys not given come from SOURCE's config.json bsa_params.")
@click.option("--bsa-cdf", default=None, type=float, help="Generated inputs, BSA: the CDF threshold.")
@click.option("--bsa-chunk-q", default=None, help="Generated inputs, BSA: query chunk T,H,W (e.g. 4,4,4).")
@click.option("--bsa-chunk-k", default=None, help="Generated inputs, BSA: key chunk T,H,W.")
@click.option("--loop", type=click.Choice(["t2v", "i2v", "vc", "refine"]), default="t2v", show_default=True,
              help="Sampling, generated inputs: which of the original's loops.")
@click.option("--steps", default=4, show_default=True, help="Sampling, generated inputs: inference steps.")
@click.option("--guidance", default=4.0, show_default=True,
              help="Sampling, generated inputs: guidance scale (CFG-zero* when > 1; refinement never).")
@click.option("--shift", default=12.0, show_default=True,
              help="Sampling, generated inputs without SOURCE/scheduler: the scheduler's shift.")
@click.option("--distill", is_flag=True, help="Sampling, generated inputs: the distilled schedule.")
@click.option("--enhance-hf", is_flag=True, help="Sampling, generated vc inputs: the uniform high-frequency tail.")
@click.option("--no-kv-cache", is_flag=True, help="Sampling, generated vc inputs: continue without the K/V cache.")
@click.option("--t-thresh", default=0.5, show_default=True, help="Sampling, generated refine inputs: t_thresh.")
@click.option("--component", type=click.Choice(["text_encoder", "vae", "pipeline"]), default=None,
              help="Compare one component instead of the DiT: the original text encoder / VAE vs the ones "
                   "FastVideo loads from CONVERTED, or the whole pipeline from prompt to frames (FastVideo's "
                   "LongCat pipeline vs the original); --case takes component cases (golden/tiny-bundle/cases).")
@click.option("--sigmas", type=click.Choice(["fastvideo", "original"]), default="fastvideo", show_default=True,
              help="Sampling: the schedule FastVideo gets. fastvideo: what its timestep stage makes of the step "
                   "count; original: the original's sigmas, handed over through ForwardBatch.sigmas.")
@click.option("--sp", default=None, type=int,
              help="Sequence parallelism: the native side runs under FastVideo's own SP in N processes (gloo on a "
                   "CPU, NCCL on N GPUs) plus a 1-process baseline; every rank is compared, and the report gives "
                   "each rank's attention work, time and memory against the baseline (e2e, layer and sampling modes).")
@click.option("--sp-timeout", default=600.0, show_default=True,
              help="--sp: seconds the baseline, then the N ranks, may take before their processes are killed.")
@click.option("--sp-start", type=click.Choice(["auto", "fork", "spawn"]), default="auto", show_default=True,
              help="--sp: fork this process (the CPU default: FastVideo imported once) or spawn "
                   "`python -m parity.sp_worker` per rank (always on CUDA).")
@click.option("--dtype", type=click.Choice(dtypes.CHOICES), default="fp32", show_default=True, help=DTYPE_HELP)
@click.option("--device", **DEVICE_OPTION)
@click.option("--attention", default="sdpa", show_default=True,
              type=click.Choice(["sdpa", "math", "flash2", "flash3"]),
              help="The reference's attention kernel (flash2/flash3 need flash-attn installed).")
@click.option("--tolerances", type=click.Path(path_type=Path), default=None, help="Tolerance policy file.")
@click.option("--expect", "expect", multiple=True, metavar="KNOWN_ID",
              help="A known difference this run must reproduce (repeatable): exit 0 when, and only when, every "
                   "failing case is one of them and each reproduces.")
@click.option("--known", "known_file", type=click.Path(path_type=Path), default=None,
              help="Known-differences catalogue (default: the one shipped; format in docs/ci.md).")
@click.option("--fixes", "fixes_spec", default=None, metavar="all|NAME,...",
              help="Run FastVideo with our corrections of its LongCat port installed: all, or names (each "
                   "named after the known difference it closes; the list: docs/fixes.md).")
@click.option("--no-stock-run", "no_stock_run", is_flag=True,
              help="--component pipeline --fixes: skip the second, stock FastVideo run whose frames the report "
                   "shows beside the fixed run's (pictures and a PSNR line only; it is never judged).")
@click.option("--fastvideo", "fastvideo", multiple=True, metavar="KEY=VALUE",
              help="A FastVideoArgs / PipelineConfig field for FastVideo's side, applied as FastVideo applies it "
                   "(docs/features.md); repeatable.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write report.json, report.md and report.html here.")
@quiet_option
def parity_cmd(source, converted, **o):
    """Run the reference (original weights, SOURCE) and FastVideo's native model
    (converted weights, CONVERTED) on the same inputs and compare every layer
    (or, with --mode sampling, every step of the denoising loop).

    Exit 0 when every layer is within tolerance, 1 when not, 2 on bad input."""
    from longcat_convert import precheck
    precheck.parity(source, converted, o)      # inputs checked first: before torch or FastVideo is imported
    from parity.native import prepare_process
    prepare_process(o["device"])               # the run's environment, before anything imports triton
    from parity import modes
    from parity.policy import Policy
    from parity.setup import Setup
    from reference.loading import parse_device

    if o["quiet"]:
        quiet_libraries()
    import fixes
    fix_names = fixes.parse(o["fixes_spec"])            # checked by precheck.parity; here the names
    mode = o["mode"]
    setup = Setup(source=source, converted=converted, dtype=dtypes.torch_dtype(o["dtype"]), device=o["device"],
                  attention=o["attention"], mode=mode, loras=tuple(lora_spec(s, o["lora_multiplier"]) for s in o["loras"]),
                  policy=Policy.load(o["tolerances"]))
    parse_device(o["device"])
    in_pipeline = o["component"] == "pipeline"             # the pipeline installs them around its fixed run
    if fix_names and not in_pipeline:                     # installed for this command, removed after it
        from parity import native as nat
        click.get_current_context().with_resource(nat.fixes_installed(fix_names, o["device"]))
    from parity.features import check_parity_overrides, record_parity_overrides
    setup.fastvideo = check_parity_overrides(o["fastvideo"], mode=mode, component=o["component"], sp=o["sp"])
    if o["component"] is not None:
        report = modes.component_parity(setup, o["component"], o["cases"], seed=o["seed"], sigmas=o["sigmas"],
                                        fix_names=fix_names if in_pipeline else (),
                                        stock_run=not o["no_stock_run"])
    elif o["sp"] is not None and mode == "sampling":
        report = modes.sp_sampling_parity(setup, _loop_cases(source, o), sp_size=o["sp"], sigmas=o["sigmas"],
                                 timeout=o["sp_timeout"], start=o["sp_start"])
    elif o["sp"] is not None:
        report = modes.sp_parity(setup, _forward_inputs(source, o), sp_size=o["sp"], kv_cache_frames=o["kv_cache_frames"],
                               timeout=o["sp_timeout"], start=o["sp_start"])
    elif mode == "sampling":
        report = modes.sampling_parity(setup, _loop_cases(source, o), sigmas=o["sigmas"])
    elif mode == "blocks":
        report = modes.blocks_parity(setup, _forward_inputs(source, o))
    else:
        report = modes.forward_parity(setup, _forward_inputs(source, o), kv_cache_frames=o["kv_cache_frames"])
    record_parity_overrides(report, setup.fastvideo, setup.built)
    if fix_names:
        report["fixes"] = fixes.describe(fix_names)
        report["title"] += f" with fixes: {', '.join(fix_names)}"
    if fixes.in_fastvideo():            # a patched copy (fixes build): its patches, named in the environment too
        report["patched_fastvideo"] = fixes.describe(fixes.in_fastvideo())
        report["title"] += " on patched FastVideo"
    return _finish(report, o["report_dir"], o["quiet"], "parity", known_file=o["known_file"],
                   expect=list(o["expect"]))


def _generated_text(o) -> dict:
    vals = ints("--valid", o["valid"]) if o["valid"] else None
    return dict(shape=tuple(ints("--shape", o["shape"], 3)), text_len=o["text_len"],
                valid=(vals[0] if vals and len(vals) == 1 else vals), batch=o["batch"], seed=o["seed"])


def _forward_inputs(source, o) -> list:
    from parity.cases import load_dit
    from parity.inputs import bsa_from_flags, generate
    if o["cases"]:                        # their kind checked first (longcat_convert/checks/cases.py)
        return [load_dit(c) for c in o["cases"]]
    bsa = bsa_from_flags(o["bsa_sparsity"], o["bsa_cdf"], o["bsa_chunk_q"], o["bsa_chunk_k"])
    from parity import refside
    return [generate(refside.source_dims(source), timestep=o["timestep"], num_cond_latents=o["num_cond_latents"] or 0,
                     bsa=bsa, **_generated_text(o))]


def _loop_cases(source, o) -> list:
    """--mode sampling: the trajectory cases, or one generated loop."""
    from parity import refside
    from parity.cases import from_trajectory, generate_loop, load_trajectory
    model_dir = refside.model_folder(source)
    if o["cases"]:                        # their kind checked first (longcat_convert/checks/cases.py)
        cases = [from_trajectory(load_trajectory(c), model_dir) for c in o["cases"]]
    else:
        from reference.sampling import SchedulerConfig, Settings
        sched_file = model_dir / "scheduler" / "scheduler_config.json" if model_dir else None
        sched = (SchedulerConfig.from_file(sched_file) if sched_file and sched_file.is_file()
                 else SchedulerConfig(shift=o["shift"]))
        ncl = o["num_cond_latents"]
        if ncl is None:
            ncl = {"i2v": 1, "vc": 2}.get(o["loop"], 0)
        settings = Settings(mode=o["loop"], steps=o["steps"], scheduler=sched, guidance_scale=o["guidance"],
                            use_distill=o["distill"], enhance_hf=o["enhance_hf"], use_kv_cache=not o["no_kv_cache"],
                            num_cond_latents=ncl, t_thresh=o["t_thresh"])
        settings.validate("generated sampling inputs")
        cases = [generate_loop(refside.source_dims(source), settings, **_generated_text(o))]
    from parity.inputs import bsa_from_flags
    bsa = bsa_from_flags(o["bsa_sparsity"], o["bsa_cdf"], o["bsa_chunk_q"], o["bsa_chunk_k"])
    if bsa is not None:                   # generated inputs only (--bsa-* with --case refused first)
        cases[0].bsa = bsa
    return cases


@click.command("golden-check")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("cases", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write report.json, report.md and report.html into this folder.")
@click.option("--dtype", default="fp32", show_default=True, type=click.Choice(dtypes.CHOICES),
              help=f"Model precision: {dtypes.HELP}.")
@click.option("--device", **DEVICE_OPTION)
@click.option("--attention", default="sdpa", show_default=True,
              type=click.Choice(["sdpa", "math", "flash2", "flash3"]),
              help="Attention kernel (flash2/flash3 need flash-attn installed).")
@click.option("--reference", "reference", default="ours", show_default=True, type=click.Choice(["ours", "upstream"]),
              help="ours: the clean-room reference; upstream: the real LongCat-Video code from --upstream-path.")
@click.option("--upstream-path", type=click.Path(path_type=Path), default=None,
              help="A LongCat-Video git checkout (with --reference upstream).")
@quiet_option
def golden_check_cmd(checkpoint, cases, report_dir, dtype, device, attention, reference, upstream_path, quiet):
    """Run CHECKPOINT (a model folder holding dit/, or a dit/ folder) on golden CASE files and
    compare every recorded activation (DiT cases) or every step of the denoising loop
    (trajectory cases). Exit 0 iff all are within tolerance, 1 otherwise."""
    from longcat_convert import precheck
    precheck.golden_check(checkpoint, cases, report=report_dir, dtype=dtype, device_name=device, reference=reference,
                          upstream_path=upstream_path)
    from parity.native import prepare_process
    prepare_process(device)                    # the run's environment, before anything imports triton
    from parity.golden_check import golden_check
    if quiet:
        quiet_libraries()

    report = golden_check(checkpoint, list(cases), dtype=dtypes.canonical(dtype), device=device, attention=attention,
                          reference=reference, upstream_path=upstream_path)
    return _finish(report, report_dir, quiet, "golden-check")


def _finish(report: dict, report_dir, quiet: bool, what: str, *, known_file=None, expect=()) -> int:
    """Known differences tagged, reports to disk, the table (or one verdict line) on
    stdout (results on stdout; progress, logs and errors on stderr) -> the exit code (0 passed, or failed exactly as --expect says; 1 otherwise)."""
    from rich.console import Console
    from parity import known, render
    catalogue = known.Catalogue.load(known_file)
    known.annotate(report, catalogue)
    code = 0 if report["passed"] else 1
    if expect:
        ok, message = known.check_expected(report, list(expect), catalogue)
        report["expected"] = {"ids": list(expect), "passed": ok, "message": message}
        code = 0 if ok else 1
    written = render.write_reports(report, report_dir) if report_dir is not None else []
    if quiet:
        Console(highlight=False, soft_wrap=True).print(f"{what}: {render.verdict_line(report)}")
        return code
    render.print_table(report)
    for line in failure_summary(report):
        Console(highlight=False, soft_wrap=True).print(line, markup=False)
    if written:
        Console(highlight=False, soft_wrap=True).print("reports: " + ", ".join(str(p) for p in written))
    return code

def failure_summary(report: dict) -> list[str]:
    """What a failed run says on the console besides the table, as report.md does: why the
    first divergent row failed, and for a known difference its id, how to expect it in CI
    (``--expect ID``) and the fix that closes it (``--fixes NAME``)."""
    import re
    if report["passed"] or report.get("timeouts"):
        return []
    out = []
    first = next((r for r in report["layers"] if not r["passed"]), None)
    if first is not None and first.get("failures"):
        where = f" of case {first['case']}" if first.get("case") else ""
        out.append(f"why: {first['name']}{where} fails the policy: {'; '.join(first['failures'])}")
    failing = next((c for c in report["cases"] if not c["passed"]), {})
    kd = next((k for k in report.get("known_differences", []) if k["id"] == failing.get("known_difference")), None)
    if kd is not None:                      # its title, why and isolate hint: printed with the table
        line = f"known difference {kd['id']}: to gate on it reproducing (CI), add --expect {kd['id']} (docs/ci.md)"
        m = re.search(r"--fixes [\w,-]+", kd.get("fix") or "")
        if m:
            line += f"; {m.group(0)} runs FastVideo with our correction of it (docs/fixes.md)"
        out.append(line)
    elif report.get("unexplained"):
        out.append("not a known difference: no entry of the catalogue matches (docs/known-differences.md); "
                   "--expect cannot accept it")
    return out
