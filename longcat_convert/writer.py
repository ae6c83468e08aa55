"""Output layout for sharded safetensors, decided before any tensor moves.

A conversion knows every output key, dtype and shape up front, so the shard a
tensor lands in, its byte offsets and each shard's header can all be computed
first. The copy engine (``stream.py``) then writes each header and streams the
tensor bytes behind it in order; nothing is ever held as a dict of tensors.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInput
from .shards import DTYPES

WEIGHTS_NAME = "diffusion_pytorch_model"
HEADER_ALIGN = 8
DEFAULT_MAX_SHARD = "5GB"


@dataclass(frozen=True)
class Piece:
    """A contiguous byte range of a source file that feeds an output tensor."""
    file: Path
    start: int          # absolute byte offset in ``file``
    stop: int
    key: str            # the source tensor it belongs to (for messages)

    @property
    def nbytes(self) -> int:
        return self.stop - self.start


@dataclass
class OutTensor:
    """One output tensor: its final dtype/shape and the source bytes, in order."""
    key: str
    dtype: str                       # safetensors dtype name of the OUTPUT
    shape: tuple[int, ...]
    pieces: list[Piece]
    src_dtype: str                   # safetensors dtype name of the source bytes
    sources: tuple[str, ...] = ()    # source keys, for reports
    op: str = "rename"               # rename | split | concat (the table's transform)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype][1]

    @property
    def src_nbytes(self) -> int:
        return sum(p.nbytes for p in self.pieces)

    @property
    def cast(self) -> bool:
        return self.dtype != self.src_dtype


@dataclass
class OutShard:
    name: str
    tensors: list[OutTensor]
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # relative to data start
    header: bytes = b""

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def file_bytes(self) -> int:
        return len(self.header) + self.data_bytes


def parse_size(text: str | int) -> int:
    """'5GB' -> 5e9, '500MiB' -> 500*2**20, plain integers are bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", str(text))
    if not m:
        raise BadInput(f"--max-shard-size: cannot read {text!r}; use e.g. 5GB, 500MB or 2GiB")
    num, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    power = " KMGT".index(unit) if unit else 0
    size = int(num * ((1024 if binary else 1000) ** power))
    if size <= 0:
        raise BadInput(f"--max-shard-size: must be positive, got {text!r}")
    return size


def encode_header(entries: dict[str, dict], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length prefix plus the JSON header, padded with spaces to 8 bytes."""
    body = {"__metadata__": dict(metadata or {"format": "pt"})}
    body.update(entries)
    raw = json.dumps(body, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % HEADER_ALIGN)
    return len(raw).to_bytes(8, "little") + raw


def layout(tensors: list[OutTensor], max_shard_bytes: int, basename: str = WEIGHTS_NAME) -> list[OutShard]:
    """Greedy sharding in the given order; a tensor larger than the limit gets its own shard."""
    groups: list[list[OutTensor]] = []
    size = 0
    for t in tensors:
        if not groups or (size + t.nbytes > max_shard_bytes and groups[-1]):
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if not groups:
        groups = [[]]
    n = len(groups)
    shards = []
    for i, group in enumerate(groups, 1):
        shard = OutShard(f"{basename}-{i:05d}-of-{n:05d}.safetensors", group)
        entries, pos = {}, 0
        for t in group:
            shard.offsets[t.key] = (pos, pos + t.nbytes)
            entries[t.key] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
            pos += t.nbytes
        shard.header = encode_header(entries)
        shards.append(shard)
    return shards


def index_json(shards: list[OutShard]) -> str:
    weight_map = {t.key: s.name for s in shards for t in s.tensors}
    total = sum(s.data_bytes for s in shards)
    return json.dumps({"metadata": {"total_size": total},
                       "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"


def index_name(basename: str = WEIGHTS_NAME) -> str:
    return f"{basename}.safetensors.index.json"
