"""``parity`` and ``gate`` commands."""
from __future__ import annotations

from pathlib import Path

import click

from longcat_convert.errors import BadInput

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def _torch_dtype(name: str):
    import torch
    return getattr(torch, DTYPES[name])


def _ints(text: str, n: int | None, opt: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",")]
    except ValueError:
        raise BadInput(f"{opt} {text!r}: expected comma-separated integers")
    if n is not None and len(vals) != n:
        raise BadInput(f"{opt} {text!r}: expected {n} comma-separated integers")
    return vals


def _loras(specs, default: float) -> tuple[tuple[str, float], ...]:
    out = []
    for spec in specs:
        name, _, mult = spec.partition(":")
        try:
            out.append((name, float(mult) if mult else default))
        except ValueError:
            raise BadInput(f"--lora {spec!r}: expected NAME or NAME:MULTIPLIER (a number)")
    return tuple(out)


@click.command("parity")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("converted", type=click.Path(path_type=Path))
@click.option("--mode", type=click.Choice(["e2e", "layer", "blocks"]), default="e2e", show_default=True,
              help="e2e: each model on its own activations; layer: native modules fed the reference's inputs; "
                   "blocks: one block of each model in memory at a time (real-size checkpoints).")
@click.option("--case", "cases", multiple=True, type=click.Path(path_type=Path),
              help="Golden case (.safetensors with .json beside it); repeatable. Without it, inputs are generated.")
@click.option("--shape", default="3,4,6", show_default=True, help="Generated latent T,H,W.")
@click.option("--text-len", default=12, show_default=True, help="Generated text tokens.")
@click.option("--valid", default=None, help="Valid text tokens, one number or one per sample (default: all).")
@click.option("--batch", default=1, show_default=True)
@click.option("--timestep", default=700.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--num-cond-latents", default=0, show_default=True, help="Image-to-video: clean leading frames.")
@click.option("--kv-cache-frames", default=0, show_default=True,
              help="Video continuation: encode this many leading frames into a K/V cache, then continue.")
@click.option("--lora", "loras", multiple=True,
              help="NAME[:MULTIPLIER]: a LoRA in SOURCE/lora (converted copy in CONVERTED/lora/NAME); repeatable, "
                   "several apply at once. Replaces the LoRAs a case names.")
@click.option("--lora-multiplier", default=1.0, show_default=True, help="Multiplier of a --lora given without one.")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="fp32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N")
@click.option("--attention", default="sdpa", show_default=True, help="Reference attention backend: sdpa|flash2|flash3")
@click.option("--tolerances", type=click.Path(path_type=Path), default=None, help="Tolerance policy file.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write report.json, report.md and report.html here.")
@click.option("--quiet", is_flag=True)
def parity_cmd(source, converted, mode, cases, shape, text_len, valid, batch, timestep, seed, num_cond_latents,
               kv_cache_frames, loras, lora_multiplier, dtype, device, attention, tolerances, report_dir, quiet):
    """Run the reference (original weights, SOURCE) and FastVideo's native model
    (converted weights, CONVERTED) on the same inputs and compare every layer.

    Exit 0 when every layer is within tolerance, 1 when not, 2 on bad input."""
    from .inputs import generate, load_case
    from .policy import Policy
    from .runner import Setup, run_parity
    from . import report as R
    from . import refside

    setup = Setup(source=source, converted=converted, dtype=_torch_dtype(dtype), device=device,
                  attention=attention, mode=mode, loras=_loras(loras, lora_multiplier),
                  policy=Policy.load(tolerances))
    from reference.loading import parse_device
    parse_device(device)
    if cases:
        inputs = [load_case(c) for c in cases]
    else:
        dims = refside.source_dims(source)
        vals = _ints(valid, None, "--valid") if valid else None
        inputs = [generate(dims, shape=tuple(_ints(shape, 3, "--shape")), text_len=text_len,
                           valid=(vals[0] if vals and len(vals) == 1 else vals), batch=batch, timestep=timestep,
                           seed=seed, num_cond_latents=num_cond_latents)]
    if mode == "blocks":
        if kv_cache_frames:
            raise BadInput("--kv-cache-frames needs --mode e2e or layer (blocks mode streams one forward)")
        from .blocks import run_blocks
        report = run_blocks(setup, inputs)
    else:
        report = run_parity(setup, inputs, kv_cache_frames=kv_cache_frames)
    if not quiet:
        R.print_table(report)
    if report_dir:
        R.write_reports(report, report_dir)
    return 0 if report["passed"] else 1


@click.command("golden-check")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("cases", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Write report.json, report.md and report.html into this folder.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "bfloat16", "float16"]), help="Model dtype.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--attention", default="sdpa", show_default=True,
              type=click.Choice(["sdpa", "math", "flash2", "flash3"]),
              help="Attention kernel (flash2/flash3 need flash-attn installed).")
@click.option("--reference", "reference", default="ours", show_default=True, type=click.Choice(["ours", "upstream"]),
              help="ours: the clean-room reference; upstream: the real LongCat-Video code from --upstream-path.")
@click.option("--upstream-path", type=click.Path(path_type=Path), default=None,
              help="A LongCat-Video git checkout (with --reference upstream).")
@click.option("--quiet", is_flag=True, help="Print only the verdict line.")
def golden_check_cmd(checkpoint, cases, report_dir, dtype, device, attention, reference, upstream_path, quiet):
    """Run CHECKPOINT (a model folder holding dit/, or a dit/ folder) on golden CASE files and
    compare every recorded activation (DiT cases) or every step of the denoising loop
    (trajectory cases). Exit 0 iff all are within tolerance, 1 otherwise."""
    from . import report as R
    from .golden_check import golden_check

    report = golden_check(checkpoint, list(cases), dtype=dtype, device=device, attention=attention,
                          reference=reference, upstream_path=upstream_path)
    _finish(report, report_dir, quiet, "golden-check")
    return 0 if report["passed"] else 1


def _finish(report: dict, report_dir, quiet: bool, what: str) -> None:
    """Reports to disk, and the table (or one verdict line) on stderr."""
    from rich.console import Console
    from . import report as R
    written = R.write_reports(report, report_dir) if report_dir is not None else []
    if quiet:
        verdict = "PASSED" if report["passed"] else f"FAILED (first divergent: {report['first_divergent']})"
        Console(stderr=True, highlight=False).print(f"{what}: {verdict}")
        return
    R.print_table(report)
    if written:
        Console(stderr=True, highlight=False).print("reports: " + ", ".join(str(p) for p in written))


def register(cli) -> None:
    cli.add_command(parity_cmd)
    cli.add_command(golden_check_cmd)
    from .gate import gate_cmd
    cli.add_command(gate_cmd)
