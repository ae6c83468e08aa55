"""Sequence-parallel parity (``parity --sp N``): the reference runs once, here; the
native side runs in FastVideo's own sequence parallelism, N processes that this
module launches (parity/sp_worker.py), plus one process of its own with all cores
running the same native model alone (FastVideo's SP size 1) as the baseline. Every rank's layers are compared against the reference with
the one-process runner's correspondence, metrics and policy (cases
``<case>:1proc``, ``<case>:rank<r>``), and the work each rank did is measured:
every attention call's shape, wall time per forward, peak memory.

Launch: each rank is its own process group (a Ctrl-C in the terminal reaches only
this process, which then stops them); the launcher kills a whole group when a rank
fails (the others would wait in a collective), when the timeout passes, on
Ctrl-C / SIGTERM, and at exit; each rank also dies with its parent (Linux
PR_SET_PDEATHSIG). Start methods: ``spawn`` runs ``python -m parity.sp_worker``
(a fresh interpreter per rank; always on CUDA, where a CUDA context cannot be
forked); ``fork`` (the CPU default where each rank gets one thread) forks this
process after FastVideo is imported, which saves its import (about 8 s per process
on the 2-core CI machine). GNU OpenMP runs parallel regions slower in a forked
process, so ``auto`` forks only where each rank gets one thread (where forked and
fresh ranks time alike), and the forked baseline's forward times are taken from the
same model run again in this process, with all cores. The timeout bounds each
launch (the baseline, then the N ranks).
"""
from __future__ import annotations

import atexit
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from longcat_convert.errors import BadInput

from . import native as nat
from . import refside
from . import report as R
from .correspondence import LayerPair, layer_pairs
from .inputs import Inputs, effective_bsa
from .policy import dtype_name
from .runner import (LOW_PRECISION, Setup, Sides, by_loras, _bsa_notes, _compare, _with_caches,
                     reference_forward, resolve_lora_files)

DEFAULT_TIMEOUT = 600.0
START_METHODS = ("auto", "fork", "spawn")
ROOT = Path(__file__).resolve().parent.parent
# Timed forwards per job after the recorded one (median): 10 when a forward takes under
# 50 ms, 3 under 0.5 s, 1 under 60 s, else the recorded forward's time stands.
REPEATS = ((50.0, 10), (500.0, 3), (60_000.0, 1))
BSA_SP_NOTE = ("BSA under SP: FastVideo's LongCatSelfAttention hands flash_attn_bsa_3d the latent shape with H and W "
               "divided by cp_split_hw ({split} at SP {n}), while each rank's q/k/v still hold the whole sequence")


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- launching

@dataclass(eq=False)
class Proc:
    group: str
    rank: int
    pid: int
    log: Path
    popen: subprocess.Popen | None = None
    state: str = "running"        # running | exited | killed
    code: int | None = None       # exit status, or -signal
    why: str = ""                 # why the launcher killed it


_LIVE: set[Proc] = set()


def _kill(p: Proc, why: str = "") -> None:
    """SIGKILL the rank's whole process group, reap it."""
    if p.state == "running":
        p.state, p.why = "killed", why
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _reap(p)


def _reap(p: Proc) -> None:
    try:
        if p.popen is not None:
            p.popen.wait()
            if p.code is None:
                p.code = p.popen.returncode
        else:
            _, status = os.waitpid(p.pid, 0)
            if p.code is None:
                p.code = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass
    _LIVE.discard(p)


def _kill_all_live() -> None:
    for p in list(_LIVE):
        _kill(p, "the launcher exited")


atexit.register(_kill_all_live)


def _exited(p: Proc) -> bool:
    """Has it exited? (not reaped yet: its process group stays valid for the kill that
    sweeps up anything it started)."""
    try:
        info = os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    if info is None:
        return False
    p.code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    return True


class Interrupted(KeyboardInterrupt):
    """SIGTERM of the launcher, raised like Ctrl-C so that the ranks are stopped."""


class Launcher:
    """Starts the N processes of one group, waits for all of them within the timeout,
    stops them all as soon as one fails, and leaves none behind."""

    def __init__(self, workdir: Path, spec_path: Path, start: str, timeout: float):
        self.dir, self.spec, self.start, self.timeout = workdir, spec_path, start, timeout

    def _start(self, group: str, rank: int, world: int) -> Proc:
        log = self.dir / f"{group}-{rank}.log"
        if self.start == "fork":
            sys.stdout.flush(), sys.stderr.flush()
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                from .sp_worker import forked_main
                forked_main(self.spec, group, rank, world, parent, log)     # never returns
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass                     # the child did it first
            p = Proc(group, rank, pid, log)
        else:
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       TORCHINDUCTOR_COMPILE_THREADS="1",
                       PYTHONPATH=os.pathsep.join([str(ROOT)] + [x for x in [os.environ.get("PYTHONPATH")] if x]))
            with open(log, "ab") as f:
                popen = subprocess.Popen(
                    [sys.executable, "-m", "parity.sp_worker", str(self.spec), "--group", group, "--rank", str(rank),
                     "--world", str(world), "--parent", str(os.getpid())],
                    env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            p = Proc(group, rank, popen.pid, log, popen=popen)
        _LIVE.add(p)
        return p

    def run(self, group: str, world: int) -> list[dict]:
        """Run ranks 0..world-1 of ``group`` -> one outcome per rank:
        ``{"rank", "ok", "result" | "error"}``."""
        procs: list[Proc] = []
        try:
            for r in range(world):
                procs.append(self._start(group, r, world))
            deadline = time.monotonic() + self.timeout
            while True:
                running = [p for p in procs if p.state == "running"]
                for p in running:
                    if _exited(p):
                        p.state = "exited"
                        _kill(p)          # sweep its group, reap it
                failed = [p for p in procs if p.state == "exited" and p.code != 0]
                running = [p for p in procs if p.state == "running"]
                if not running:
                    break
                if failed:
                    first = min(failed, key=lambda p: self._error_time(p))
                    for p in running:
                        _kill(p, f"stopped by the launcher after rank {first.rank} failed")
                    break
                if time.monotonic() > deadline:
                    where = _stacks(running)
                    for p in running:
                        _kill(p, f"did not finish within {self.timeout:g} s (killed by the launcher)"
                                 + (f"; it was at {where[p]}" if where.get(p) else ""))
                    break
                time.sleep(0.02)
        finally:
            for p in procs:
                if p in _LIVE:
                    _kill(p, "the launcher was interrupted")
        return [self._outcome(p) for p in procs]

    def _error_time(self, p: Proc) -> float:
        e = self._error(p)
        return e.get("time", float("inf")) if e else float("inf")

    def _error(self, p: Proc) -> dict | None:
        f = self.dir / f"{p.group}-{p.rank}.error.json"
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            return None

    def _outcome(self, p: Proc) -> dict:
        res = self.dir / f"{p.group}-{p.rank}.result.pt"
        if p.state == "exited" and p.code == 0 and res.is_file():
            return {"rank": p.rank, "ok": True, "result": torch.load(res, weights_only=False)}
        err = self._error(p)
        if err is None:
            if p.why:
                err = {"type": "Stopped" if "after rank" in p.why else "Timeout", "message": p.why}
            else:
                how = f"killed by signal {-p.code}" if (p.code or 0) < 0 else f"exited with status {p.code}"
                err = {"type": "Exited", "message": f"{how} without a result; log: {_tail(p.log)}"}
        err.setdefault("time", float("inf"))
        return {"rank": p.rank, "ok": False, "error": err}


def _stacks(procs: list[Proc], wait: float = 1.0) -> dict:
    """Ask each process for its Python stacks (SIGUSR1, parity/sp_worker.py) -> the
    innermost frame of its working thread, read from its log."""
    sizes = {}
    for p in procs:
        try:
            sizes[p] = p.log.stat().st_size
            os.kill(p.pid, signal.SIGUSR1)
        except OSError:
            pass
    time.sleep(wait)
    out = {}
    for p, size in sizes.items():
        try:
            with open(p.log, "rb") as f:
                f.seek(size)
                dump = f.read().decode(errors="replace").splitlines()
        except OSError:
            continue
        threads: list[list[str]] = []
        for ln in dump:
            if ln.startswith(("Thread 0x", "Current thread 0x")):
                threads.append([])
            elif ln.strip().startswith("File ") and threads:
                threads[-1].append(ln.strip())
        if threads:    # the working thread has the deepest stack; faulthandler lists innermost first
            frame = max(threads, key=len)[0]
            m = re.match(r'File "(.*)", line (\d+) in (.*)', frame)
            out[p] = f"{'/'.join(Path(m.group(1)).parts[-2:])}:{m.group(2)} in {m.group(3)}" if m else frame
    return out


def _tail(log: Path) -> str:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "(none)"
    return lines[-1][:300] if lines else "(empty)"


class _TermAsInterrupt:
    """SIGTERM -> Interrupted while ranks may be running (main thread only)."""

    def __enter__(self):
        self.prev = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise Interrupted(f"signal {signum}")
            self.prev = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            signal.signal(signal.SIGTERM, self.prev)


# --------------------------------------------------------------------------- the reference side

def _reference_side(setup: Setup, loras) -> tuple[Sides, list[tuple[str, float]]]:
    """The reference (and the float32 truth in low precision) with ``loras`` applied, as
    ``runner.load_sides`` loads it; no native model here. -> (sides, converted LoRA files)."""
    opened = refside.open_source(setup.source)
    config, _, model_dir = opened
    ref = refside.load_reference(opened, dtype=setup.dtype, device=setup.device, attention=setup.attention)
    tdir = nat.transformer_dir(setup.converted)
    ndims = nat.native_dims(nat.read_native_config(tdir))
    if ndims != config.dims:
        raise BadInput(f"{tdir / 'config.json'}: converted config {ndims} does not match the source's {config.dims}")
    truth = None
    if setup.dtype in LOW_PRECISION:
        truth = refside.load_reference(opened, dtype=torch.float32, device=setup.device, attention=setup.attention)
    notes, conv = [], []
    for name, multiplier in loras:
        orig, cfile = resolve_lora_files(setup, model_dir, name)
        for m in (ref, truth):
            if m is not None:
                refside.apply_lora(m, orig, multiplier)
        conv.append((str(cfile), float(multiplier)))
        notes.append(f"LoRA {orig.stem} at multiplier {multiplier}: original format on the reference, "
                     f"converted format through FastVideo's LoRA layers on every native rank")
    if not config.text_tokens_zero_pad:
        notes.append("text_tokens_zero_pad=false: the original attends each sample to its valid text tokens only; "
                     "FastVideo's native model attends to every padded token (known difference, expected to fail "
                     "from the first cross-attention on)")
    return Sides(ref, None, truth, config.dims, config.text_tokens_zero_pad, notes, config), conv


def _bsa_params(setup: Setup, sides: Sides, inp: Inputs, report: dict, sp: int, *, T: int,
                num_cond_latents: int = 0, continuation: bool = False) -> dict | None:
    """What ``runner.bsa_for`` switches both sides to (None: dense), and its notes."""
    params = effective_bsa(inp.bsa, sides.config)
    if params is None and sides.config.enable_bsa:
        params = sides.config.bsa_params.to_dict()
    if params is not None:
        notes = _bsa_notes(setup, params, T, num_cond_latents, continuation)
        notes.append(BSA_SP_NOTE.format(split="x".join(map(str, cp_split_hw(sp))), n=sp))
        report["notes"] += [n for n in notes if n not in report["notes"]]
    return params


def cp_split_hw(sp: int) -> list[int]:
    """The (H, W) split FastVideo's LongCat self-attention computes for BSA under SP
    (the factor pair of ``sp`` closest to square, smaller first)."""
    pairs = [[i, sp // i] for i in range(1, int(sp ** 0.5) + 1) if sp % i == 0]
    return min(pairs, key=lambda x: abs(x[0] - x[1]))


@dataclass
class Job:
    label: str                  # the report's case name (before :1proc / :rank<r>)
    inp: Inputs
    overrides: dict
    bsa: dict | None
    ref_acts: dict
    truth_acts: dict | None
    r_kv: dict | None
    t_kv: dict | None
    native_record: list[str]
    native_proj: list[str]
    feeds: dict
    kv_given: dict | None = None
    kv_from: str | None = None

    def payload(self) -> dict:
        return dict(label=self.label, inp=replace(self.inp, golden={}), overrides=self.overrides, bsa=self.bsa,
                    record=self.native_record, proj=self.native_proj, feeds=self.feeds,
                    kv_given=self.kv_given, kv_from=self.kv_from)


def _prepare_launch(setup: Setup, sp: int, start: str, report: dict) -> tuple[int, dict]:
    """-> (cores, torch threads per run: the baseline all cores, each rank cores // sp)."""
    if start == "fork":
        nat.ensure_runtime(setup.device)     # imported once here, inherited by every forked process
    cores = cpu_cores()
    threads = {"baseline": cores, "sp": max(1, cores // sp)}
    if start == "fork" and threads["sp"] > 1:
        report["notes"].append(f"--sp-start fork with {threads['sp']} threads per rank: OpenMP runs parallel regions "
                               "slower in a forked process, so the ranks' forward times are pessimistic")
    return cores, threads


def _group_sides(setup: Setup, loras, sp: int, report: dict):
    """The reference side of one LoRA group, its heads checked against ``sp``."""
    sides, conv = _reference_side(setup, loras)
    if sides.dims.heads % sp:
        raise BadInput(f"--sp {sp}: FastVideo's DistributedAttention divides the {sides.dims.heads} attention "
                       f"heads among the ranks; {sides.dims.heads} is not divisible by {sp}")
    report["notes"] += [n for n in sides.notes if n not in report["notes"]]
    return sides, conv


def _reference_job(setup: Setup, sides: Sides, inp: Inputs, pairs: list[LayerPair], label: str, bsa, *,
                   kv_ref=None, overrides=None) -> Job:
    """The reference half of ``runner._forward_pair`` (``runner.reference_forward``) with the
    job's BSA; what the native ranks must record and, in layer mode, be fed."""
    overrides = overrides or {}
    refs = [m for m in (sides.ref, sides.truth) if m is not None]
    try:
        for m in refs:
            m.set_bsa(bsa)
        ref = reference_forward(setup, sides, inp, pairs, kv_ref=kv_ref, overrides=overrides)
    finally:
        for m in refs:
            m.set_bsa(None)
    layer = setup.mode == "layer"
    feeds = {p.native: ref.inputs[p.name].cpu() for p in pairs if layer and p.name in ref.inputs}
    r_kv, t_kv = ref.kvs
    return Job(label, inp, overrides, bsa, ref.ref_acts, ref.truth_acts, r_kv, t_kv, ref.nat_names, ref.nat_proj,
               feeds)


def _jobs(setup: Setup, sides: Sides, inp: Inputs, pairs, report: dict, sp: int, kv_cache_frames: int) -> list[Job]:
    """The forwards of one input, as the one-process runner makes them (``run_case`` /
    ``run_kv_continuation``), with the reference side already run."""
    if not kv_cache_frames:
        bsa = _bsa_params(setup, sides, inp, report, sp, T=inp.hidden_states.shape[2],
                          num_cond_latents=inp.num_cond_latents, continuation=bool(inp.kv_cache))
        return [_reference_job(setup, sides, inp, pairs, inp.name, bsa)]
    T = inp.hidden_states.shape[2]
    if not 0 < kv_cache_frames < T:
        raise BadInput(f"--kv-cache-frames {kv_cache_frames} must be in [1, T={T})")
    ts = inp.timestep if inp.timestep.ndim == 2 else inp.timestep[:, None].expand(-1, T)
    cond = dict(hidden_states=inp.hidden_states[:, :, :kv_cache_frames],
                timestep=torch.zeros_like(ts[:, :kv_cache_frames]), num_cond_latents=0, return_kv=True,
                skip_crs_attn=True)
    bsa = _bsa_params(setup, sides, inp, report, sp, T=kv_cache_frames)
    first = _reference_job(setup, sides, inp, pairs, f"{inp.name}:cache", bsa, overrides=cond)
    cont = dict(hidden_states=inp.hidden_states[:, :, kv_cache_frames:], timestep=ts[:, kv_cache_frames:],
                num_cond_latents=kv_cache_frames, return_kv=False, skip_crs_attn=False)
    bsa = _bsa_params(setup, sides, inp, report, sp, T=T - kv_cache_frames, continuation=True)
    second = _reference_job(setup, sides, inp, pairs, f"{inp.name}:continue", bsa, kv_ref=first.r_kv, overrides=cont)
    if setup.mode == "layer":
        second.kv_given = {i: (k.cpu(), v.cpu()) for i, (k, v) in first.r_kv.items()}
    else:
        second.kv_from = first.label
    return [first, second]


# --------------------------------------------------------------------------- the run

def _check(setup: Setup, sp: int, start: str, timeout: float) -> str:
    if setup.mode not in ("e2e", "layer", "sampling"):
        raise BadInput(f"--sp runs with --mode e2e, layer or sampling, not {setup.mode}")
    if sp < 2:
        raise BadInput(f"--sp {sp}: the number of sequence-parallel ranks, at least 2")
    if not timeout > 0:
        raise BadInput(f"--sp-timeout {timeout}: must be a positive number of seconds")
    if start not in START_METHODS:
        raise BadInput(f"--sp-start {start!r}: one of {', '.join(START_METHODS)}")
    if setup.device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < sp:
            raise BadInput(f"--sp {sp} --device {setup.device}: NCCL needs {sp} GPUs, one per rank; "
                           f"this machine has {n}")
        if start == "fork":
            raise BadInput("--sp-start fork: a CUDA context does not survive fork(); use spawn on CUDA")
        return "spawn"
    if start == "auto":
        # Fork only where each rank runs one thread: GNU OpenMP runs parallel regions
        # slower in a forked process (measured: 2x on tiny-a's 10 ms forwards, 17% at
        # 2048 tokens, with 2 threads; the same at 1 thread).
        return "fork" if hasattr(os, "fork") and cpu_cores() // sp <= 1 else "spawn"
    return start


def run_sp_parity(setup: Setup, inputs: list[Inputs], *, sp: int, kv_cache_frames: int = 0,
                  timeout: float = DEFAULT_TIMEOUT, start: str = "auto", title: str | None = None) -> dict:
    """The parity report of every input with the native side under FastVideo's sequence
    parallelism in ``sp`` processes, plus the ``sp`` section (work per rank)."""
    start = _check(setup, sp, start, timeout)
    cuda = setup.device.startswith("cuda")
    env = R.environment(setup.device, dtype_name(setup.dtype), setup.attention)
    report = R.new_report("parity", title or f"LongCat parity ({setup.mode}, {dtype_name(setup.dtype)}, "
                          f"{setup.device}, sequence parallel x{sp})", mode=setup.mode, policy=setup.policy,
                          dtype=setup.dtype, device=setup.device, env=env)
    cores, threads = _prepare_launch(setup, sp, start, report)
    runs: dict[str, list[dict]] = {}          # run label -> per-group worker results (or errors)
    with _TermAsInterrupt(), tempfile.TemporaryDirectory(prefix="lcc-sp-") as tmp:
        for g, (loras, group) in enumerate(by_loras(setup, inputs).items()):
            sides, conv = _group_sides(setup, loras, sp, report)
            pairs = layer_pairs(sides.dims)
            jobs = [j for inp in group for j in _jobs(setup, sides, inp, pairs, report, sp, kv_cache_frames)]
            outcomes = _launch(setup, Path(tmp) / f"g{g}", [j.payload() for j in jobs], conv, sp=sp, start=start,
                               timeout=timeout, threads=threads)
            _compare_jobs(setup, sides, report, pairs, jobs, outcomes)
            for label, o in outcomes.items():
                runs.setdefault(label, []).append(o)
    R.finalize(report)
    report["sp"] = summarize(runs, sp=sp, start=start, backend="nccl" if cuda else "gloo", device=setup.device,
                             timeout=timeout, threads=threads, cores=cores)
    if report["sp"].get("finding"):
        report["notes"].append(report["sp"]["finding"])
    return report


def _launch(setup: Setup, work: Path, payloads: list[dict], conv, *, sp: int, start: str, timeout: float,
            threads: dict) -> dict[str, dict]:
    """The 1-process baseline, then the ``sp`` ranks, each running ``payloads`` on the
    native model built from the converted folder (``conv``: converted LoRAs) ->
    outcomes by run label (``1proc``, ``rank<r>``)."""
    work.mkdir()
    torch.save({"jobs": payloads}, work / "payload.pt")
    spec = dict(dir=str(work), payload=str(work / "payload.pt"), converted=str(Path(setup.converted).resolve()),
                dtype=str(setup.dtype).replace("torch.", ""), device=setup.device, loras=conv,
                threads=threads, repeats=REPEATS,
                init={"baseline": str(work / "init-baseline"), "sp": str(work / "init-sp")})
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    launcher = Launcher(work, work / "spec.json", start, timeout)
    outcomes = {"1proc": launcher.run("baseline", 1)[0]}
    if start == "fork" and outcomes["1proc"]["ok"]:
        _time_here(spec, payloads, setup.device, threads["baseline"], outcomes["1proc"]["result"])
    outcomes.update({f"rank{o['rank']}": o for o in launcher.run("sp", sp)})
    return outcomes


def run_sp_sampling(setup: Setup, cases: list, *, sp: int, sigmas: str = "fastvideo",
                    timeout: float = DEFAULT_TIMEOUT, start: str = "auto", title: str | None = None) -> dict:
    """Sampling parity (parity/sampling.py) with FastVideo's LongCat pipeline stages driving
    the native model under FastVideo's sequence parallelism in ``sp`` processes, plus the
    1-process baseline: the reference loop runs once here; every run's rows (cases
    ``<case>:1proc``, ``<case>:rank<r>``) are judged against it, and the ``sp`` section
    measures the work per rank over the whole loop (forward ms: median per DiT call)."""
    from .sampling import SIGMAS, run_reference
    from .trajectory import judge_rows
    if sigmas not in SIGMAS:
        raise BadInput(f"--sigmas {sigmas!r}: choose {' or '.join(SIGMAS)}")
    start = _check(setup, sp, start, timeout)
    cuda = setup.device.startswith("cuda")
    dname = dtype_name(setup.dtype)
    env = R.environment(setup.device, dname, setup.attention)
    report = R.new_report("parity", title or f"LongCat sampling parity ({dname}, {setup.device}, sigmas {sigmas}, "
                          f"sequence parallel x{sp})", mode="sampling", policy=setup.policy, dtype=setup.dtype,
                          device=setup.device, env=env)
    cores, threads = _prepare_launch(setup, sp, start, report)
    lowp = setup.dtype if setup.dtype in LOW_PRECISION else None
    runs: dict[str, list[dict]] = {}
    with _TermAsInterrupt(), tempfile.TemporaryDirectory(prefix="lcc-sp-") as tmp:
        for g, (loras, group) in enumerate(by_loras(setup, cases).items()):
            sides, conv = _group_sides(setup, loras, sp, report)
            refs, payloads = {}, []
            for case in group:
                T = case.inputs.latents.shape[2]
                bsa = _bsa_params(setup, sides, case, report, sp, T=T,
                                  num_cond_latents=case.settings.num_cond_latents)
                refs_m = [m for m in (sides.ref, sides.truth) if m is not None]
                try:
                    for m in refs_m:
                        m.set_bsa(bsa)
                    ref, _ = run_reference(sides.ref, case, dtype=setup.dtype, device=setup.device)
                    truth = None
                    if sides.truth is not None:
                        truth, _ = run_reference(sides.truth, case, dtype=torch.float32, device=setup.device)
                finally:
                    for m in refs_m:
                        m.set_bsa(None)
                refs[case.name] = (ref, truth)
                payloads.append(dict(label=case.name, loop=replace(case, golden={}), sigmas=sigmas, bsa=bsa))
            outcomes = _launch(setup, Path(tmp) / f"g{g}", payloads, conv, sp=sp, start=start, timeout=timeout,
                               threads=threads)
            for case in group:
                ref, truth = refs[case.name]
                for label in _order(outcomes):
                    o, name = outcomes[label], f"{case.name}:{label}"
                    if o["ok"]:
                        res = o["result"]["jobs"][case.name]
                        report["notes"] += [n for n in res["notes"] if n not in report["notes"]]
                        judge_rows(report, name, res["rows"], ref, policy=setup.policy, dtype=setup.dtype,
                                   device=setup.device, truth=truth, lowp_dtype=lowp,
                                   names=("native pipeline", "reference"))
                    elif (o["error"].get("job") or group[0].name) == case.name:
                        R.add_layer(report, name=label, native_name=o["error"].get("where"), metrics={},
                                    passed=False, failures=[_failure(label, o["error"])], case=name)
            for label, o in outcomes.items():
                runs.setdefault(label, []).append(o)
    report["notes"].append("sampling under SP: FastVideo's LongCat stages drive each rank's native model through the "
                           "whole loop; forward ms in the sp section: median wall time per denoising DiT call; "
                           "attention work: every attention call of the loop")
    R.finalize(report)
    report["sp"] = summarize(runs, sp=sp, start=start, backend="nccl" if cuda else "gloo", device=setup.device,
                             timeout=timeout, threads=threads, cores=cores)
    if report["sp"].get("finding"):
        report["notes"].append(report["sp"]["finding"])
    return report


def _time_here(spec: dict, payloads: list[dict], device: str, threads: int, result: dict) -> None:
    """Fork start: the baseline's forward times come from the same model run again in
    this process, with all cores (a forked process's OpenMP runs them slower, see
    ``_check``); its activations, attention calls and memory from its own process."""
    from .sp_worker import native_work
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        here = native_work(spec, payloads, device, 1, {})
    finally:
        torch.set_num_threads(prev)
    for label, job in here["jobs"].items():
        result["jobs"][label]["ms"] = job["ms"]
    result["timed_in"] = "the launching process"


def _compare_jobs(setup, sides, report, pairs, jobs: list[Job], outcomes: dict[str, dict]) -> None:
    """Every run's layers against the reference, job by job (cases ``<job>:1proc``,
    ``<job>:rank<r>``); a run that failed gets one failing row in the job it failed in,
    named after the compared layer it was in (else after the run)."""
    order = _order(outcomes)
    for job in jobs:
        for label in order:
            o, case = outcomes[label], f"{job.label}:{label}"
            if o["ok"]:
                res = o["result"]["jobs"][job.label]
                nat_acts = res["acts"]
                compared = _with_caches(pairs, (job.ref_acts, nat_acts, job.truth_acts),
                                        (job.r_kv, res["kv"], job.t_kv))
                _compare(report, compared, job.ref_acts, nat_acts, setup=setup, inp=job.inp, case=case,
                         zero_pad=sides.zero_pad, truth_acts=job.truth_acts)
                continue
            err = o["error"]
            if (err.get("job") or jobs[0].label) != job.label:
                continue                       # it failed in another of its jobs
            R.add_layer(report, name=_ref_name(pairs, err.get("where")) or label, native_name=err.get("where"),
                        metrics={}, passed=False, failures=[_failure(label, err)], case=case)


def _order(outcomes: dict[str, dict]) -> list[str]:
    """The baseline, the ranks that finished, then the failed ones in the order they failed."""
    failed = [label for label, o in outcomes.items() if label != "1proc" and not o["ok"]]
    failed.sort(key=lambda label: outcomes[label]["error"]["time"])
    return ["1proc"] + [label for label, o in outcomes.items() if label != "1proc" and o["ok"]] + failed


def _failure(label: str, err: dict) -> str:
    if err["type"] in ("Timeout", "Stopped", "Exited"):
        return f"{label}: {err['message']}"
    return f"{label} raised {err['type']}: {err['message']}"


def _ref_name(pairs, native: str | None) -> str | None:
    if not native:
        return None
    if native.endswith(".self_attn.to_out"):
        native = native[: -len(".to_out")]
    return next((p.name for p in pairs if p.native == native), None)


# --------------------------------------------------------------------------- work accounting

def _by_kind(calls: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for c in calls:
        k = out.setdefault(c["kind"], {"calls": 0, "work": 0})
        k["calls"] += 1
        k["work"] += c["work"]
        for f in ("batch", "heads", "q_len", "k_len", "head_dim", "tokens_in", "latent_shape_q"):
            if f in c:
                vals = k.setdefault(f, [])
                if c[f] not in vals:
                    vals.append(c[f])
    return out


def _run_stats(results: list[dict]) -> dict:
    """One run (the baseline, or one rank) over every launch: forward ms (sum over its
    forwards of the median of each), peak memory, attention calls and work."""
    jobs = [j for r in results for j in r["jobs"].values()]
    calls = [c for j in jobs for c in j["attention"]]
    mem = [r["memory"] for r in results]
    return {"forward_ms": sum(statistics.median(j["ms"]) for j in jobs),
            "timed_in": results[0].get("timed_in", "its own process"),
            "forwards": len(jobs),
            "threads": results[0]["threads"],
            "peak_memory_mib": round(max(m["peak_mib"] - m["start_mib"] for m in mem), 1),
            "memory_kind": mem[0]["kind"],
            "attention_calls": len(calls),
            "attention": _by_kind(calls),
            "attention_work": sum(c["work"] for c in calls)}


def summarize(runs: dict[str, list[dict]], *, sp: int, start: str, backend: str, device: str, timeout: float,
              threads: dict, cores: int) -> dict:
    """The report's ``sp`` section (see parity/report.py)."""
    out = {"world_size": sp, "backend": backend, "start": start, "device": device, "timeout_s": timeout,
           "cores": cores, "threads": {"baseline": threads["baseline"], "rank": threads["sp"]},
           "baseline": None, "ranks": [], "attention_work_ratio": None, "attention_work_ratio_by_kind": {},
           "speedup": None, "memory_ratio": None, "every_rank_whole_sequence": None, "finding": None}
    base_o = runs.get("1proc", [])
    base = _run_stats([o["result"] for o in base_o]) if base_o and all(o["ok"] for o in base_o) else None
    out["baseline"] = base if base else {"error": _first_error(base_o)}
    ranks_ok = True
    for r in range(sp):
        os_ = runs.get(f"rank{r}", [])
        if not os_ or not all(o["ok"] for o in os_):
            ranks_ok = False
            bad = {"rank": r, "ok": False, "error": _first_error(os_)}
            calls = [c for o in os_ if not o["ok"] for c in o["error"].get("attention", [])]
            if calls:     # what it did before it failed
                bad["attention_before_failure"] = _by_kind(calls)
            out["ranks"].append(bad)
            continue
        st = _run_stats([o["result"] for o in os_])
        st = {"rank": r, "ok": True, **st}
        if base and base["attention_work"]:
            st["attention_work_ratio"] = st["attention_work"] / base["attention_work"]
            st["attention_work_ratio_by_kind"] = {
                k: v["work"] / base["attention"][k]["work"] if k in base["attention"] and base["attention"][k]["work"]
                else None for k, v in st["attention"].items()}
        out["ranks"].append(st)
    if not (base and ranks_ok):
        return out
    ranks = out["ranks"]
    out["attention_work_ratio"] = max(r.get("attention_work_ratio") or 0.0 for r in ranks)
    kinds = sorted({k for r in ranks for k in r.get("attention_work_ratio_by_kind", {})})
    out["attention_work_ratio_by_kind"] = {
        k: max((r["attention_work_ratio_by_kind"].get(k) or 0.0) for r in ranks) for k in kinds}
    slowest = max(r["forward_ms"] for r in ranks)
    out["speedup"] = base["forward_ms"] / slowest if slowest > 0 else None
    if base["peak_memory_mib"] > 0:
        out["memory_ratio"] = max(r["peak_memory_mib"] for r in ranks) / base["peak_memory_mib"]
    whole = bool(base["attention_work"]) and all(
        r["attention_work"] >= base["attention_work"] * (1 - 1e-9) for r in ranks)
    out["every_rank_whole_sequence"] = whole
    if whole:
        out["finding"] = _finding(out, base, ranks, sp)
    return out


def _first_error(outcomes: list[dict]) -> str:
    for o in outcomes:
        if not o["ok"]:
            e = o["error"]
            return f"{e['type']}: {e['message']}"
    return "did not run"


def _fmt_vals(v) -> str:
    return "/".join(str(x) for x in v) if isinstance(v, list) else str(v)


def _finding(out: dict, base: dict, ranks: list[dict], sp: int) -> str:
    dist = ranks[0]["attention"].get("self_attn.distributed")
    by_kind = ", ".join(f"{k} {v:.2f}x" for k, v in out["attention_work_ratio_by_kind"].items())
    head = "FastVideo's native LongCat DiT does not shard the sequence under sequence parallelism: every rank holds all the tokens; "
    if dist and "tokens_in" in dist:
        head += (f"DistributedAttention receives the same {_fmt_vals(dist['tokens_in'])} tokens on each of the {sp} ranks "
                 f"and its all-to-all gives every rank {_fmt_vals(dist['q_len'])} tokens (each token {sp} times; the "
                 f"copies cancel in the softmax) with {_fmt_vals(dist['heads'])} of "
                 f"{_fmt_vals(base['attention']['self_attn.distributed']['heads'])} heads; every other attention runs "
                 f"whole on every rank. ")
    else:
        head += "every attention of the forward runs whole on every rank (no all-to-all on this path). "
    speed = f"{out['speedup']:.2f}x" if out["speedup"] is not None else "n/a"
    return (head + f"No rank does less attention work than one process: {out['attention_work_ratio']:.2f}x per rank "
            f"({by_kind}); speedup {speed} (1-process ms / slowest rank ms).")
