"""``verify SOURCE OUTPUT``: re-read both sides and check that every output tensor is,
byte for byte, the table's transform of its source (and the cast of it where the
conversion changed the dtype), that the config is the translation of the source
config, and that every LoRA file is the conversion of its source LoRA.

Problems with OUTPUT are verification failures (exit 1, naming the keys);
problems reading SOURCE are bad input (exit 2).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

from . import components as comp, config_map, plan as planmod, precheck, sources
from .convert import RECORD, load_record
from .errors import BadInput, VerificationFailed
from .lora import plan_lora
from .progress import Reporter
from .shards import ShardedReader
from .stream import CHUNK, ITEMSIZE, WORKERS, cast_bytes
from .table import Dims, expand, reverse_ops
from .writer import OutTensor

MAX_LISTED = 8


class Problems(list):
    def add(self, text: str) -> None:
        self.append(text)


def _open_output(folder: Path, problems: Problems) -> ShardedReader | None:
    try:
        return ShardedReader(folder)
    except BadInput as e:
        problems.add(str(e))
        return None


def _compare_tensors(tensors: list[OutTensor], out: ShardedReader, problems: Problems, *,
                     chunk: int = CHUNK, workers: int = WORKERS,
                     progress: Callable[[int], None] | None = None) -> int:
    """Byte comparison of every expected tensor against OUTPUT; returns bytes compared."""
    lock = threading.Lock()
    jobs = list(tensors)
    state = {"next": 0, "bytes": 0, "error": None}

    def take() -> OutTensor | None:
        with lock:
            if state["next"] >= len(jobs) or state["error"] is not None:
                return None
            state["next"] += 1
            return jobs[state["next"] - 1]

    def work() -> None:
        src_fds: dict[Path, int] = {}
        out_fds: dict[Path, int] = {}
        a, b = bytearray(chunk), bytearray(chunk)
        try:
            while (t := take()) is not None:
                info = out.info(t.key)
                if info.file not in out_fds:
                    out_fds[info.file] = os.open(info.file, os.O_RDONLY)
                fd_o = out_fds[info.file]
                o_pos = info.start
                item, out_item = ITEMSIZE[t.src_dtype], ITEMSIZE[t.dtype]
                step = chunk - chunk % (item * out_item)
                same = True
                for piece in t.pieces:
                    if piece.file not in src_fds:
                        src_fds[piece.file] = os.open(piece.file, os.O_RDONLY)
                    fd_s = src_fds[piece.file]
                    pos = piece.start
                    while pos < piece.stop and same:
                        n = min(step, piece.stop - pos)
                        if os.preadv(fd_s, [memoryview(a)[:n]], pos) != n:
                            raise BadInput(f"{piece.file}: truncated while reading {piece.key!r}")
                        want = cast_bytes(memoryview(a)[:n], t.src_dtype, t.dtype) if t.cast else memoryview(a)[:n]
                        m = len(want)
                        if os.preadv(fd_o, [memoryview(b)[:m]], o_pos) != m:
                            with lock:
                                problems.add(f"{t.key}: output file {info.file.name} is truncated")
                            same = False
                            break
                        if t.cast:
                            same = bytes(want) == bytes(memoryview(b)[:m])
                        else:
                            same = (a == b) if m == chunk else (a[:m] == b[:m])
                        pos += n
                        o_pos += m
                        if progress:
                            progress(m)
                        with lock:
                            state["bytes"] += m
                if not same:
                    with lock:
                        problems.add(f"{t.key}: bytes differ from the expected {t.op} of {', '.join(t.sources)}"
                                     + (f" cast to {t.dtype}" if t.cast else ""))
        except BaseException as e:  # noqa: BLE001
            with lock:
                state["error"] = e
        finally:
            for fd in list(src_fds.values()) + list(out_fds.values()):
                os.close(fd)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, workers))]
    for th in threads:
        th.start()
    for th in threads:
        while th.is_alive():
            th.join(0.2)
    if state["error"] is not None:
        raise state["error"]
    return state["bytes"]


def _expected_tensors(src_reader: ShardedReader, ops, out: ShardedReader | None, problems: Problems,
                      what: str) -> list[OutTensor]:
    tensors = planmod.build(src_reader, ops, what=what)
    if out is None:
        return []
    expected = {t.key for t in tensors}
    present = set(out.keys())
    missing, unknown = sorted(expected - present), sorted(present - expected)
    if missing:
        problems.add(f"{len(missing)} tensor(s) missing from the output: {', '.join(missing[:MAX_LISTED])}")
    if unknown:
        problems.add(f"{len(unknown)} unexpected tensor(s) in the output: {', '.join(unknown[:MAX_LISTED])}")
    keep = []
    for t in tensors:
        if t.key not in present:
            continue
        info = out.info(t.key)
        if info.shape != t.shape:
            problems.add(f"{t.key}: shape {list(info.shape)} in the output, expected {list(t.shape)}")
            continue
        if info.dtype != t.src_dtype:
            if t.src_dtype in planmod.FLOAT_DTYPES and info.dtype in planmod.FLOAT_DTYPES:
                t.dtype = info.dtype          # the conversion cast it: expect exactly that cast
            else:
                problems.add(f"{t.key}: dtype {info.dtype} in the output, expected {t.src_dtype}")
                continue
        keep.append(t)
    return keep


def verify(source: str, output: str | Path, *, revision: str | None = None,
           reporter: Reporter | None = None) -> dict:
    reporter = reporter or Reporter(quiet=True)
    t0 = time.perf_counter()
    out = Path(output)
    if not out.is_dir():
        raise BadInput(f"{output}: no such output folder{sources.local_note(out)}")
    if out.name == "transformer" and precheck.layout(out) == "converted" and precheck.layout(out.parent) == "converted":
        out = out.parent              # CONVERTED/transformer, as parity takes it: the conversion is its folder
    record = load_record(out)
    if record is None:
        direction = "original->native" if (out / "transformer").is_dir() else "native->original"
    else:
        direction = record.get("direction", "original->native")
    # SOURCE and OUTPUT in the roles the direction needs (swapped arguments are not checked
    # "the other way round" silently).
    precheck.verify(source, out, direction, record is not None)
    problems = Problems()
    checked_loras: list[str] = []
    if direction == "original->native":
        src = sources.resolve(source, revision=revision)
        orig_cfg = config_map.load(src.config_path)
        dims = Dims.from_original_config(orig_cfg, str(src.config_path))
        want_cfg, _, _ = config_map.to_native(orig_cfg, str(src.config_path))
        weights_dir, ops, what = out / "transformer", expand(dims), "source"
        src_reader = ShardedReader(src.dit)
        src_components = src.components
    else:
        from .export import resolve_native
        nat = resolve_native(source)
        native_cfg = config_map.load(nat.config_path)
        want_cfg, _ = config_map.to_original(native_cfg, str(nat.config_path))
        dims = Dims.from_original_config(want_cfg, str(nat.config_path))
        weights_dir, ops, what = out / "dit", reverse_ops(dims), "native"
        src_reader = ShardedReader(nat.transformer)
        src_components = nat.components
    cfg_path = weights_dir / "config.json"
    try:
        got_cfg = config_map.load(cfg_path)
        if got_cfg != want_cfg:
            diff = sorted(k for k in set(got_cfg) | set(want_cfg) if got_cfg.get(k) != want_cfg.get(k))
            problems.add(f"{cfg_path}: differs from the translated source config in {', '.join(diff)}")
    except BadInput as e:
        problems.add(str(e))
    out_reader = _open_output(weights_dir, problems)
    tensors = _expected_tensors(src_reader, ops, out_reader, problems, what)
    total = sum(t.nbytes for t in tensors)
    with reporter:
        compared = _compare_tensors(tensors, out_reader, problems, progress=reporter.task("verify", total)) \
            if out_reader is not None else 0

    if direction == "original->native":
        idx = out / "model_index.json"
        try:
            mi = config_map.load(idx)
            workload = (record or {}).get("options", {}).get("workload", "t2v")
            if not isinstance(workload, str) or workload not in comp.WORKLOADS:
                problems.add(f"{RECORD}: options.workload {workload!r} is not one of {', '.join(comp.WORKLOADS)}")
                workload = "t2v"
            want_pipeline = comp.WORKLOADS[workload]
            if mi.get("_class_name") != want_pipeline or \
                    mi.get("transformer") != ["diffusers", config_map.NATIVE_CLASS]:
                problems.add(f"{idx}: does not name {want_pipeline} (--workload {workload}) and "
                             f"{config_map.NATIVE_CLASS}")
        except BadInput as e:
            problems.add(str(e))
        lora_names = {p.stem for p in src.loras}
        lora_dir = out / "lora"
        if lora_dir.is_dir():
            extra = sorted(p.name for p in lora_dir.iterdir() if p.name not in lora_names)
            if extra:
                problems.add(f"{lora_dir}: LoRA folder(s) with no source LoRA: {', '.join(extra)}")
        if record is None or record.get("options", {}).get("loras", True):
            for path in src.loras:
                checked_loras.append(path.name)
                _verify_lora(path, dims, out, problems)
    if record is not None and record.get("components"):
        for p in comp.compare(record["components"], src_components, out):
            problems.add(p)
    if problems:
        listed = "; ".join(problems[:MAX_LISTED]) + (f"; ... ({len(problems) - MAX_LISTED} more)"
                                                     if len(problems) > MAX_LISTED else "")
        raise VerificationFailed(f"{out}: {len(problems)} problem(s): {listed}")
    return {"ok": True, "command": "verify", "output": str(out), "direction": direction,
            "tensors": len(tensors), "bytes": compared, "loras": checked_loras,
            "seconds": round(time.perf_counter() - t0, 3), "record": (out / RECORD).is_file()}


def _verify_lora(path: Path, dims: Dims, out: Path, problems: Problems) -> None:
    lp = plan_lora(path, dims)
    target = out / lp.out_relpath
    if not target.is_file():
        problems.add(f"{lp.out_relpath}: missing (converted from {path.name})")
        return
    try:
        reader = ShardedReader(target)
    except BadInput as e:
        problems.add(str(e))
        return
    expected = {t.key for t in lp.tensors}
    present = set(reader.keys())
    if expected != present:
        problems.add(f"{lp.out_relpath}: keys differ from the conversion of {path.name} "
                     f"(missing {sorted(expected - present)[:3]}, unexpected {sorted(present - expected)[:3]})")
        return
    for t in lp.tensors:
        info = reader.info(t.key)
        if info.dtype != t.dtype or info.shape != t.shape or reader.read_bytes(t.key) != t.make():
            problems.add(f"{lp.out_relpath}: {t.key} differs from the conversion of {path.name}")
