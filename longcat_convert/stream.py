"""The copy engine: source byte ranges -> laid-out output shards, a chunk at a time.

Without a dtype change a conversion is pure byte movement (a rename or a dim-0
split is a contiguous byte range of its source tensor). The layout already
fixed where every output tensor goes, so tensors are independent jobs:
``workers`` threads (one per core) take the next tensor in source-file order,
and for each chunk of it

    pread into the worker's own small buffer  ->  NaN/Inf scan  ->  sha256
    (cast, only with --dtype)  ->  pwrite at the tensor's output offset.

The buffer is small enough to stay in the CPU cache between those steps, which
matters: sha256 is the bottleneck (about 1.4-1.7 GB/s per core here), and
hashing from cache instead of memory is ~20% faster. hashlib, numpy and the
syscalls release the GIL, so the workers use all cores. Memory is ``workers``
buffers, whatever the model size.

Each source file is fingerprinted for free (``manifest_sha256``): the sha256 of
its header, of every byte range the plan reads -- for a conversion exactly an
output tensor's digest -- and of any gap. The plain sha256 of each source file
costs one more full pass and is only computed when asked (``hash_sources``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import BadInput
from .writer import OutShard, OutTensor

CHUNK = 4 * 2**20
WRITEBACK = 32 * 2**20      # hand written bytes to the disk this often (see start_writeback)
WORKERS = max(2, min(8, os.cpu_count() or 2))

# Exponent-field masks: a value is NaN/Inf iff all its exponent bits are set.
_EXP_MASK = {"F64": ("uint64", 0x7FF0000000000000), "F32": ("uint32", 0x7F800000),
             "F16": ("uint16", 0x7C00), "BF16": ("uint16", 0x7F80),
             "F8_E4M3": ("uint8", 0x7F), "F8_E5M2": ("uint8", 0x7C)}
_NUMPY_FLOAT = {"F64": "float64", "F32": "float32", "F16": "float16"}
FLOAT_DTYPES = frozenset(_EXP_MASK)
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
            "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def has_nonfinite(mv, dtype: str) -> bool:
    """NaN or Inf anywhere in raw little-endian bytes of ``dtype`` (other dtypes: False)."""
    if dtype not in _EXP_MASK or not len(mv):
        return False
    import numpy as np
    if dtype in _NUMPY_FLOAT:
        return not bool(np.isfinite(np.frombuffer(mv, dtype=_NUMPY_FLOAT[dtype])).all())
    kind, mask = _EXP_MASK[dtype]
    a = np.frombuffer(mv, dtype=kind)
    return int(np.bitwise_and(a, np.array(mask, dtype=kind)).max()) == mask


def cast_bytes(mv, src: str, dst: str) -> memoryview:
    """Raw bytes of ``src`` -> raw bytes of ``dst`` (torch's rounding: nearest even)."""
    import torch
    from .shards import DTYPES
    t = torch.frombuffer(mv, dtype=getattr(torch, DTYPES[src][0]))
    return memoryview(t.to(getattr(torch, DTYPES[dst][0])).view(torch.uint8).numpy())


def _load_sync_file_range():
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):
        return None


_sync_file_range = _load_sync_file_range()


def _load_fallocate():
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).fallocate
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        return fn
    except (OSError, AttributeError):
        return None


_fallocate = _load_fallocate()


def reserve(fd: int, nbytes: int) -> None:
    """Reserve the file's blocks up front so a full disk fails before any data moves.

    Linux fallocate(2) directly: glibc's posix_fallocate would emulate it on file
    systems without support by writing every block. No support: no reservation."""
    if _fallocate is None or nbytes <= 0:
        return
    if _fallocate(fd, 0, 0, nbytes) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(err, os.strerror(err))


def _pread_full(fd: int, mv: memoryview, pos: int) -> int:
    got = 0
    while got < len(mv):
        n = os.preadv(fd, [mv[got:]], pos + got)
        if n == 0:
            break
        got += n
    return got


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a range of dirty pages to disk now, without waiting (Linux).

    The copy is CPU-bound (sha256), so the disk is otherwise idle until the final
    fsync; starting writeback as we go leaves that fsync only the tail."""
    if _sync_file_range is not None and nbytes > 0:
        _sync_file_range(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    buf = bytearray(chunk)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


@dataclass
class StreamResult:
    tensor_sha256: dict[str, str] = field(default_factory=dict)
    piece_sha256: dict[tuple[Path, int, int], str] = field(default_factory=dict)
    file_sha256: dict[Path, str] = field(default_factory=dict)       # plain; only with hash_sources
    file_manifest: dict[Path, dict] = field(default_factory=dict)    # header + manifest digests
    nonfinite: dict[str, str] = field(default_factory=dict)          # source key -> output key
    written: list[Path] = field(default_factory=list)
    bytes_written: int = 0


@dataclass
class _Job:
    tensor: OutTensor
    out_fd: int
    out_offset: int


class Engine:
    """Streams ``shards`` into ``out_dir``. Stops at the first error, which is re-raised."""

    def __init__(self, *, chunk: int = CHUNK, workers: int = WORKERS, check_finite: bool = True,
                 strict: bool = False, progress: Callable[[int], None] | None = None,
                 hash_sources: bool = False, hash_tensors: bool = True, writeback: bool = True):
        self.chunk = max(4096, chunk - chunk % 4096)
        self.workers = max(1, workers)
        self.check_finite, self.strict = check_finite, strict
        self.progress = progress
        self.hash_sources = hash_sources
        self.hash_tensors = hash_tensors
        self.writeback = writeback
        self.error: BaseException | None = None
        self.failed = threading.Event()
        self._lock = threading.Lock()

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e
        self.failed.set()

    # -- the per-tensor work -----------------------------------------------
    def _worker(self, jobs: list[_Job], next_job: Callable[[], int], files: list[Path],
                result: StreamResult) -> None:
        fds: dict[Path, int] = {}
        buf = bytearray(self.chunk)
        try:
            for p in files:  # own descriptors: each keeps its own read-ahead state
                fds[p] = os.open(p, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fds[p], 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while not self.failed.is_set():
                i = next_job()
                if i >= len(jobs):
                    return
                self._copy(jobs[i], fds, buf, result)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self._fail(e)
        finally:
            for fd in fds.values():
                os.close(fd)

    def _copy(self, job: _Job, fds: dict[Path, int], buf: bytearray, result: StreamResult) -> None:
        t = job.tensor
        item, out_item = ITEMSIZE[t.src_dtype], ITEMSIZE[t.dtype]
        step = self.chunk - self.chunk % (item * out_item)   # whole elements on both sides
        th = hashlib.sha256() if self.hash_tensors else None
        out_off = wb_from = job.out_offset
        for piece in t.pieces:
            ph = hashlib.sha256() if (len(t.pieces) > 1 or t.cast) else None
            fd, pos = fds[piece.file], piece.start
            while pos < piece.stop:
                if self.failed.is_set():
                    return
                n = min(step, piece.stop - pos)
                mv = memoryview(buf)[:n]
                got = _pread_full(fd, mv, pos)
                if got != n:
                    raise BadInput(f"{piece.file}: truncated while reading {piece.key!r}; re-download it")
                if self.check_finite and piece.key not in result.nonfinite and has_nonfinite(mv, t.src_dtype):
                    result.nonfinite[piece.key] = t.key
                    if self.strict:
                        raise BadInput(f"{piece.file}: {piece.key!r} holds NaN or Inf values (--strict); "
                                       "fix the checkpoint or drop --strict")
                if ph is not None:
                    ph.update(mv)
                out = mv
                if t.cast:
                    out = cast_bytes(mv, t.src_dtype, t.dtype)
                    if self.check_finite and has_nonfinite(out, t.dtype):
                        if self.strict:
                            raise BadInput(f"{piece.file}: {piece.key!r} cast to {t.dtype} holds NaN or Inf "
                                           "values (--strict); choose another --dtype or drop --strict")
                        result.nonfinite.setdefault(f"{piece.key} (after the cast to {t.dtype})", t.key)
                if th is not None:
                    th.update(out)
                view, off = out, out_off
                while len(view):
                    w = os.pwrite(job.out_fd, view, off)
                    view, off = view[w:], off + w
                out_off += len(out)
                pos += n
                if self.writeback and out_off - wb_from >= WRITEBACK:
                    start_writeback(job.out_fd, wb_from, out_off - wb_from)
                    wb_from = out_off
                with self._lock:
                    result.bytes_written += len(out)
                if self.progress:
                    self.progress(len(out))
            if ph is not None:
                result.piece_sha256[(piece.file, piece.start, piece.stop)] = ph.hexdigest()
        if self.writeback:
            start_writeback(job.out_fd, wb_from, out_off - wb_from)
        if th is not None:
            digest = th.hexdigest()
            result.tensor_sha256[t.key] = digest
            if len(t.pieces) == 1 and not t.cast:
                p = t.pieces[0]
                result.piece_sha256[(p.file, p.start, p.stop)] = digest

    # -- driver ------------------------------------------------------------
    def run(self, shards: list[OutShard], out_dir: Path, source_files: list[Path],
            data_starts: dict[Path, int] | None = None) -> StreamResult:
        result = StreamResult()
        jobs: list[_Job] = []
        out_fds: list[int] = []
        counter = iter(range(1 << 62))
        counter_lock = threading.Lock()

        def next_job() -> int:
            with counter_lock:
                return next(counter)

        threads: list[threading.Thread] = []
        try:
            for shard in shards:  # create, reserve and head every shard before moving data
                path = out_dir / shard.name
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                out_fds.append(fd)
                result.written.append(path)
                reserve(fd, shard.file_bytes)  # a full disk fails here, not half way
                os.pwrite(fd, shard.header, 0)
                base = len(shard.header)
                jobs += [_Job(t, fd, base + shard.offsets[t.key][0]) for t in shard.tensors]
            # source-file order: the workers walk the files front to back, side by side
            jobs.sort(key=lambda j: source_order(j.tensor, source_files))
            for _ in range(self.workers):
                th = threading.Thread(target=self._worker, args=(jobs, next_job, source_files, result),
                                      daemon=True)
                th.start()
                threads.append(th)
            if self.hash_sources:
                th = threading.Thread(target=self._hash_files, args=(source_files, result), daemon=True)
                th.start()
                threads.append(th)
            for th in threads:
                while th.is_alive():
                    th.join(0.2)  # wakes up for Ctrl-C
        except BaseException:
            self.failed.set()
            for th in threads:
                th.join()
            raise
        finally:
            for fd in out_fds:
                os.close(fd)
        if self.failed.is_set():
            raise self.error if self.error is not None else RuntimeError("copy engine stopped")
        for t in (t for s in shards for t in s.tensors if t.src_nbytes == 0):
            result.tensor_sha256[t.key] = hashlib.sha256().hexdigest()
        if self.hash_tensors:
            self._manifests(result, source_files, data_starts or {})
        return result

    def _hash_files(self, files: list[Path], result: StreamResult) -> None:
        try:
            for p in files:
                if self.failed.is_set():
                    return
                result.file_sha256[p] = sha256_file(p, self.chunk)
        except BaseException as e:  # noqa: BLE001
            self._fail(e)

    def _manifests(self, result: StreamResult, files: list[Path], data_starts: dict[Path, int]) -> None:
        """Digest of the header, of every read range and of every gap, per source file."""
        ranges: dict[Path, list] = {p: [] for p in files}
        for (path, a, b), digest in result.piece_sha256.items():
            ranges[path].append((a, b, digest))
        for path in files:
            size = path.stat().st_size
            items = sorted(ranges[path])
            entries, pos, header = [], 0, None
            data_start = data_starts.get(path, items[0][0] if items else size)
            with open(path, "rb", buffering=0) as f:
                for a, b, digest in items + [(size, size, None)]:
                    while pos < a:   # the header, then any bytes no range covered
                        stop = data_start if pos < data_start <= a else a
                        h = _hash_range(f, pos, stop, self.chunk, path)
                        entries.append(f"{pos} {stop} {h}")
                        if pos == 0:
                            header = h
                        pos = stop
                    if digest is not None:
                        entries.append(f"{a} {b} {digest}")
                        pos = max(pos, b)
            result.file_manifest[path] = {
                "bytes": size, "header_sha256": header,
                "manifest_sha256": hashlib.sha256("\n".join(entries).encode()).hexdigest()}


def source_order(t: OutTensor, files: list[Path]) -> tuple[int, int]:
    p = t.pieces[0] if t.pieces else None
    return (files.index(p.file), p.start) if p is not None and p.file in files else (len(files), 0)


def _hash_range(f, start: int, stop: int, chunk: int, path: Path) -> str:
    h = hashlib.sha256()
    f.seek(start)
    while start < stop:
        data = f.read(min(chunk, stop - start))
        if not data:
            raise BadInput(f"{path}: truncated while reading; re-download it")
        h.update(data)
        start += len(data)
    return h.hexdigest()
