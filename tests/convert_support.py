"""Shared helpers for the converter tests (imported by test_convert_*.py)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parity.native import fastvideo_available

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
TINY_A, TINY_B = GOLDEN / "tiny-a", GOLDEN / "tiny-b"
PY = sys.executable

_why = fastvideo_available()
needs_native = pytest.mark.skipif(_why is not None, reason=f"fastvideo unavailable: {_why}")


def run(*argv) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr)."""
    from longcat_convert.cli import main
    out, err = io.StringIO(), io.StringIO()
    # Errors are printed soft-wrapped (one line whatever the width) to the sys.stderr of the moment.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def run_subprocess(code: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """python -c CODE with the repository importable."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    return subprocess.run([PY, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


def tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` -> (sha256, mtime_ns): proves a source was left untouched."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def leftovers(parent: Path, name: str) -> list[str]:
    """OUTPUT or its temporary folder, if either is still there."""
    return [p.name for p in Path(parent).iterdir() if p.name == name or p.name.startswith(f".{name}.")]


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_all(folder: Path) -> dict:
    """Every tensor of a (sharded) safetensors folder, via the project's reader."""
    from longcat_convert.shards import ShardedReader
    r = ShardedReader(folder)
    return {k: r.get(k) for k in r.keys()}


def one_line(err: str) -> str:
    """The error line; warnings printed before it are allowed, anything else is not."""
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, f"expected a one-line error, got: {err!r}"
    return lines[0]


def write_raw(path: Path, tensors: dict[str, tuple[str, tuple, bytes]]) -> None:
    """Write a safetensors file from raw (dtype name, shape, bytes) triples, byte for byte."""
    from longcat_convert.writer import encode_header
    entries, pos, blob = {}, 0, b""
    for k, (dt, shape, data) in tensors.items():
        entries[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [pos, pos + len(data)]}
        pos += len(data)
        blob += data
    path.write_bytes(encode_header(entries) + blob)
