"""Every mode of ``parity``, each a combination of the engine's parts: the sides
(parity/sides.py, loops.py, components.py, pipeline.py), a runner (in process:
forward.py; block-streamed: blocks.py; N ranks: sp.py), the one judge
(judge.py) and one report (report.py). A mode starts a report, loads its
sides, runs them, hands every pair of row sets to the judge, and finalises.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

import fixes
from longcat_convert.errors import BadInput, sigterm_as_interrupt

from . import blocks, components, forward, loops, pipeline, sp
from . import native as nat
from . import report as R
from .cases import COMPONENTS, LoopCase, generated_component, load_component
from .correspondence import common_rows, layer_pairs
from .inputs import Inputs
from .judge import judge
from .metrics import psnr
from .policy import dtype_name
from .setup import Setup, by_loras
from .sides import bsa_for, load_block_sides, load_sides
from .sp_stats import summarize
from .weights_check import add_weights_row, tokenizer_check

SAMPLING_NOTE = ("sampling rows: timesteps/sigmas as the loop starts, then per step what the DiT received and "
                 "returned and what the Euler step received and returned (noise_pred/latents: the noisy frames only "
                 "where a loop steps a slice); timing: median wall time per denoising DiT call after the first (its "
                 "warm-up is shown apart), with the spread (min-max), CFG batch included")


COMPARES = {
    "e2e": ("e2e compares each model run end to end on the same inputs: every row is a module's output with each "
            "side on its own activations, so a difference carries on into the rows after it"),
    "layer": ("layer compares each native module on the reference's input to that module (fed, not carried): "
              "every row is that module alone, so a row's difference starts in that module"),
    "blocks": ("blocks compares one block of each model at a time (real-size checkpoints), each side on its own "
               "activations, as e2e does"),
}


def _compares(report: dict, mode: str) -> None:
    """What the rows of an e2e / layer / blocks report compare: first among its notes."""
    if mode in COMPARES:
        report["compares"] = COMPARES[mode]
        report["notes"].insert(0, COMPARES[mode])


def _add_notes(report: dict, notes) -> None:
    report["notes"] += [n for n in notes if n not in report["notes"]]


def _declare(report: dict, setup: Setup, case: str, **settings) -> None:
    """The case's settings in the report (what known differences are matched against)."""
    R.describe_case(report, case, mode=report["mode"], dtype=dtype_name(setup.dtype), device=str(setup.device),
                    **settings)


def _judge_forward(report: dict, setup: Setup, rows: forward.Rows, inp: Inputs, pairs, zero_pad: bool,
                   sp_size: int = 0) -> None:
    _declare(report, setup, rows.label, zero_pad=zero_pad, sp=bool(sp_size), **rows.settings)
    judge(report, rows.label, rows.native, rows.reference, policy=setup.policy, dtype=setup.dtype,
          device=setup.device, truth=rows.truth, lowp_dtype=setup.dtype if rows.truth is not None else None,
          names=("native model", "reference"), native_names=rows.native_names,
          common=common_rows(pairs, mask=inp.encoder_attention_mask, zero_pad=zero_pad))


def _title(setup: Setup, what: str, extra: str = "") -> str:
    """"LongCat parity (e2e, float32, cpu)"; loop reports do not repeat the mode."""
    mode = f"{setup.mode}, " if what == "parity" else ""
    return f"LongCat {what} ({mode}{dtype_name(setup.dtype)}, {setup.device}{extra})"


# --------------------------------------------------------------------------- DiT forwards

def forward_parity(setup: Setup, inputs: list[Inputs], *, kv_cache_frames: int = 0) -> dict:
    """e2e / layer: every input (one case per forward) with both sides in this process."""
    if setup.mode not in ("e2e", "layer"):
        raise BadInput(f"--mode {setup.mode}: forward_parity handles e2e and layer")
    report = R.start("parity", _title(setup, "parity"), mode=setup.mode, policy=setup.policy, dtype=setup.dtype,
                     device=setup.device, attention=setup.attention)
    _compares(report, setup.mode)
    for loras, group in by_loras(setup, inputs).items():
        sides = load_sides(setup, loras)
        _add_notes(report, sides.notes)
        pairs = layer_pairs(sides.dims)
        for inp in group:
            for rows in forward.run_input(setup, sides, inp, pairs, report, kv_cache_frames):
                _judge_forward(report, setup, rows, inp, pairs, sides.zero_pad)
    return R.finalize(report)


def blocks_parity(setup: Setup, inputs: list[Inputs]) -> dict:
    """blocks: one block of each implementation in memory at a time."""
    blocks.check_inputs(setup, inputs)
    sides = load_block_sides(setup)
    report = R.start("parity", _title(setup, "parity"), mode="blocks", policy=setup.policy, dtype=setup.dtype,
                     device=setup.device, attention=setup.attention)
    _compares(report, "blocks")
    _add_notes(report, sides.notes)
    pairs = layer_pairs(sides.dims)
    for inp in inputs:
        T = inp.hidden_states.shape[2]
        with bsa_for(setup, sides, inp.bsa, report, T=T, num_cond_latents=inp.num_cond_latents) as bsa:
            for rows in blocks.stream(setup, sides, inp):
                rows.settings = forward.step_settings(forward.plan(inp)[0], bsa)
                _judge_forward(report, setup, rows, inp, pairs, sides.zero_pad)
    return R.finalize(report)


# --------------------------------------------------------------------------- denoising loops

def _timing(seconds: list[float]) -> dict:
    """Per-DiT-call wall times -> the median without the first call (it pays for warm-up:
    allocations, kernel selection; measured 475 ms against 12 ms on tiny-a), the spread
    (min, max) of the rest, and the first call on its own."""
    import statistics
    ms = [1000 * x for x in seconds]
    steady = ms[1:] if len(ms) > 1 else ms
    if not steady:
        return {"median": None, "spread": None, "first": None}
    return {"median": round(statistics.median(steady), 3), "spread": [round(min(steady), 3), round(max(steady), 3)],
            "first": round(ms[0], 3)}


def _loop_settings(case: LoopCase, sigmas: str, bsa: dict | None, zero_pad: bool) -> dict:
    st = case.settings
    return {"sigmas": sigmas, "loop": st.mode, "steps": st.steps, "use_distill": bool(st.use_distill),
            "enhance_hf": bool(st.enhance_hf), "use_kv_cache": bool(st.use_kv_cache), "bsa": bsa is not None,
            "cond": bool(st.num_cond_latents), "zero_pad": zero_pad}


def _judge_loop(report: dict, setup: Setup, case: str, got: dict, ref: dict, truth: dict | None,
                settings: dict) -> None:
    _declare(report, setup, case, **settings)
    judge(report, case, got, ref, policy=setup.policy, dtype=setup.dtype, device=setup.device, truth=truth,
          lowp_dtype=setup.dtype if setup.low_precision else None, names=("native pipeline", "reference"))


def _reference_loops(setup: Setup, sides, case: LoopCase) -> tuple[dict, dict | None, list[float]]:
    ref, seconds = loops.run_reference(sides.ref, case, dtype=setup.dtype, device=setup.device)
    truth = None
    if sides.truth is not None:
        truth, _ = loops.run_reference(sides.truth, case, dtype=torch.float32, device=setup.device)
    return ref, truth, seconds


def sampling_parity(setup: Setup, cases: list[LoopCase], *, sigmas: str = "fastvideo") -> dict:
    """The original's loop against FastVideo's LongCat stages, every row of every case."""
    loops.check_sigmas(sigmas)
    report = R.start("parity", _title(setup, "sampling parity", f", sigmas {sigmas}"), mode="sampling",
                     policy=setup.policy, dtype=setup.dtype, device=setup.device, attention=setup.attention)
    report["timing"] = []
    for loras, group in by_loras(setup, cases).items():
        sides = load_sides(setup, loras)
        _add_notes(report, sides.notes)
        for case in group:
            with bsa_for(setup, sides, case.bsa, report, T=case.inputs.latents.shape[2],
                         num_cond_latents=case.settings.num_cond_latents) as bsa:
                ref, truth, ref_s = _reference_loops(setup, sides, case)
                got, nat_s, notes = loops.run_native(sides.native, case, dtype=setup.dtype, device=setup.device,
                                                     sigmas=sigmas, converted=Path(setup.converted))
            _add_notes(report, notes)
            _judge_loop(report, setup, case.name, got, ref, truth,
                        dict(_loop_settings(case, sigmas, bsa, sides.zero_pad), sp=False))
            r, n = _timing(ref_s), _timing(nat_s)
            r_ms, n_ms = r["median"], n["median"]
            report["timing"].append({
                "case": case.name, "dit_calls": {"reference": len(ref_s), "native": len(nat_s)},
                "reference_ms_per_dit_call": r_ms, "native_ms_per_dit_call": n_ms,
                "reference_ms_spread": r["spread"], "native_ms_spread": n["spread"],
                "first_call_ms": {"reference": r["first"], "native": n["first"]},
                "loop_dit_s": {"reference": round(sum(ref_s), 4), "native": round(sum(nat_s), 4)},
                "native_over_reference": round(n_ms / r_ms, 3) if r_ms and n_ms else None})
    report["notes"].append(SAMPLING_NOTE)
    return R.finalize(report)


# --------------------------------------------------------------------------- components

GOLDEN_NOTE = ("rows of case '<case>:golden': the original side against data recorded from the upstream "
               "LongCat-Video pipeline and its own AutoencoderKLWan copy (scripts/make_component_golden.py)")
TEXT_NOTE = ("prompt_embeds: the original hands the DiT the encoder's output at every one of the 512 positions "
             "(padding included) and the mask beside it; FastVideo's umt5_postprocess_text keeps the first "
             "sum(mask) positions and zero-fills the rest. prompt_embeds.valid_tokens compares the unpadded "
             "positions only; the original's own [B, 1, L, C] is compared as [B, L, C]")
VAE_NOTE = ("VAE rows: a module called once per causal chunk (encode: 1 frame, then 4 at a time; decode: one "
            "latent frame at a time) is recorded as its chunk outputs concatenated along time; feat_cache.<j>: "
            "the j-th causal conv's cached frames after the last chunk")
PIPELINE_NOTE = ("text.*_prompt_embeds.valid_tokens: the embeddings on the valid tokens, what the DiT uses (its "
                 "text_tokens_zero_pad zeroes the rest); the padded positions differ by design (parity "
                 "--component text_encoder reports them)")


def judge_components(report: dict, case: str, candidate: dict, reference: dict, *, policy, names,
                     rows=None) -> None:
    """Component rows are judged in float32 on the CPU (where they were moved)."""
    R.describe_case(report, case, mode=report["mode"], dtype="float32")
    judge(report, case, {k: v.float() for k, v in candidate.items()}, {k: v.float() for k, v in reference.items()},
          policy=policy, dtype="float32", device="cpu", names=names, rows=rows)


def judge_golden(report: dict, case, ours: dict, golden: dict, *, policy, label: str | None = None) -> None:
    """Rows "<case>:golden" (or ``label``): the original side against what the upstream code
    recorded (every golden row must be produced; rows the golden data does not hold are not judged)."""
    label = label or f"{case.name}:golden"
    R.describe_case(report, label, against="golden data")
    judge_components(report, label, {k: v for k, v in ours.items() if k in golden}, golden,
                     policy=policy, names=("original", "golden data"))


def _source_root(source, what: str) -> Path:
    from longcat_convert.sources import resolve
    src = resolve(str(source))
    if src.root is None:
        raise BadInput(f"{source}: {what} needs the model folder (with text_encoder/, vae/, ...), not a bare dit/ "
                       "folder")
    return src.root


def component_parity(setup: Setup, component: str, case_paths, *, seed: int = 0, sigmas: str = "fastvideo",
                     fix_names=(), stock_run: bool = True) -> dict:
    """--component text_encoder|vae|pipeline over the given cases (or one generated case).
    ``fix_names`` (pipeline): the fixes, installed here around FastVideo's run; with
    ``stock_run`` stock FastVideo also runs, for the frames picture and a PSNR line."""
    if component not in COMPONENTS:
        raise BadInput(f"--component {component!r}: choose {', '.join(COMPONENTS)}")
    if dtype_name(setup.dtype) != "float32":
        raise BadInput("--component runs in float32 (low-precision component parity is not implemented)")
    cases = [load_component(p) for p in case_paths] if case_paths else [generated_component(component, seed)]
    for c in cases:
        if c.component != component:
            raise BadInput(f"{c.path}: a {c.component} case; this run is --component {component}")
    src_root = _source_root(setup.source, "component parity")
    root = components.pipeline_root(setup.converted)
    device = torch.device(setup.device)
    report = R.start("parity", f"parity {component}: original vs FastVideo (float32, {device})",
                     mode=f"component {component}", policy=setup.policy, dtype="float32", device=device,
                     attention=setup.attention, source=setup.source, converted=setup.converted, component=component)
    if component == "pipeline":
        return _pipeline(setup, report, src_root, root, cases, sigmas, list(fix_names), stock_run)
    args = nat.fastvideo_args(root, dtype=torch.float32, device=device, overrides=setup.fastvideo)
    if component == "text_encoder":
        tok, enc, (m, problems) = components.load_native_text(root, args)
        enc = enc.to(device)
        for case in cases:
            add_weights_row(report, case.name, "text_encoder", m, problems)
            tm, tp = tokenizer_check(tok, components.component_dir(root, "tokenizer", "converted"))
            add_weights_row(report, case.name, "tokenizer", tm, tp)
            ref = components.run_reference_text(src_root, case, device)
            fv = components.run_native_text(tok, enc, case, args)
            if case.golden:
                judge_golden(report, case, ref, case.golden, policy=setup.policy)
            cand, refs = components.text_pairs(ref, fv)
            judge_components(report, case.name, cand, refs, policy=setup.policy, names=("FastVideo", "original"))
            if not torch.equal(fv["stage_attention_mask"], ref["attention_mask"]):
                report["notes"].append(f"{case.name}: the attention mask FastVideo's text stage returns differs "
                                       "from the tokenizer's")
        report["notes"].append(TEXT_NOTE + ("; here with the fix text-embeds-padding (fixes/text_padding.py), which "
                                            "hands over the encoder's output at every position as the original"
                                            if "text-embeds-padding" in fixes.active() else ""))
    else:
        vae, (m, problems) = components.load_native_vae(root, args)
        vae = vae.to(device)
        for case in cases:
            add_weights_row(report, case.name, "vae", m, problems)
            ref = components.run_reference_vae(src_root, case, device)
            fv = components.run_native_vae(vae, case, args, device)
            if case.golden:
                judge_golden(report, case, ref, case.golden, policy=setup.policy)
            judge_components(report, case.name, fv, ref, policy=setup.policy, names=("FastVideo", "original"))
        report["notes"].append(VAE_NOTE)
    if any(c.golden for c in cases):
        report["notes"].append(GOLDEN_NOTE)
    return R.finalize(report)


def _stock_native(root: Path, case, device, sigmas: str, report: dict, overrides: dict) -> tuple[dict | None, float]:
    """Stock FastVideo's run (no fix installed) -> (its rows, seconds), or None where
    fixes are installed outside this run's scope (it could not be stock)."""
    import time

    if fixes.active():
        _add_notes(report, [f"stock FastVideo not run: fixes installed outside this run ({', '.join(fixes.active())})"])
        return None, 0.0
    t0 = time.perf_counter()
    rows, _, _ = pipeline.run_native_pipeline(root, case, device, sigmas, overrides=overrides)
    return rows, time.perf_counter() - t0


def _stock_steps(stock: dict, ref: dict) -> dict:
    """Relative L2 of the stock run's loop rows against the original (drawn, not judged)."""
    from . import pictures
    from .metrics import rel_l2
    out = {}
    for name, t in stock.items():
        r = ref.get(name)
        if pictures.is_step_row(name) and r is not None and r.shape == t.shape:
            v = rel_l2(t.float(), r.float())
            out[name] = v if math.isfinite(v) else str(v)
    return out


def _frames_pictures(report: dict, case: str, ref: dict, runs: list[tuple[str, dict | None]]) -> None:
    """The frames grid and clip of one case: original | each FastVideo run | its difference."""
    from . import pictures
    shown = [(label, rows["output.frames"]) for label, rows in runs
             if rows is not None and rows.get("output.frames") is not None]
    f_ref = ref.get("output.frames")
    if f_ref is None or not shown or any(v.shape != f_ref.shape for _, v in shown):
        return
    entry, data = pictures.frames_picture(case, f_ref, shown)
    R.attach(report, entry, data)
    R.attach(report, *pictures.frames_clip(case, f_ref, shown))


def _pipeline(setup: Setup, report: dict, src_root: Path, root: Path, cases, sigmas: str, fix_names: list[str],
              stock_run: bool) -> dict:
    """One full prompt-to-frames run of each side per case, every stage's rows judged; with
    fixes, the judged run is the fixed one and stock FastVideo runs beside it for pictures."""
    device = torch.device(setup.device)
    report["frames"] = []
    for case in cases:
        ref = pipeline.run_reference_pipeline(src_root, case, device)
        if case.golden:
            judge_golden(report, case, ref, pipeline.golden_rows(case), policy=setup.policy)
        with nat.fixes_installed(fix_names, device):
            fv, notes, cls = pipeline.run_native_pipeline(root, case, device, sigmas, overrides=setup.fastvideo,
                                                          record=setup.record_built)
        _add_notes(report, notes)
        stock, stock_s = (_stock_native(root, case, device, sigmas, report, setup.fastvideo) if fix_names and stock_run
                          else (None, 0.0))
        runs = [("FastVideo stock", stock), ("FastVideo fixed", fv)] if stock is not None else [("FastVideo", fv)]
        _frames_pictures(report, case.name, ref, runs)
        for rows in (ref, fv):
            pipeline.add_valid_tokens(rows, "text.attention_mask", "text.prompt_embeds")
            pipeline.add_valid_tokens(rows, "text.negative_attention_mask", "text.negative_prompt_embeds")
        cand = {k: v for k, v in fv.items() if k not in pipeline.EMBED_ROWS}
        refs = {k: v for k, v in ref.items() if k not in pipeline.EMBED_ROWS}
        R.describe_case(report, case.name, sigmas=sigmas)
        judge_components(report, case.name, cand, refs, policy=setup.policy, names=("FastVideo pipeline", "original"))
        f_nat, f_ref = fv.get("output.frames"), ref.get("output.frames")
        if f_nat is not None and f_ref is not None and f_nat.shape == f_ref.shape:
            entry = {"case": case.name, "pipeline": cls, "shape": list(f_ref.shape),
                     "psnr_db": psnr(f_nat, f_ref), "max_abs": float((f_nat - f_ref).abs().max())}
            f_stock = stock.get("output.frames") if stock is not None else None
            if f_stock is not None and f_stock.shape == f_ref.shape:
                entry["stock"] = {"psnr_db": psnr(f_stock, f_ref),
                                  "max_abs": float((f_stock - f_ref).abs().max()), "seconds": round(stock_s, 2),
                                  "steps": _stock_steps(stock, ref)}
            report["frames"].append(entry)
            fixed = " with fixes" if fix_names else ""
            report["notes"].append(f"{case.name}: frames [B, C, F, H, W] {entry['shape']}: PSNR "
                                   f"{entry['psnr_db']:.2f} dB, max abs {entry['max_abs']:.4g} (FastVideo{fixed} vs "
                                   "original, values in [0, 1])")
            if "stock" in entry:
                st = entry["stock"]
                report["notes"].append(f"{case.name}: stock FastVideo (no fix; pictures only, not judged): frames "
                                       f"PSNR {st['psnr_db']:.2f} dB, max abs {st['max_abs']:.4g}; its extra run "
                                       f"took {st['seconds']:.1f} s (--no-stock-run skips it)")
    report["notes"].append(PIPELINE_NOTE)
    return R.finalize(report)


# --------------------------------------------------------------------------- sequence parallelism

def _sp_report(setup: Setup, what: str, sp_size: int, extra: str = "") -> dict:
    return R.start("parity", _title(setup, what, f"{extra}, sequence parallel x{sp_size}"), mode=setup.mode,
                   policy=setup.policy, dtype=setup.dtype, device=setup.device, attention=setup.attention)


def _sp_finish(report: dict, runs: dict, setup: Setup, *, sp_size: int, start: str, timeout: float, threads: dict,
               cores: int) -> dict:
    R.finalize(report)
    report["sp"] = summarize(runs, sp=sp_size, start=start, device=setup.device, timeout=timeout, threads=threads,
                             cores=cores, backend="nccl" if setup.device.startswith("cuda") else "gloo")
    if report["sp"].get("finding"):
        report["notes"].append(report["sp"]["finding"])
    return report


def _failure_row(report: dict, pairs, label: str, case: str, err: dict) -> None:
    if err.get("type") == "Timeout":           # not a numerical failure: said as what it is
        report.setdefault("timeouts", []).append({"case": case, "run": label, "message": err.get("message")})
    R.add_layer(report, name=(sp.ref_name(pairs, err.get("where")) if pairs else None) or label,
                native_name=err.get("where"), metrics={}, passed=False, failures=[sp.failure(label, err)], case=case)


def sp_parity(setup: Setup, inputs: list[Inputs], *, sp_size: int, kv_cache_frames: int = 0,
              timeout: float = sp.DEFAULT_TIMEOUT, start: str = "auto") -> dict:
    """e2e / layer with the native side under FastVideo's sequence parallelism in ``sp_size``
    processes (cases ``<case>:1proc``, ``<case>:rank<r>``), plus the ``sp`` section."""
    start = sp.check(setup, sp_size, start, timeout)
    report = _sp_report(setup, "parity", sp_size)
    _compares(report, setup.mode)
    cores, threads = sp.prepare(setup, sp_size, start, report)
    runs: dict[str, list[dict]] = {}          # run label -> per-group worker results (or errors)
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="lcc-sp-") as tmp:
        for g, (loras, group) in enumerate(by_loras(setup, inputs).items()):
            sides = load_sides(setup, loras, native=False)
            _add_notes(report, sides.notes)
            pairs = layer_pairs(sides.dims)
            jobs = [(inp, j) for inp in group
                    for j in sp.reference_jobs(setup, sides, inp, pairs, report, sp_size, kv_cache_frames)]
            outcomes = sp.launch(setup, Path(tmp) / f"g{g}", [j.payload() for _, j in jobs], sides.native_loras,
                                 sp=sp_size, start=start, timeout=timeout, threads=threads)
            order = sp.run_order(outcomes)
            for inp, job in jobs:
                for label in order:
                    o = outcomes[label]
                    if o["ok"]:
                        rows = sp.job_rows(job, pairs, o["result"], label)
                        _judge_forward(report, setup, rows, inp, pairs, sides.zero_pad, sp_size)
                    elif sp.failed_in(o["error"], job.label, jobs[0][1].label):
                        _declare(report, setup, f"{job.label}:{label}", zero_pad=sides.zero_pad, sp=True,
                                 **forward.step_settings(job.step, job.bsa))
                        _failure_row(report, pairs, label, f"{job.label}:{label}", o["error"])
            for label, o in outcomes.items():
                runs.setdefault(label, []).append(o)
    return _sp_finish(report, runs, setup, sp_size=sp_size, start=start, timeout=timeout, threads=threads,
                      cores=cores)


SP_SAMPLING_NOTE = ("sampling under SP: FastVideo's LongCat stages drive each rank's native model through the whole "
                    "loop; forward ms in the sp section: median wall time per denoising DiT call; attention work: "
                    "every attention call of the loop")


def sp_sampling_parity(setup: Setup, cases: list[LoopCase], *, sp_size: int, sigmas: str = "fastvideo",
                       timeout: float = sp.DEFAULT_TIMEOUT, start: str = "auto") -> dict:
    """Sampling parity with FastVideo's stages driving the native model under its sequence
    parallelism: the reference loop runs once here, every run's rows are judged against it."""
    loops.check_sigmas(sigmas)
    start = sp.check(setup, sp_size, start, timeout)
    report = _sp_report(setup, "sampling parity", sp_size, f", sigmas {sigmas}")
    cores, threads = sp.prepare(setup, sp_size, start, report)
    runs: dict[str, list[dict]] = {}
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="lcc-sp-") as tmp:
        for g, (loras, group) in enumerate(by_loras(setup, cases).items()):
            sides = load_sides(setup, loras, native=False)
            _add_notes(report, sides.notes)
            refs, payloads = {}, []
            for case in group:
                with bsa_for(setup, sides, case.bsa, report, T=case.inputs.latents.shape[2],
                             num_cond_latents=case.settings.num_cond_latents, extra_notes=[sp.bsa_note(sp_size)]) \
                        as bsa:
                    ref, truth, _ = _reference_loops(setup, sides, case)
                refs[case.name] = (ref, truth, dict(_loop_settings(case, sigmas, bsa, sides.zero_pad), sp=True))
                payloads.append(dict(label=case.name, loop=_without_golden(case), sigmas=sigmas, bsa=bsa))
            outcomes = sp.launch(setup, Path(tmp) / f"g{g}", payloads, sides.native_loras, sp=sp_size, start=start,
                                 timeout=timeout, threads=threads)
            for case in group:
                ref, truth, settings = refs[case.name]
                for label in sp.run_order(outcomes):
                    o, name = outcomes[label], f"{case.name}:{label}"
                    if o["ok"]:
                        res = o["result"]["jobs"][case.name]
                        _add_notes(report, res["notes"])
                        _judge_loop(report, setup, name, res["rows"], ref, truth, settings)
                    elif sp.failed_in(o["error"], case.name, group[0].name):
                        _declare(report, setup, name, **settings)
                        _failure_row(report, None, label, name, o["error"])
            for label, o in outcomes.items():
                runs.setdefault(label, []).append(o)
    report["notes"].append(SP_SAMPLING_NOTE)
    return _sp_finish(report, runs, setup, sp_size=sp_size, start=start, timeout=timeout, threads=threads,
                      cores=cores)


def _without_golden(case: LoopCase) -> LoopCase:
    from dataclasses import replace
    return replace(case, golden={})
