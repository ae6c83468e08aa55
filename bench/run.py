"""`make bench` (``python -m bench.run``): the converter against ``cp`` of the same bytes.

For synthetic checkpoints with the released widths (hidden 4096, 32 heads, caption
4096, adaLN 512, in/out 16, real key names and config) of a few blocks, in bf16 and
fp32, it measures in the same run, each from a cold page cache when the machine
allows dropping it (root), otherwise from a warm one for every command alike:

* ``cp -r dit/``, then ``sync`` (timed separately: ``cp`` alone leaves the data in
  the page cache, ``cp`` + ``sync`` puts it on disk);
* ``convert --no-fsync`` (compare with ``cp``) and ``convert`` (fsyncs before the
  rename; compare with ``cp`` + ``sync``);
* ``verify`` (re-reads both sides);

each ``--reps`` times, interleaved, reporting the median time and the largest peak
memory (RSS from the kernel; anonymous and file-backed RSS sampled).

Sections are functions registered in SECTIONS; other benchmarks (block-streamed
parity) add theirs there and reuse ``measure``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from bench.measure import Sample, drop_caches, measure, warm
from bench.synth import cache_dir, cached_checkpoint

CLI = [sys.executable, "-m", "longcat_convert.cli"]
GB = 1e9
MiB = 2**20


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


class Cache:
    """Cold (drop the page cache before each command) when allowed, else warm for all."""

    def __init__(self):
        self.cold = drop_caches()

    def prepare(self, *paths: Path) -> None:
        if self.cold:
            drop_caches()
        else:
            os.sync()
            for p in paths:
                warm(str(p))

    @property
    def mode(self) -> str:
        return "cold page cache (dropped before each command)" if self.cold else \
            "warm page cache (drop_caches not permitted; every command starts with its inputs cached)"


def _rm(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)
    os.sync()


def _check(s: Sample, what: str) -> Sample:
    if s.rc != 0:
        raise SystemExit(f"bench: {what} failed (exit {s.rc}): {s.stderr.strip()[-2000:]}")
    return s


def bench_conversion(src: Path, reps: int, cache: Cache, work: Path) -> dict:
    """cp / cp+sync / convert --no-fsync / convert / verify on one checkpoint."""
    runs: dict[str, list[Sample]] = {k: [] for k in ("cp", "sync_after_cp", "convert_nofsync",
                                                     "sync_after_convert", "convert", "verify", "nohash")}
    out, cp_dst = work / "out", work / "cp"
    for _ in range(reps):
        _rm(cp_dst)
        cache.prepare(src)
        runs["cp"].append(_check(measure(["cp", "-r", str(src / "dit"), str(cp_dst)]), "cp"))
        runs["sync_after_cp"].append(measure(["sync"]))
        _rm(cp_dst)

        _rm(out)
        cache.prepare(src)
        runs["convert_nofsync"].append(_check(measure(CLI + ["convert", str(src), str(out), "--quiet",
                                                             "--no-fsync"]), "convert --no-fsync"))
        runs["sync_after_convert"].append(measure(["sync"]))
        _rm(out)

        cache.prepare(src)
        runs["nohash"].append(_check(measure(CLI + ["convert", str(src), str(out), "--quiet", "--no-fsync",
                                                    "--no-hash"]), "convert --no-hash"))
        _rm(out)

        cache.prepare(src)
        runs["convert"].append(_check(measure(CLI + ["convert", str(src), str(out), "--quiet"]), "convert"))
        cache.prepare(src, out)
        runs["verify"].append(_check(measure(CLI + ["verify", str(src), str(out), "--quiet"]), "verify"))
        _rm(out)

    def med(k):
        return statistics.median(s.seconds for s in runs[k])

    def peak(k, attr):
        return max(getattr(s, attr) for s in runs[k])

    cp_sync = statistics.median(a.seconds + b.seconds for a, b in zip(runs["cp"], runs["sync_after_cp"]))
    conv_sync = statistics.median(a.seconds + b.seconds
                                  for a, b in zip(runs["convert_nofsync"], runs["sync_after_convert"]))
    return {
        "bytes": dir_bytes(src / "dit"),
        "seconds": {"cp": med("cp"), "cp+sync": cp_sync, "convert --no-fsync": med("convert_nofsync"),
                    "convert --no-fsync, then sync": conv_sync, "convert": med("convert"), "verify": med("verify"),
                    "convert --no-fsync --no-hash": med("nohash")},
        "all_seconds": {k: [round(s.seconds, 3) for s in v] for k, v in runs.items()},
        "ratio": {"convert --no-fsync / cp": med("convert_nofsync") / med("cp"),
                  "convert --no-fsync --no-hash / cp": med("nohash") / med("cp"),
                  "convert / (cp+sync)": med("convert") / cp_sync,
                  "(convert --no-fsync, then sync) / (cp+sync)": conv_sync / cp_sync},
        "peak": {k: {"rss": peak(k, "peak_rss"), "anon": peak(k, "peak_anon"), "file": peak(k, "peak_file")}
                 for k in ("cp", "convert_nofsync", "convert", "verify", "nohash")},
    }


def sha256_floor() -> dict:
    """How fast sha256 runs here, on all cores: the lower bound of a hashing copy."""
    buf = memoryview(os.urandom(64 * MiB))
    cores = os.cpu_count() or 1

    def one():
        h = hashlib.sha256()
        for i in range(0, len(buf), 4 * MiB):   # 4 MiB updates, as the engine does
            h.update(buf[i:i + 4 * MiB])
    t = time.perf_counter()
    one()
    single = len(buf) / (time.perf_counter() - t)
    threads = [threading.Thread(target=one) for _ in range(cores)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    allcores = cores * len(buf) / (time.perf_counter() - t)
    return {"per_core_GBps": single / GB, "all_cores_GBps": allcores / GB, "cores": cores}


def section_conversion(args) -> dict:
    cache = Cache()
    work = cache_dir() / "runs"
    _rm(work)
    work.mkdir(parents=True)
    rows = []
    for dtype in args.dtypes:
        for blocks in args.blocks:
            t = time.perf_counter()
            src = cached_checkpoint(dtype, blocks)
            built = time.perf_counter() - t
            print(f"  {dtype} {blocks} blocks ({dir_bytes(src / 'dit') / GB:.2f} GB, ready in {built:.0f}s) ...",
                  file=sys.stderr, flush=True)
            r = bench_conversion(src, args.reps, cache, work)
            r.update(dtype=dtype, blocks=blocks)
            rows.append(r)
    _rm(work)
    return {"mode": cache.mode, "reps": args.reps, "rows": rows, "sha256": sha256_floor()}


def _param_bytes(dims, dtype: str, block: bool) -> int:
    """Bytes of one block's parameters (``block``) or of everything outside the
    blocks (embedders + final layer) in ``dtype``, from the mapping table's shapes."""
    from longcat_convert.table import original_shapes
    size = {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]
    n = sum(_numel(s) for k, s in original_shapes(dims).items()
            if k.startswith("blocks.0.") == block and (block or not k.startswith("blocks.")))
    return n * size


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


RUNTIME_ONLY = [sys.executable, "-c", "from parity.native import ensure_runtime; ensure_runtime(); "
                "import reference.model, parity.modes"]


def section_parity_blocks(args) -> dict:
    """Block-streamed parity (--mode blocks) of the released widths at two depths:
    peak memory should be one block of each model (+ a float32 truth block in
    low precision) plus the runtime, whatever the depth."""
    from bench.synth import real_dims
    cache = Cache()
    work = cache_dir() / "runs-parity"
    _rm(work)
    work.mkdir(parents=True)
    base = _check(measure(RUNTIME_ONLY), "runtime baseline")
    rows = []
    for dtype in args.dtypes:
        for blocks in args.blocks:
            src = cached_checkpoint(dtype, blocks)
            conv = work / f"{dtype}-{blocks}"
            _check(measure(CLI + ["convert", str(src), str(conv), "--quiet", "--no-fsync"]), "convert")
            print(f"  parity --mode blocks, {dtype}, {blocks} blocks ...", file=sys.stderr, flush=True)
            cache.prepare(src, conv)
            rep = work / f"report-{dtype}-{blocks}"
            s = measure(CLI + ["parity", str(src), str(conv), "--device", args.device, "--mode", "blocks",
                               "--dtype", dtype, "--shape", args.parity_shape, "--text-len", "64", "--quiet", "--report", str(rep)])
            if s.rc not in (0, 1):
                _check(s, "parity --mode blocks")
            report = json.loads((rep / "report.json").read_text())
            # What blocks mode keeps: one block + the stem (embedders, final layer) of each
            # model, and of the float32 truth in low precision.
            d = real_dims(blocks)
            one = _param_bytes(d, dtype, True) + _param_bytes(d, dtype, False)
            truth = _param_bytes(d, "fp32", True) + _param_bytes(d, "fp32", False) if dtype != "fp32" else 0
            rows.append({"dtype": dtype, "blocks": blocks, "seconds": s.seconds, "rss": s.peak_rss,
                         "anon": s.peak_anon, "block_bytes": one, "truth_block_bytes": truth,
                         "layers": len(report["layers"]), "passed": report["passed"],
                         "first_divergent": report["first_divergent"]})
            _rm(conv)
    _rm(work)
    return {"mode": cache.mode, "shape": args.parity_shape, "runtime_rss": base.peak_rss, "rows": rows}


def print_parity_blocks(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(width=200, highlight=False)
    t = Table(title=f"parity --mode blocks, released widths, latent {res['shape']}, 64 text tokens ({res['mode']})")
    for c in ("checkpoint", "seconds", "layers", "result", "peak RSS MiB", "peak anon MiB",
              "one block + stem of each\n(+ fp32 truth) MiB", "RSS - runtime - those MiB"):
        t.add_column(c, justify="right")
    base = res["runtime_rss"]
    for r in res["rows"]:
        blocks_b = 2 * r["block_bytes"] + r["truth_block_bytes"]
        t.add_row(f"{r['dtype']} {r['blocks']} blocks", f"{r['seconds']:.1f}", str(r["layers"]),
                  "pass" if r["passed"] else f"FAIL at {r['first_divergent']}",
                  f"{r['rss'] / MiB:.0f}", f"{r['anon'] / MiB:.0f}", f"{blocks_b / MiB:.0f}",
                  f"{(r['rss'] - base - blocks_b) / MiB:.0f}")
    con.print(t)
    con.print(f"runtime alone (torch + fastvideo imported, distributed state initialised): "
              f"{base / MiB:.0f} MiB peak RSS")
    for dtype in sorted({r["dtype"] for r in res["rows"]}):
        rs = [r for r in res["rows"] if r["dtype"] == dtype]
        if len(rs) > 1:
            lo, hi = min(rs, key=lambda r: r["blocks"]), max(rs, key=lambda r: r["blocks"])
            con.print(f"{dtype}: peak RSS at {hi['blocks']} blocks / at {lo['blocks']} blocks = "
                      f"{hi['rss'] / lo['rss']:.3f} (flat in depth when ~1)")


def released_loop(args) -> list[str]:
    """The generated loop the sampling sections run on the released widths: t2v, 3 steps,
    no CFG, the --parity-shape latent, 64 text tokens."""
    return ["--loop", "t2v", "--steps", "3", "--guidance", "1", "--shape", args.parity_shape, "--text-len", "64"]


def section_sampling(args) -> dict:
    """Sampling parity's timing: each side's median wall time per DiT call, measured
    side by side in one run (the reference sampler with our reference DiT, FastVideo's
    LongCat stages with its native DiT): the tiny golden t2v trajectory, and a
    generated t2v loop on the released widths (the shallowest --blocks checkpoint)."""
    work = cache_dir() / "runs-sampling"
    _rm(work)
    work.mkdir(parents=True)
    root = Path(__file__).resolve().parent.parent
    runs = [("tiny-a (golden traj_t2v_cfg)", "fp32", root / "golden" / "tiny-a",
             ["--case", str(root / "golden" / "tiny-a" / "cases" / "traj_t2v_cfg.safetensors")])]
    blocks = min(args.blocks)
    for dtype in args.dtypes:
        runs.append((f"released widths, {blocks} blocks", dtype, cached_checkpoint(dtype, blocks),
                     released_loop(args)))
    rows = []
    for label, dtype, src, extra in runs:
        conv = work / f"conv-{len(rows)}"
        _check(measure(CLI + ["convert", str(src), str(conv), "--quiet", "--no-fsync"]), "convert")
        print(f"  parity --mode sampling, {label}, {dtype} ...", file=sys.stderr, flush=True)
        rep = work / f"report-{len(rows)}"
        s = measure(CLI + ["parity", str(src), str(conv), "--device", args.device, "--mode", "sampling",
                           "--sigmas", "original", "--dtype", dtype, "--quiet", "--report", str(rep), *extra])
        if s.rc not in (0, 1):
            _check(s, "parity --mode sampling")
        report = json.loads((rep / "report.json").read_text())
        (t,) = report["timing"]
        rows.append({"checkpoint": label, "dtype": dtype, "calls": t["dit_calls"],
                     "reference_ms": t["reference_ms_per_dit_call"], "native_ms": t["native_ms_per_dit_call"],
                     "ratio": t["native_over_reference"], "first_divergent": report["first_divergent"],
                     "seconds": s.seconds})
        _rm(conv)
    _rm(work)
    return {"shape": args.parity_shape, "rows": rows}


def print_sampling(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(width=200, highlight=False)
    t = Table(title="sampling parity: wall time per DiT call, median, same run (--sigmas original)")
    for c in ("checkpoint", "dtype", "DiT calls", "reference ms", "native ms", "native / reference",
              "first divergent", "seconds"):
        t.add_column(c, justify="right")
    for r in res["rows"]:
        t.add_row(r["checkpoint"], r["dtype"], f"{r['calls']['reference']} / {r['calls']['native']}",
                  f"{r['reference_ms']:.1f}", f"{r['native_ms']:.1f}", f"{r['ratio']:.2f}",
                  str(r["first_divergent"]), f"{r['seconds']:.1f}")
    con.print(t)


def section_fixes(args) -> dict:
    """The fixes' cost, side by side in one run: per DiT call and per loop (the DiT calls of
    the loop summed), the reference against stock FastVideo, FastVideo with ``--fixes all`` and
    patched FastVideo (``fixes build``: a patched copy, no run-time fixes); the tiny golden
    trajectories (t2v with CFG, video continuation with enhance_hf) and a generated t2v loop on
    the released widths (the shallowest --blocks checkpoint)."""
    work = cache_dir() / "runs-fixes"
    _rm(work)
    work.mkdir(parents=True)
    root = Path(__file__).resolve().parent.parent
    patched = work / "fastvideo-patched"
    _check(measure(CLI + ["fixes", "build", str(patched)]), "fixes build")
    patched_env = {"PYTHONPATH": os.pathsep.join([str(patched), str(root)] +
                                                 [p for p in [os.environ.get("PYTHONPATH")] if p])}
    cases = root / "golden" / "tiny-a" / "cases"
    extra = root / "golden" / "extra" / "tiny-a" / "cases"
    runs = [("tiny-a traj_t2v_cfg", "fp32", root / "golden" / "tiny-a",
             ["--case", str(cases / "traj_t2v_cfg.safetensors")]),
            ("tiny-a traj_vc_cache_hf", "fp32", root / "golden" / "tiny-a",
             ["--case", str(extra / "traj_vc_cache_hf.safetensors")])]
    blocks = min(args.blocks)
    runs.append((f"released widths, {blocks} blocks", "fp32", cached_checkpoint("fp32", blocks),
                 released_loop(args)))
    rows = []
    for label, dtype, src, extra_args in runs:
        conv = work / f"conv-{len(rows)}"
        _check(measure(CLI + ["convert", str(src), str(conv), "--quiet", "--no-fsync"]), "convert")
        got: dict = {"reference": [], "stock": [], "fixed": [], "patched": []}
        last: dict = {}
        for rep_i in range(args.reps):               # stock, fixed and patched interleaved, each with its reference
            for side, fix_args in (("stock", []), ("fixed", ["--fixes", "all"]), ("patched", [])):
                print(f"  parity --mode sampling, {label}, {side} ({rep_i + 1}/{args.reps}) ...", file=sys.stderr,
                      flush=True)
                rep = work / f"report-{len(rows)}-{side}"
                _rm(rep)
                smp = measure(CLI + ["parity", str(src), str(conv), "--device", args.device, "--mode", "sampling",
                                     "--dtype", dtype, "--quiet", "--report", str(rep), *fix_args, *extra_args],
                              env=patched_env if side == "patched" else None)
                if smp.rc not in (0, 1):
                    _check(smp, f"parity --mode sampling ({side})")
                report = json.loads((rep / "report.json").read_text())
                (t,) = report["timing"]
                got[side].append((t["native_ms_per_dit_call"], t["loop_dit_s"]["native"],
                                  t["reference_ms_per_dit_call"]))
                got["reference"].append((t["reference_ms_per_dit_call"], t["loop_dit_s"]["reference"]))
                last[side] = {"calls": t["dit_calls"]["native"], "passed": report["passed"],
                              "first_divergent": report["first_divergent"]}
                last["reference"] = {"calls": t["dit_calls"]["reference"]}
        row = {"checkpoint": label, "dtype": dtype, "reps": args.reps}
        if label.startswith("released"):
            # the three DiTs again, taking turns in one process (bench/dit_calls.py): the bar's ratios
            one = work / "dit-calls.json"
            print(f"  DiT calls in one process, {label} ...", file=sys.stderr, flush=True)
            _check(measure([sys.executable, "-m", "bench.dit_calls", str(src), str(conv), str(patched),
                            "--shape", args.parity_shape, "--reps", str(max(args.reps, 5)), "--json", str(one)],
                           cwd=str(root)), "bench.dit_calls")
            calls = json.loads(one.read_text())
            row["one_process"] = {k: {"ms": statistics.median(v), "ms_spread": [min(v), max(v)]}
                                  for k, v in calls.items()}
            row["one_process"]["reps"] = len(calls["stock"])
        for side, vals in got.items():
            ms = [v[0] for v in vals]
            row[side] = dict(last[side], ms=statistics.median(ms), ms_spread=[min(ms), max(ms)],
                             loop_s=statistics.median(v[1] for v in vals))
            if side != "reference":
                # each run's DiT call over the reference's in the same process: what the machine did
                # to that process (frequency, a neighbour's load) cancels out of the ratio
                row[side]["per_ref"] = statistics.median(v[0] / v[2] for v in vals)
        rows.append(row)
        _rm(conv)
    _rm(work)
    return {"shape": args.parity_shape, "rows": rows}


def _ms_cell(side: dict) -> str:
    """A side's median ms with its spread across reps: "1260.6 [1123.2-1410.0]"."""
    lo, hi = side["ms_spread"]
    return f"{side['ms']:.1f} [{lo:.1f}-{hi:.1f}]"


def print_fixes(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(width=220, highlight=False)
    t = Table(title="fixes: wall time per DiT call and per loop (DiT calls summed), median over the reps of "
                    "each run's median, same run, fp32 (per-call spread across reps in brackets); paired: the "
                    "median over runs of each run's DiT call over its own reference's (patched over stock; patched "
                    "over the reference run in the same process)")
    for c in ("checkpoint", "calls ref / stock / fixed / patched", "ref ms", "stock ms", "fixed ms", "patched ms",
              "fixed / stock", "patched / stock", "patched / ref", "patched / stock, paired", "patched / ref, paired",
              "loop s ref / stock / fixed / patched", "stock",
              "fixed", "patched"):
        t.add_column(c, justify="right")
    for r in res["rows"]:
        ref, st, fx, pt = r["reference"], r["stock"], r["fixed"], r["patched"]
        ms = _ms_cell

        def verdict(side):
            return "passes" if side["passed"] else f"first divergent {side['first_divergent']}"
        t.add_row(r["checkpoint"], f"{ref['calls']} / {st['calls']} / {fx['calls']} / {pt['calls']}", ms(ref),
                  ms(st), ms(fx), ms(pt), f"{fx['ms'] / st['ms']:.2f}", f"{pt['ms'] / st['ms']:.2f}",
                  f"{pt['ms'] / ref['ms']:.2f}", f"{pt['per_ref'] / st['per_ref']:.2f}", f"{pt['per_ref']:.2f}",
                  f"{ref['loop_s']:.2f} / {st['loop_s']:.2f} / {fx['loop_s']:.2f} / {pt['loop_s']:.2f}",
                  verdict(st), verdict(fx), verdict(pt))
    con.print(t)
    one = [r for r in res["rows"] if "one_process" in r]
    if one:
        t = Table(title="fixes: one DiT forward of each side, taking turns in ONE process (bench/dit_calls.py; "
                        "the same weights and input): median over reps of each rep's median of 3 calls")
        for c in ("checkpoint", "reps", "reference ms", "stock ms", "patched ms", "patched / stock",
                  "patched / reference", "stock / reference"):
            t.add_column(c, justify="right")
        for r in one:
            o = r["one_process"]
            t.add_row(r["checkpoint"], str(o["reps"]), _ms_cell(o["reference"]), _ms_cell(o["stock"]),
                      _ms_cell(o["patched"]),
                      f"{o['patched']['ms'] / o['stock']['ms']:.3f}", f"{o['patched']['ms'] / o['reference']['ms']:.3f}",
                      f"{o['stock']['ms'] / o['reference']['ms']:.3f}")
        con.print(t)


def section_sp(args) -> dict:
    """Sequence parallelism stock against fixed, side by side in one run: ``parity --sp 2``
    (spawned ranks) with and without ``--fixes sp-whole-sequence`` on the golden t2v case
    (18 tokens) and generated t2v inputs of 2048 and 4096 tokens on tiny-a; from each
    report's ``sp`` section: attention work per rank over one process's, the slowest rank's
    forward time, speedup over one process, peak memory per rank over one process's."""
    work = cache_dir() / "runs-sp"
    _rm(work)
    work.mkdir(parents=True)
    root = Path(__file__).resolve().parent.parent
    src = root / "golden" / "tiny-a"
    conv = work / "conv"
    _check(measure(CLI + ["convert", str(src), str(conv), "--quiet", "--no-fsync"]), "convert")
    runs = [("t2v case, 18 tokens", ["--case", str(src / "cases" / "t2v.safetensors")]),
            ("--shape 8,32,32, 2048 tokens", ["--shape", "8,32,32"]),
            ("--shape 16,32,32, 4096 tokens", ["--shape", "16,32,32"])]
    rows = []
    for label, extra in runs:
        got: dict = {"stock": [], "fixed": []}
        for rep_i in range(args.reps):
            for side, fix_args in (("stock", []), ("fixed", ["--fixes", "sp-whole-sequence"])):
                print(f"  parity --sp 2, {label}, {side} ({rep_i + 1}/{args.reps}) ...", file=sys.stderr, flush=True)
                rep = work / f"report-{side}"
                _rm(rep)
                smp = measure(CLI + ["parity", str(src), str(conv), "--sp", "2", "--sp-start", "spawn", "--quiet",
                                     "--report", str(rep), *fix_args, *extra])
                if smp.rc not in (0, 1):
                    _check(smp, f"parity --sp 2 ({side})")
                report = json.loads((rep / "report.json").read_text())
                sp = report.get("sp") or {}
                ranks = [r for r in sp.get("ranks", []) if r.get("ok")]
                if not ranks or not sp.get("baseline") or "forward_ms" not in sp["baseline"]:
                    got[side].append(None)
                    continue
                got[side].append({"work": sp["attention_work_ratio"], "rank_ms": max(r["forward_ms"] for r in ranks),
                                  "one_ms": sp["baseline"]["forward_ms"], "speedup": sp["speedup"],
                                  "memory": sp["memory_ratio"], "passed": report["passed"],
                                  "whole": sp["every_rank_whole_sequence"]})
        row = {"inputs": label, "reps": args.reps}
        for side, vals in got.items():
            ok = [v for v in vals if v]
            row[side] = None if not ok else {
                k: statistics.median(v[k] for v in ok) for k in ("work", "rank_ms", "one_ms", "speedup", "memory")}
            if ok:
                row[side].update(passed=all(v["passed"] for v in ok), whole=ok[-1]["whole"])
        rows.append(row)
    _rm(work)
    return {"rows": rows}


def print_sp(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(width=200, highlight=False)
    t = Table(title="sequence parallelism, SP 2 (spawned ranks), stock vs --fixes sp-whole-sequence: medians "
                    "over the reps")
    for c in ("inputs", "side", "work / rank", "slowest rank ms", "1 process ms", "speedup", "memory / rank",
              "whole sequence", "rows"):
        t.add_column(c, justify="right")
    ratios = []
    for r in res["rows"]:
        for side in ("stock", "fixed"):
            v = r[side]
            if v is None:
                t.add_row(r["inputs"], side, "did not run", "", "", "", "", "", "")
                continue
            t.add_row(r["inputs"], side, f"{v['work']:.2f}", f"{v['rank_ms']:.1f}", f"{v['one_ms']:.1f}",
                      f"{v['speedup']:.2f}", f"{v['memory']:.2f}", str(v["whole"]), "pass" if v["passed"] else "fail")
        if r["stock"] and r["fixed"]:
            ratios.append(f"{r['inputs']}: {r['stock']['rank_ms'] / r['fixed']['rank_ms']:.2f}")
    con.print(t)
    con.print("slowest rank, stock over fixed: " + "; ".join(ratios))


SECTIONS: dict[str, Callable] = {"conversion": section_conversion, "parity_blocks": section_parity_blocks,
                                 "sampling": section_sampling, "fixes": section_fixes, "sp": section_sp}


def print_conversion(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(width=200, highlight=False)
    sha = res["sha256"]
    t = Table(title=f"convert vs cp of the same bytes ({res['mode']}; median of {res['reps']})")
    for c in ("checkpoint", "GB", "cp s", "cp+sync s", "convert\n--no-fsync s", "x cp",
              "--no-fsync\n--no-hash s", "x cp", "convert s", "x (cp+sync)", "verify s", "peak RSS MiB\ncp / conv / verify", "peak anon MiB\ncp / conv / verify",
              "file RSS MiB\nconv / verify"):
        t.add_column(c, justify="right")
    for r in res["rows"]:
        s, p = r["seconds"], r["peak"]
        t.add_row(f"{r['dtype']} {r['blocks']} blocks", f"{r['bytes'] / GB:.2f}", f"{s['cp']:.2f}",
                  f"{s['cp+sync']:.2f}", f"{s['convert --no-fsync']:.2f}",
                  f"{r['ratio']['convert --no-fsync / cp']:.2f}", f"{s['convert --no-fsync --no-hash']:.2f}",
                  f"{r['ratio']['convert --no-fsync --no-hash / cp']:.2f}", f"{s['convert']:.2f}",
                  f"{r['ratio']['convert / (cp+sync)']:.2f}", f"{s['verify']:.2f}",
                  " / ".join(f"{p[k]['rss'] / MiB:.0f}" for k in ("cp", "convert", "verify")),
                  " / ".join(f"{p[k]['anon'] / MiB:.0f}" for k in ("cp", "convert", "verify")),
                  " / ".join(f"{p[k]['file'] / MiB:.0f}" for k in ("convert", "verify")))
    con.print(t)
    con.print(f"sha256 on this machine: {sha['per_core_GBps']:.2f} GB/s per core, {sha['all_cores_GBps']:.2f} GB/s "
              f"on {sha['cores']} cores. convert hashes every output tensor once, so it cannot beat "
              f"bytes / {sha['all_cores_GBps']:.2f} GB/s; `cp` does no hashing.")
    anon = [r["peak"]["convert"]["anon"] / MiB for r in res["rows"]]
    con.print(f"convert peak anonymous memory across sizes: {min(anon):.0f}-{max(anon):.0f} MiB "
              f"(target < 1024, flat)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32", "fp16"])
    ap.add_argument("--blocks", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--reps", type=int, default=int(os.environ.get("LONGCAT_BENCH_REPS", 3)))
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--parity-shape", default="2,16,16", help="Latent T,H,W for block-streamed parity.")
    ap.add_argument("--device", default="cpu", help="Where the parity sections run both sides (cpu, cuda); "
                                                    "the sp section runs CPU processes.")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args(argv)
    results = {}
    t0 = time.perf_counter()
    for name in args.sections:
        print(f"bench: {name}", file=sys.stderr, flush=True)
        results[name] = SECTIONS[name](args)
    if "conversion" in results:
        print_conversion(results["conversion"])
    if "parity_blocks" in results:
        print_parity_blocks(results["parity_blocks"])
    if "sampling" in results:
        print_sampling(results["sampling"])
    if "fixes" in results:
        print_fixes(results["fixes"])
    if "sp" in results:
        print_sp(results["sp"])
    print(f"bench: {time.perf_counter() - t0:.0f}s in all; checkpoints cached in {cache_dir()}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
