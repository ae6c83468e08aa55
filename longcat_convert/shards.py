"""Lazy, validating reader for (sharded) safetensors checkpoints.

Only headers are read up front; a tensor's bytes are read when asked for, from
its own byte range, so memory is bounded by the tensor in flight. Every
structural problem becomes a one-line ``BadInput`` naming the file or key.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import BadInput

INDEX_SUFFIX = ".safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# safetensors dtype names -> (torch dtype name, bytes per element)
DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U8": ("uint8", 1), "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}
TORCH_TO_ST = {v[0]: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    key: str
    file: Path
    dtype: str            # safetensors name, e.g. "F32"
    shape: tuple[int, ...]
    start: int            # absolute byte offset in file
    stop: int

    @property
    def nbytes(self) -> int:
        return self.stop - self.start

    @property
    def torch_dtype(self):
        import torch
        return getattr(torch, DTYPES[self.dtype][0])


def read_header(path: Path) -> tuple[dict, int, dict]:
    """Parse and validate one safetensors header -> (tensors, data_start, metadata)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BadInput(f"{path}: truncated safetensors file (no header); re-download it")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 * 2**20:
                raise BadInput(f"{path}: corrupt safetensors header (length {n} for a {size}-byte file); re-download it")
            raw = f.read(n)
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror})")
    try:
        hdr = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInput(f"{path}: corrupt safetensors header (not JSON); re-download it")
    if not isinstance(hdr, dict):
        raise BadInput(f"{path}: corrupt safetensors header; re-download it")
    meta = hdr.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    end_max = 0
    for key, info in hdr.items():
        try:
            dtype, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"{path}: corrupt header entry for {key!r}; re-download it")
        if dtype not in DTYPES:
            raise BadInput(f"{path}: {key!r} has unsupported dtype {dtype}")
        numel = 1
        for s in shape:
            numel *= int(s)
        if b - a != numel * DTYPES[dtype][1] or a < 0:
            raise BadInput(f"{path}: {key!r} byte range does not match its shape {shape}; file is corrupt")
        if b > data_len:
            raise BadInput(f"{path}: truncated: {key!r} ends at byte {b} but the data section has {data_len}; re-download it")
        end_max = max(end_max, b)
    return hdr, data_start, meta


class ShardedReader:
    """A checkpoint folder (index + shards) or a single .safetensors file.

    ``folder`` may hold ``*.safetensors.index.json`` (sharded) or exactly one
    ``*.safetensors`` file. Keys must be unique across shards and shards must
    live inside the folder.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tensors: dict[str, TensorInfo] = {}
        self.files: list[Path] = []
        self.metadata: dict[Path, dict] = {}
        self.data_starts: dict[Path, int] = {}   # where each file's tensor data begins
        if self.path.is_file():
            self._reject_pickle(self.path)
            self._add_file(self.path)
            return
        if not self.path.is_dir():
            raise BadInput(f"{self.path}: no such checkpoint folder or file")
        indexes = sorted(self.path.glob("*" + INDEX_SUFFIX))
        if len(indexes) > 1:
            raise BadInput(f"{self.path}: more than one shard index ({', '.join(p.name for p in indexes)}); keep one")
        if indexes:
            self._load_index(indexes[0])
            return
        singles = sorted(self.path.glob("*.safetensors"))
        if len(singles) == 1:
            self._add_file(singles[0])
            return
        pickles = [p for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            self._reject_pickle(pickles[0])
        if singles:
            raise BadInput(f"{self.path}: {len(singles)} .safetensors files but no *{INDEX_SUFFIX}; add the index")
        raise BadInput(f"{self.path}: no safetensors checkpoint (expected *{INDEX_SUFFIX} and shards)")

    @staticmethod
    def _reject_pickle(p: Path) -> None:
        if p.suffix in PICKLE_SUFFIXES:
            raise BadInput(f"{p}: pickle checkpoints are refused (they can run code when loaded); "
                           "convert it to safetensors first")
        if p.suffix != ".safetensors":
            raise BadInput(f"{p}: not a .safetensors file")

    def _load_index(self, index: Path) -> None:
        try:
            data = json.loads(index.read_text())
            weight_map = data["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, AssertionError):
            raise BadInput(f"{index}: not a valid shard index (needs a 'weight_map' object)")
        # Containment is checked on the path as written, not on where symlinks lead:
        # a Hugging Face cache snapshot is a folder of symlinks into ../../blobs.
        root = os.path.normpath(os.path.abspath(self.path))
        by_file: dict[str, set[str]] = {}
        for key, fname in weight_map.items():
            if not isinstance(fname, str):
                raise BadInput(f"{index}: {key!r} maps to {fname!r}, not a file name")
            by_file.setdefault(fname, set()).add(key)
        for fname in sorted(by_file):
            p = (self.path / fname)
            norm = os.path.normpath(os.path.abspath(p))
            if os.path.isabs(fname) or not norm.startswith(root + os.sep):
                raise BadInput(f"{index}: shard {fname!r} lies outside {self.path}; refusing to read it")
            if not p.is_file():
                raise BadInput(f"{index}: shard {fname!r} is missing from {self.path}")
            self._reject_pickle(p)
            self._add_file(p)
            have = {k for k, t in self.tensors.items() if t.file == p}
            listed = by_file[fname]
            if listed - have:
                k = sorted(listed - have)[0]
                raise BadInput(f"{index}: {k!r} is listed in {fname} but that shard does not contain it")
        self.index = index

    def _add_file(self, p: Path) -> None:
        hdr, data_start, meta = read_header(p)
        for key, info in hdr.items():
            if key in self.tensors:
                raise BadInput(f"{p}: duplicate key {key!r} (also in {self.tensors[key].file.name}); remove one copy")
            a, b = info["data_offsets"]
            self.tensors[key] = TensorInfo(key, p, info["dtype"], tuple(int(s) for s in info["shape"]),
                                           data_start + a, data_start + b)
        self.files.append(p)
        self.metadata[p] = meta
        self.data_starts[p] = data_start

    # -- access ------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def info(self, key: str) -> TensorInfo:
        try:
            return self.tensors[key]
        except KeyError:
            raise BadInput(f"{self.path}: no tensor {key!r}")

    def read_bytes(self, key: str, start: int = 0, stop: int | None = None) -> bytes:
        t = self.info(key)
        stop = t.nbytes if stop is None else stop
        with open(t.file, "rb") as f:
            f.seek(t.start + start)
            data = f.read(stop - start)
        if len(data) != stop - start:
            raise BadInput(f"{t.file}: truncated while reading {key!r}; re-download it")
        return data

    def get(self, key: str):
        """The tensor as a torch.Tensor (a fresh, writable copy)."""
        import torch
        t = self.info(key)
        buf = bytearray(self.read_bytes(key))
        if not buf:
            return torch.empty(t.shape, dtype=t.torch_dtype)
        return torch.frombuffer(buf, dtype=t.torch_dtype).reshape(t.shape)

    def items(self) -> Iterator[tuple[str, object]]:
        for k in self.tensors:
            yield k, self.get(k)

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
