"""Starting, watching and stopping the N processes of a sequence-parallel run.

Each rank is its own process group (a Ctrl-C in the terminal reaches only the
launching process, which then stops them); the launcher kills a whole group when
a rank fails (the others would wait in a collective), when the timeout passes,
on Ctrl-C / SIGTERM (``longcat_convert.errors.sigterm_as_interrupt``), and at
exit; each rank also dies with its parent (Linux PR_SET_PDEATHSIG). Start
methods: ``spawn`` runs ``python -m parity.sp_worker`` (a fresh interpreter per
rank; always on CUDA, where a CUDA context cannot be forked); ``fork`` forks the
launching process after FastVideo is imported, which saves its import (about 8 s
per process on the 2-core CI machine).
"""
from __future__ import annotations

import atexit
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
    reaped: bool = False          # waited for: nothing of it is left


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
    p.reaped = True


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


class Launcher:
    """Starts the N processes of one group, waits for all of them within the timeout,
    stops them all as soon as one fails, and leaves none behind. Each launcher keeps the
    processes it started (``procs``); while it runs a group, the interpreter's exit
    stops whatever of them is still alive."""

    def __init__(self, workdir: Path, spec_path: Path, start: str, timeout: float):
        self.dir, self.spec, self.start, self.timeout = workdir, spec_path, start, timeout
        self.procs: list[Proc] = []

    def live(self) -> list[Proc]:
        """The processes this launcher started that are not reaped yet."""
        return [p for p in self.procs if not p.reaped]

    def stop_all(self, why: str = "the launcher exited") -> None:
        for p in self.live():
            _kill(p, why)

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
        self.procs.append(p)
        return p

    def run(self, group: str, world: int) -> list[dict]:
        """Run ranks 0..world-1 of ``group`` -> one outcome per rank:
        ``{"rank", "ok", "result" | "error"}``."""
        procs: list[Proc] = []
        atexit.register(self.stop_all)
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
                if not p.reaped:
                    _kill(p, "the launcher was interrupted")
            atexit.unregister(self.stop_all)
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
