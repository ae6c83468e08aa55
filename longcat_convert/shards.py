"""Lazy, validating reader for (sharded) safetensors checkpoints.

Only headers are read up front; a tensor's bytes are read when asked for, from
its own byte range, so memory is bounded by the tensor in flight. Every
structural problem becomes a one-line ``BadInput`` naming the file or key.
"""
from __future__ import annotations

import json
import os
import re
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

MAX_HEADER = 100_000_000   # bytes: the format's limit on the JSON header
MAX_DEPTH = 127            # JSON nesting (objects and arrays) the official parser accepts
_U64 = 2**64

# Every dtype the format defines -> bits per element. The reader accepts all of them;
# DTYPES above is what the converter handles.
FORMAT_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# Whole-byte dtypes outside DTYPES that torch still loads (ShardedReader.get).
_TORCH_EXTRA = {"U16": "uint16", "U32": "uint32", "U64": "uint64", "C64": "complex64",
                "F8_E8M0": "float8_e8m0fnu", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz"}


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
        name = DTYPES[self.dtype][0] if self.dtype in DTYPES else _TORCH_EXTRA.get(self.dtype)
        if name is None or not hasattr(torch, name):
            raise BadInput(f"{self.file}: {self.key!r} is {self.dtype}, which cannot be loaded as a torch tensor")
        return getattr(torch, name)


def read_header(path: Path) -> tuple[dict, int, dict]:
    """Parse and validate one safetensors header -> (tensors, data_start, metadata).

    ``tensors`` maps each key to ``{"dtype", "shape", "data_offsets"}`` (offsets relative
    to the data section) in header order. As strict as the format: a file the official
    parser refuses is refused here, with one line naming the file and the key."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BadInput(f"{path}: truncated safetensors file ({len(head)} bytes, no header); re-download it")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER:
                raise BadInput(f"{path}: corrupt safetensors header (length {n} is over the format's limit of "
                               f"{MAX_HEADER} bytes); re-download it")
            if n > size - 8:
                raise BadInput(f"{path}: truncated safetensors file (header length {n} but the file has "
                               f"{size} bytes); re-download it")
            raw = f.read(n)
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror or e})")
    if len(raw) != n:
        raise BadInput(f"{path}: truncated while reading the header; re-download it")
    data_start = 8 + n
    tensors, meta = parse_header(raw, size - data_start, str(path))
    return tensors, data_start, meta


class _Obj(list):
    """A JSON object as its (key, value) pairs, duplicates kept (object_pairs_hook)."""


class _Number(ValueError):
    pass


def _json_int(text: str):
    # JSON integers as the format's parser sees them: -0 and integers outside the
    # 64-bit range are floating point there (so never a size or an offset), and a
    # number no double can hold is an error.
    if len(text) > 400:
        raise _Number(f"number out of range: {text[:20]}...")
    v = int(text)
    if -(2**63) <= v < _U64 and text != "-0":
        return v
    return _json_float(text)


def _json_float(text: str) -> float:
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise _Number(f"number out of range: {text[:20]}")
    return v


def _json_constant(text: str):
    raise _Number(f"{text} is not JSON")


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """Deepest nesting of objects and arrays (exact for valid JSON), without recursion."""
    depth = deepest = 0
    for b in _BRACKETS.findall(_STRING.sub("", text)):
        if b in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def short_repr(v, limit: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + "..."


def _has_surrogate(doc) -> bool:
    """A lone UTF-16 surrogate (from a \\uD800-style escape) anywhere in a parsed document."""
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, list):       # arrays, and _Obj pairs
            stack.extend(v)
        elif isinstance(v, tuple):
            stack.extend(v)
    return False


def _size(v) -> bool:
    return type(v) is int and 0 <= v < _U64


def parse_header(raw: bytes, data_len: int, where: str) -> tuple[dict, dict]:
    """The header bytes of a safetensors file whose data section has ``data_len`` bytes
    -> (tensors, metadata); every violation of the format is a BadInput."""
    def bad(what: str) -> BadInput:
        return BadInput(f"{where}: corrupt safetensors header: {what}; re-download or re-export the file")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 (byte {e.start})")
    if json_depth(text) > MAX_DEPTH:
        raise bad(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        doc = json.loads(text, object_pairs_hook=_Obj, parse_int=_json_int, parse_float=_json_float,
                         parse_constant=_json_constant)
    except (ValueError, RecursionError) as e:
        raise bad(f"not JSON ({str(e)[:100]})")
    if not isinstance(doc, _Obj):
        raise bad("not a JSON object")
    if _has_surrogate(doc):
        raise bad("a string holds a lone UTF-16 surrogate escape")
    meta: dict = {}
    seen_meta = False
    entries: dict[str, tuple] = {}
    for key, value in doc:
        if key == "__metadata__":
            if seen_meta:
                raise bad("'__metadata__' appears twice")
            seen_meta = True
            if value is None:
                continue
            if not isinstance(value, _Obj):
                raise bad(f"'__metadata__' must be an object of strings, not {short_repr(value)}")
            for mk, mv in value:
                if not isinstance(mv, str):
                    raise bad(f"'__metadata__' value of {short_repr(mk)} must be a string, not {short_repr(mv)}")
                meta[mk] = mv
            continue
        entries[key] = _entry(key, value, bad)     # a repeated key: the last one counts
    spans = []
    for key, (dtype, shape, (a, b)) in entries.items():
        numel = 1
        for s in shape:
            numel *= s
            if numel >= _U64:
                raise bad(f"{short_repr(key)}: shape {short_repr(shape)} overflows")
        bits = numel * FORMAT_BITS[dtype]
        if bits >= _U64:
            raise bad(f"{short_repr(key)}: shape {short_repr(shape)} overflows")
        if bits % 8:
            raise bad(f"{short_repr(key)}: {numel} elements of {dtype} do not end on a byte boundary")
        if b < a or b - a != bits // 8:
            raise bad(f"{short_repr(key)}: data_offsets [{a}, {b}] do not hold shape {short_repr(shape)} of {dtype} "
                      f"({bits // 8} bytes)")
        spans.append((a, b, key))
    pos = 0
    for a, b, key in sorted(spans, key=lambda t: (t[0], t[1])):
        if a != pos:
            what = "overlaps another tensor" if a < pos else f"leaves bytes {pos}..{a} of the data section unused"
            raise bad(f"{short_repr(key)}: data_offsets [{a}, {b}] {what}")
        pos = b
    if pos != data_len:
        if pos > data_len:
            raise BadInput(f"{where}: truncated: tensors need {pos} bytes of data but the file has {data_len}; "
                           "re-download it")
        raise bad(f"the data section has {data_len} bytes but the tensors cover {pos}")
    tensors = {k: {"dtype": d, "shape": list(s), "data_offsets": list(o)} for k, (d, s, o) in entries.items()}
    return tensors, meta


def _entry(key: str, value, bad) -> tuple[str, list[int], tuple[int, int]]:
    """One tensor's entry: an object with dtype, shape and data_offsets (other fields are
    ignored, a repeated one is an error) or, as the format's parser also takes, the
    array [dtype, shape, data_offsets]."""
    k = short_repr(key)
    if isinstance(value, _Obj):
        fields: dict = {}
        for name, v in value:
            if name in ("dtype", "shape", "data_offsets"):
                if name in fields:
                    raise bad(f"{k}: field {name!r} appears twice")
                fields[name] = v
        for name in ("dtype", "shape", "data_offsets"):
            if name not in fields:
                raise bad(f"{k}: no {name!r}")
        dtype, shape, offsets = fields["dtype"], fields["shape"], fields["data_offsets"]
    elif isinstance(value, list) and len(value) == 3:
        dtype, shape, offsets = value
    else:
        raise bad(f"{k}: expected {{dtype, shape, data_offsets}}, got {short_repr(value)}")
    if isinstance(dtype, _Obj) and len(dtype) == 1 and dtype[0][1] is None:
        dtype = dtype[0][0]                          # {"F32": null} spells F32 too
    if not isinstance(dtype, str) or dtype not in FORMAT_BITS:
        raise bad(f"{k}: unknown dtype {short_repr(dtype)}")
    if type(shape) is not list or not all(_size(s) for s in shape):
        raise bad(f"{k}: shape must be a list of non-negative integers, not {short_repr(shape)}")
    if type(offsets) is not list or len(offsets) != 2 or not all(_size(o) for o in offsets):
        raise bad(f"{k}: data_offsets must be two non-negative integers, not {short_repr(offsets)}")
    return dtype, shape, (offsets[0], offsets[1])


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
        from .jsonfile import kind, load
        what = "a shard index ({'weight_map': {key: shard file name}})"
        data = load(index, what)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise BadInput(f"{index}: not a valid shard index (needs a 'weight_map' object, found "
                           f"{kind(weight_map) if isinstance(data, dict) and 'weight_map' in data else 'none'})")
        # Containment is checked on the path as written, not on where symlinks lead:
        # a Hugging Face cache snapshot is a folder of symlinks into ../../blobs.
        root = os.path.normpath(os.path.abspath(self.path))
        by_file: dict[str, set[str]] = {}
        for key, fname in weight_map.items():
            if not isinstance(fname, str) or not fname or "\0" in fname:
                raise BadInput(f"{index}: {short_repr(key)} maps to {short_repr(fname)}, not a file name; "
                               "fix the index")
            norm = os.path.normpath(os.path.join(root, fname))
            if os.path.isabs(fname) or not norm.startswith(root + os.sep):
                raise BadInput(f"{index}: shard {short_repr(fname)} lies outside {self.path}; refusing to read it")
            by_file.setdefault(os.path.relpath(norm, root), set()).add(key)
        for fname in sorted(by_file):
            p = self.path / fname
            try:
                present = p.is_file()
            except OSError as e:
                raise BadInput(f"{index}: shard {short_repr(fname)}: {e.strerror or e}")
            if not present:
                raise BadInput(f"{index}: shard {short_repr(fname)} is missing from {self.path}")
            self._reject_pickle(p)
        for fname in sorted(by_file):
            p = self.path / fname
            self._add_file(p)
            have = {k for k, t in self.tensors.items() if t.file == p}
            listed = by_file[fname]
            if listed - have:
                k = sorted(listed - have)[0]
                raise BadInput(f"{index}: {short_repr(k)} is listed in {fname} but that shard does not contain it")
            if have - listed:
                k = sorted(have - listed)[0]
                raise BadInput(f"{p}: holds {short_repr(k)}, which {index.name} does not list; fix the index "
                               "(or re-download both)")
        self.index = index

    def _add_file(self, p: Path) -> None:
        hdr, data_start, meta = read_header(p)
        for key, info in hdr.items():
            if key in self.tensors:
                raise BadInput(f"{p}: duplicate key {short_repr(key)} (also in {self.tensors[key].file.name}); "
                               "remove one copy")
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
