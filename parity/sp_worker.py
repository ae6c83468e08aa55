"""One process of a sequence-parallel parity run (``parity --sp N``): FastVideo's
real native LongCat DiT under FastVideo's own sequence parallelism.

    python -m parity.sp_worker SPEC.json --group GROUP --rank R --world N

The launcher (parity/sp.py, parity/launcher.py) writes SPEC.json (converted folder, dtype,
device, threads, LoRAs, the rendezvous file of each group) and a payload of
forward jobs (inputs, argument overrides, the modules to record, the reference's
module inputs to feed in layer mode, a K/V cache to use), starts one process per
rank of a group -- ``python -m`` (a fresh interpreter; always on CUDA) or a fork
of the launcher (CPU: skips FastVideo's import, about 8 s per process) -- and
reads back what this module writes into the run's folder (a loop job,
``parity --mode sampling --sp N``, runs FastVideo's pipeline stages through the
case's whole denoising loop instead of one forward and returns the loop's rows):

- ``GROUP-R.result.pt``: per job the recorded activations (the compared layers,
  same names as the in-process runner), the returned K/V cache, the wall time of
  each timed repeat, and every attention call this rank made; per process the
  peak memory and the threads it used;
- ``GROUP-R.error.json`` when the work raised: exception type, first line of its
  message, the compared native module it was in, when.

The distributed engine is torch.distributed (gloo on a CPU, NCCL on CUDA) set up
by FastVideo's ``maybe_init_distributed_environment_and_model_parallel(1, N)``
through ``parity.native.ensure_runtime(sp_size=N, init_file=...)``; the model's
``DistributedAttention`` does the all-to-all. Nothing here takes part in it: the
hooks and the wrapper around ``torch.nn.functional.scaled_dot_product_attention``
(which FastVideo's SDPA backend and LongCat's plain-SDPA paths call fully
qualified) and around LongCat's ``flash_attn_bsa_3d`` only record shapes.

Test-only fault injection (tests/test_parity_sp.py): ``LCC_SP_TEST_FAULT=raise:R``
makes SP rank R raise a RuntimeError on entering ``blocks.0.cross_attn``;
``hang:R`` makes it sleep there instead. It never applies to the one-process
baseline and is not meant for anything but tests.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

FAULT_ENV = "LCC_SP_TEST_FAULT"
_INHERITED: list = []       # distributed state a forked rank inherited; kept alive, never used or destroyed


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent dies, whatever kills the parent."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != parent_pid:
        os._exit(3)


def _forget_inherited_runtime() -> None:
    """A forked rank starts with the launcher's FastVideo runtime (a one-process gloo
    group whose worker threads exist only in the launcher). Set it aside -- never
    destroyed, that would join threads this process does not have -- so that
    FastVideo initialises this rank's own N-process groups from scratch."""
    import torch.distributed.distributed_c10d as c10d
    import fastvideo.distributed.parallel_state as ps
    from . import native as nat
    maps = [getattr(c10d, n) for n in ("_pg_map", "_pg_names", "_pg_group_ranks", "_pg_backend_config",
                                       "_tags_to_pg", "_pg_to_tag") if isinstance(getattr(c10d, n, None), dict)]
    _INHERITED.append((c10d._world, [dict(m) for m in maps], ps._WORLD, ps._TP, ps._SP, ps._DP, ps._NODE))
    for m in maps:
        m.clear()
    c10d._world = c10d._World()
    ps._WORLD = ps._TP = ps._SP = ps._DP = ps._NODE = None
    nat.forget_runtime()


class AttentionLog:
    """Every attention call of one forward, with the native module that made it.

    Module hooks keep a stack of the active modules (blocks, their self- and
    cross-attention, and those modules' FastVideo attention layers); the wrapped
    attention backends of FastVideo's layers and the kernels LongCat calls directly
    record (batch, heads, q length, k length, head dim) of each call:
    ``self_attn.distributed`` (FastVideo's DistributedAttention, after its
    all-to-all), ``self_attn.sdpa`` (LongCat's plain SDPA inside self-attention:
    the noise half of the i2v split), ``self_attn.kv_cache`` (plain SDPA of
    ``forward_with_kv_cache``, which is a method, not a module),
    ``self_attn.bsa`` (``flash_attn_bsa_3d``), ``cross_attn`` (LocalAttention).
    ``where``: the innermost of ``watch`` active when an exception escaped."""

    def __init__(self, model, watch=()):
        self.model, self.watch = model, set(watch)
        self.calls: list[dict] = []
        self.stack: list[str] = []
        self.dist_in: list[tuple] = []       # (module, q shape handed to DistributedAttention)
        self.layers: set[str] = set()        # the attention layers' names (set on entry)
        self._handles = []
        self._patches = None
        self._in_kernel = False

    def __enter__(self):
        import torch.nn.functional as F
        import fastvideo.models.dits.longcat as fv_longcat
        names = dict(self.model.named_modules())
        # FastVideo's attention layers (they have an ``attn_impl``) under self_attn / cross_attn: ``attn``,
        # and the patched FastVideo's ``attn_all_tokens`` (sp-whole-sequence, fixes/sp_shard.py)
        self.layers = {name for name, m in names.items()
                       if name.rpartition(".")[0].rpartition(".")[2] in ("self_attn", "cross_attn")
                       and hasattr(m, "attn_impl")}
        for name, m in names.items():
            parts = name.split(".")
            if (len(parts) == 2 and parts[0] == "blocks") or parts[-1] in ("self_attn", "cross_attn") \
                    or name in self.layers or name in self.watch:
                self._handles.append(m.register_forward_pre_hook(self._push(name), prepend=True))
                self._handles.append(m.register_forward_hook(self._pop(name)))
        import fastvideo.third_party.longcat_video.block_sparse_attention.bsa_interface as bsa_mod
        from fixes import patching
        log = self
        self._patches = patching.Patches()        # the one patch mechanism: layers over the fixes' own

        def sdpa_logged(sdpa):
            def logged(q, k, v, *a, **kw):           # [B, H, S, D]
                if not log._in_kernel:
                    log._record(q, k, None)
                return sdpa(q, k, v, *a, **kw)
            return logged

        def bsa_logged(fn):
            def logged(q, k, v, *a, **kw):           # [B, H, S, D]
                if log._in_kernel and log.calls and log.calls[-1]["kind"] == "self_attn.bsa":
                    # The kernel called by a wrapper of LongCat's (the sp-whole-sequence fix, after
                    # its all-to-all): the call is recorded with the shapes the kernel runs on.
                    log.calls.pop()
                log._record(q, k, "self_attn.bsa", latent_shape_q=kw.get("latent_shape_q"))
                with log._kernel():
                    return fn(q, k, v, *a, **kw)
            return logged

        self._patches.wrap(F, "scaled_dot_product_attention", sdpa_logged)
        self._patches.wrap(fv_longcat, "flash_attn_bsa_3d", bsa_logged)
        self._patches.wrap(bsa_mod, "flash_attn_bsa_3d", bsa_logged)
        # FastVideo's attention layers hand their backend (SDPA on a CPU, FlashAttention or
        # SDPA on CUDA) [B, S, H, D]: recorded there, whichever backend it is.
        for m in names.values():
            impl = getattr(m, "attn_impl", None)
            if impl is not None and "forward" not in vars(impl):
                self._patches.wrap(impl, "forward", self._impl_logged)
        return self

    def _impl_logged(self, forward):
        def logged(q, k, v, *a, **kw):
            self._record(q.transpose(1, 2), k.transpose(1, 2), None)
            with self._kernel():
                return forward(q, k, v, *a, **kw)
        return logged

    @contextlib.contextmanager
    def _kernel(self):
        before, self._in_kernel = self._in_kernel, True
        try:
            yield
        finally:
            self._in_kernel = before

    def _push(self, name):
        def hook(_m, args):
            self.stack.append(name)
            if name.endswith("self_attn.attn") and args:
                self.dist_in.append((name, tuple(args[0].shape)))
        return hook

    def _pop(self, name):
        def hook(*_):
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
        return hook

    def _kind(self) -> tuple[str, str]:
        """(kind, module) of a kernel call, from the innermost attention-related module."""
        for name in reversed(self.stack):
            if name in self.layers:          # dense self-attention, or cross-attention
                parent = name.rpartition(".")[0]
                return ("self_attn.distributed" if parent.endswith("self_attn") else "cross_attn"), parent
            if name.endswith(".cross_attn"):
                return "cross_attn", name
            if name.endswith(".self_attn"):
                return "self_attn.sdpa", name
            if name.startswith("blocks.") and name.count(".") == 1:
                return "self_attn.kv_cache", f"{name}.self_attn"
        return "other", "?"

    def _record(self, q, k, kind, **extra):
        k_kind, module = self._kind()
        kind = kind or k_kind
        if kind == "self_attn.bsa":
            module = next((s for s in reversed(self.stack) if s.endswith("self_attn")), module)
        B, H, Sq, D = (int(x) for x in q.shape)
        Sk = int(k.shape[-2])
        row = dict(module=module, kind=kind, batch=B, heads=H, q_len=Sq, k_len=Sk, head_dim=D,
                   work=B * H * Sq * Sk * D)
        if kind == "self_attn.distributed" and self.dist_in:
            row["tokens_in"] = int(self.dist_in[-1][1][1])      # the sequence this rank handed in
            row["heads_in"] = int(self.dist_in[-1][1][2])
        row.update({k2: list(v) for k2, v in extra.items() if v is not None})
        self.calls.append(row)

    def where(self) -> str | None:
        return next((s for s in reversed(self.stack) if s in self.watch), None)

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._patches is not None:
            self._patches.undo()              # back to what was there, whatever else is layered
            self._patches = None


def _plant_fault(model, group: str, rank: int):
    spec = os.environ.get(FAULT_ENV, "")
    if not spec or group != "sp":
        return None
    what, _, who = spec.partition(":")
    if who != str(rank):
        return None

    def hook(*_):
        if what == "hang":
            time.sleep(3600)
        raise RuntimeError(f"planted fault on rank {rank} ({FAULT_ENV}={spec})")
    return dict(model.named_modules())["blocks.0.cross_attn"].register_forward_pre_hook(hook)


class MemoryMeter:
    """Peak memory of the work inside the block, above what the process held before it:
    on CUDA ``max_memory_allocated`` minus the allocation at the start; on a CPU the
    process's peak RSS (``getrusage``) minus its RSS at the start (a forked process
    starts with the launcher's resident pages)."""

    def __init__(self, device: str):
        self.device = device
        self.peak = self.start = 0.0

    def __enter__(self):
        import torch
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.start = _rss_mib()
        return self

    def __exit__(self, *exc):
        import resource
        import torch
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def result(self) -> dict:
        kind = "cuda max_memory_allocated" if self.device.startswith("cuda") else "peak RSS (getrusage)"
        return {"kind": kind, "peak_mib": self.peak, "start_mib": self.start}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _sync(device: str, world: int) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def _slowest(ms: float, device: str, world: int) -> float:
    """The largest of every rank's ``ms``: ranks must agree on how many timed forwards
    (collectives) follow, or the one that runs fewer leaves the others waiting."""
    if world == 1:
        return ms
    import torch
    import torch.distributed as dist
    t = torch.tensor([ms], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _to_cpu(x):
    import torch
    if torch.is_tensor(x):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x


def _work(spec: dict, group: str, rank: int, world: int, forked: bool, state: dict) -> dict:
    import torch
    torch.set_num_threads(int(spec["threads"][group]))
    if forked:
        _forget_inherited_runtime()
        import torch._inductor.config as ind
        ind.compile_threads = 1            # no compile pool shared with the launcher's
    if spec.get("work"):                   # another runner's rank (parity/fsdp.py): "module:function"
        import importlib
        mod, _, fn = spec["work"].partition(":")
        return getattr(importlib.import_module(mod), fn)(spec, group, rank, world, state)
    from . import native as nat
    device = spec["device"]
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        torch.cuda.set_device(device)
    nat.ensure_runtime(device, sp_size=world, init_file=spec["init"][group])
    if spec.get("fixes"):                  # a spawned rank installs the run's fixes (a forked one has them)
        import fixes
        fixes.install(spec["fixes"])
    payload = torch.load(spec["payload"], weights_only=False)
    return native_work(spec, payload["jobs"], device, world, state, fault=(group, rank))


def native_work(spec: dict, jobs: list[dict], device: str, world: int, state: dict, *, fault=None) -> dict:
    """Build FastVideo's native model from the converted folder (LoRAs applied through
    FastVideo's LoRA layers) and run every job on it: record the compared layers and the
    attention calls of one forward, then time a few more. In a rank of an SP run, or in
    the launcher itself for the one-process baseline (FastVideo's runtime already set up)."""
    import torch
    from . import native as nat
    from .capture import Feeder, Recorder
    from .forward import as_attn
    from longcat_convert.shards import ShardedReader
    dtype = getattr(torch, spec["dtype"])
    jobs_out, kvs = {}, {}
    with MemoryMeter(device) as meter:
        tdir = nat.transformer_dir(spec["converted"])
        native = nat.build_native_model(nat.read_native_config(tdir), dtype=dtype, device=device)
        nat.load_state(native, ShardedReader(tdir), device=device)
        for conv, mult in spec["loras"]:
            nat.apply_lora(native, conv, float(mult))
        if fault:
            _plant_fault(native, *fault)
        for job in jobs:
            nat.set_bsa(native, job["bsa"], device)
            state["job"] = job["label"]
            if job.get("loop") is not None:
                jobs_out[job["label"]] = _loop_job(native, job, spec, dtype, device, world, state)
                continue
            kv = kvs.get(job["kv_from"]) if job.get("kv_from") else job.get("kv_given")
            watch = set(job["record"]) | set(job["proj"])
            state["log"] = log = AttentionLog(native, watch)
            shard = _token_shard(native, job)
            _sync(device, world)
            with log, Recorder(native, job["record"]) as rec, Recorder(native, job["proj"]) as proj, \
                    Feeder(native, shard.feeds(job["feeds"])):
                t0 = time.perf_counter()
                out, n_kv = nat.run(native, job["inp"], dtype, device, kv_cache=kv, **job["overrides"])
                _sync(device, world)
                first_ms = (time.perf_counter() - t0) * 1e3
            acts = shard.whole(dict(proj.outputs, **rec.outputs, output=out))
            as_attn(acts, ".to_out")
            repeats = next((n for below, n in spec["repeats"] if _slowest(first_ms, device, world) < below), 0)
            times = []
            for _ in range(repeats):
                _sync(device, world)
                t0 = time.perf_counter()
                nat.run(native, job["inp"], dtype, device, kv_cache=kv, **job["overrides"])
                _sync(device, world)
                times.append((time.perf_counter() - t0) * 1e3)
            if n_kv:
                kvs[job["label"]] = n_kv
            jobs_out[job["label"]] = {"acts": _to_cpu(acts), "kv": _to_cpu(n_kv), "ms": times or [first_ms],
                                      "attention": log.calls}
        del native
    return {"world": world, "pid": os.getpid(), "threads": torch.get_num_threads(), "device": device,
            "memory": meter.result(), "jobs": jobs_out}


class _TokenShard:
    """Where a fix shards the sequence among the ranks (``sp-whole-sequence``, fixes/sp_shard.py),
    the modules inside hold this rank's tokens only: layer mode feeds them this rank's part of
    the reference's input, and what they return is gathered (every rank's tokens, global order)
    so that every row compares with the whole reference. Without it both are left as they are."""

    def __init__(self, layout=None, holds_local=None):
        self.layout, self.holds_local = layout, holds_local

    def feeds(self, feeds: dict) -> dict:
        if self.layout is None:
            return feeds
        return {n: self.layout.local(t) if self.holds_local(n, output=False) else t for n, t in feeds.items()}

    def whole(self, acts: dict) -> dict:
        if self.layout is None:
            return acts
        return {n: self.layout.whole(acts[n]) if self.holds_local(n, output=True) else acts[n] for n in sorted(acts)}


def _token_shard(native, job: dict) -> _TokenShard:
    import fixes
    if "sp-whole-sequence" not in fixes.active():
        return _TokenShard()
    from fixes import sp_shard
    hidden = job["overrides"].get("hidden_states", job["inp"].hidden_states)
    patched = "sp-whole-sequence" in fixes.in_fastvideo()       # the patch: the same layout, other edges
    return _TokenShard(sp_shard.layout_for(native, hidden),
                       functools.partial(sp_shard.holds_local_tokens, patched=patched))


def _loop_job(native, job: dict, spec: dict, dtype, device: str, world: int, state: dict) -> dict:
    """A loop job (``parity --mode sampling --sp N``): FastVideo's LongCat pipeline stages
    (``parity.loops.run_native``) driving this rank's native model through the case's
    whole denoising loop, every attention call logged -> its rows (float32, CPU), the wall
    time of each denoising DiT call (ms) and the loop's notes."""
    import torch
    from .loops import run_native
    state["log"] = log = AttentionLog(native)
    _sync(device, world)
    with log:
        rows, seconds, notes = run_native(native, job["loop"], dtype=dtype, device=device, sigmas=job["sigmas"],
                                          converted=Path(spec["converted"]))
    _sync(device, world)
    rows = {k: v.detach().float().cpu() if torch.is_tensor(v) else v for k, v in rows.items()}
    return {"rows": rows, "ms": [1e3 * x for x in seconds] or [0.0], "notes": notes, "attention": log.calls,
            "acts": {}, "kv": None}


def run(spec_path: str | os.PathLike, group: str, rank: int, world: int, *, forked: bool = False) -> int:
    """Do this rank's work and write its result or error file -> exit status (0 / 1).
    SIGUSR1 writes every thread's Python stack to stderr (the rank's log): the launcher
    asks for it before it kills a rank that ran out of time."""
    import faulthandler
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["dir"])
    state: dict = {}
    try:
        result = _work(spec, group, rank, world, forked, state)
        import torch
        tmp = out / f"{group}-{rank}.result.pt.tmp"
        torch.save(result, tmp)
        tmp.rename(out / f"{group}-{rank}.result.pt")
        _wait_for_peers(out, group, world)
        return 0
    except BaseException as e:   # noqa: BLE001  (reported to the launcher, whatever it is)
        err = error_info(e, state, group, rank)
        (out / f"{group}-{rank}.error.json").write_text(json.dumps(err, indent=1))
        traceback.print_exc()
        return 1


def error_info(e: BaseException, state: dict, group: str, rank: int) -> dict:
    """What the report says about a run that raised: type, first line of the message
    (with the line that raised when the message is empty or terse), the compared module
    it was in, the job, when, and the attention calls it made before."""
    log = state.get("log")
    msg = (str(e).strip().splitlines() or [""])[0][:500]
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        f = frames[-1]
        parts = Path(f.filename).parts
        at = "/".join(parts[parts.index("site-packages") + 1:] if "site-packages" in parts else parts[-2:])
        msg = (msg + " " if msg else "") + f"(at {at}:{f.lineno}: {(f.line or '').strip()[:160]})"
    return {"group": group, "rank": rank, "type": type(e).__name__, "message": msg,
            "where": log.where() if log is not None else None, "job": state.get("job"), "time": time.time(),
            "traceback": "".join(traceback.format_exception(e))[-4000:],
            "attention": log.calls if log is not None else []}


def _wait_for_peers(out: Path, group: str, world: int, limit: float = 60.0) -> None:
    """Stay until every rank of the group has written its result or error: a rank that
    left right after the last collective would close the connections a slower peer is
    still finishing that collective on ("Connection closed by peer")."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if all((out / f"{group}-{r}.result.pt").exists() or (out / f"{group}-{r}.error.json").exists()
               for r in range(world)):
            return
        time.sleep(0.01)


def forked_main(spec_path, group: str, rank: int, world: int, parent_pid: int, log_path) -> None:
    """The body of a forked rank: never returns (os._exit, so none of the launcher's
    exit handlers or finalizers run here)."""
    code = 1
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(parent_pid)
        fd = os.open(str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(fd, 1), os.dup2(fd, 2)
        # The launcher's Python-level streams may be held (--quiet holds stderr in memory):
        # this rank writes to its log through the process's own file descriptors.
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        # In a new thread: GNU OpenMP's thread pool is per thread, and the one this thread
        # inherited names the launcher's pool threads, which a fork does not copy (a
        # parallel region here would wait for them forever).
        box = [1]
        t = threading.Thread(target=lambda: box.__setitem__(0, run(spec_path, group, rank, world, forked=True)),
                             name=f"sp-{group}-{rank}")
        t.start()
        t.join()
        code = box[0]
    finally:
        try:
            sys.stdout.flush(), sys.stderr.flush()
        finally:
            os._exit(code)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity.sp_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("spec")
    p.add_argument("--group", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--parent", type=int, default=None, help="launcher pid (die with it)")
    a = p.parse_args(argv)
    if a.parent is not None:
        _die_with_parent(a.parent)
    return run(a.spec, a.group, a.rank, a.world)


if __name__ == "__main__":
    sys.exit(main())
