"""Run a command and measure it: wall time, peak RSS, peak anonymous and file-backed RSS.

Peak RSS is the kernel's high-water mark (VmHWM in /proc/<pid>/status, read every
few milliseconds; it only grows, so the last reading is within one interval of the
end). wait4's ru_maxrss is not used: after a vfork/exec it starts from the parent's
peak. Anonymous and file-backed RSS have no high-water mark and are sampled, so a
spike shorter than the interval can be missed (the converter's memory is
long-lived buffers, so it is not).
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass


@dataclass
class Sample:
    seconds: float
    peak_rss: int          # bytes
    peak_anon: int         # bytes (sampled)
    peak_file: int         # bytes (sampled)
    rc: int
    stderr: str = ""


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def measure(cmd: list[str], env: dict | None = None, cwd: str | None = None, interval: float = 0.005) -> Sample:
    """Run ``cmd`` to completion; (seconds, peak RSS, peak anon, peak file RSS, exit code)."""
    e = dict(os.environ)
    e.update(env or {})
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=e, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            st = _status(proc.pid)
            for k in peaks:
                peaks[k] = max(peaks[k], st.get(k, 0))
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    _, status, _ = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    done.set()
    th.join()
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Sample(seconds, peaks["VmHWM"], peaks["RssAnon"], peaks["RssFile"], proc.returncode,
                  b"".join(stderr_chunks).decode(errors="replace"))


def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache (needs root); False when not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm(path: str) -> None:
    """Read every file under ``path`` so it sits in the page cache (when caches cannot be dropped)."""
    buf = bytearray(16 * 2**20)
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
