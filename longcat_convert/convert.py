"""Original LongCat-Video folder -> FastVideo folder (``convert``), and the shared
machinery ``export`` uses for the way back.

Order of work: resolve SOURCE, read every header and config, build the full
plan (keys, shapes, dtypes, shard layout, LoRA targets) and check free space --
all before a byte of tensor data moves. Then stream into a temporary folder
beside OUTPUT and rename it into place. Any failure removes the temporary
folder; the source is only ever opened for reading.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__, components as comp, config_map, dtypes, plan as planmod, sources
from .atomic import AtomicFolder, check_output, existing_ancestor
from .errors import BadInput, sigterm_as_interrupt
from .lora import LoraPlan, plan_lora, write_lora
from .progress import Reporter
from .shards import ShardedReader
from .stream import sha256_file, CHUNK, WORKERS, Engine, StreamResult
from .table import Dims, expand, table_hash
from .writer import DEFAULT_MAX_SHARD, OutShard, OutTensor, index_json, index_name, layout, parse_size

TOOL = "longcat-convert"
RECORD = "conversion.json"


@dataclass
class Options:
    dtype: str | None = None              # "bf16" | "fp16" | "fp32" (None: keep)
    max_shard_size: str | int = DEFAULT_MAX_SHARD
    components: str = "copy"              # copy | link | skip
    loras: bool = True
    force: bool = False
    strict: bool = False
    fsync: bool = True
    revision: str | None = None
    source_sha256: bool = False           # also the plain sha256 of every source shard (one more pass)
    chunk: int = CHUNK
    workers: int = WORKERS
    hash_tensors: bool = True             # sha256 of every output tensor (the costly part of a copy)
    workload: str = "t2v"                 # t2v | i2v | vc | refine: model_index.json's pipeline class

    def checked_max_shard(self) -> int:
        """Validate the choices (one-line BadInput) and return the shard size in bytes."""
        if self.components not in comp.MODES:
            raise BadInput(f"--components: {self.components!r} is not one of {', '.join(comp.MODES)}")
        if self.dtype is not None:
            dtypes.canonical(self.dtype)
        comp.pipeline_class(self.workload)
        return parse_size(self.max_shard_size)


def warn_nonfinite(result: StreamResult, warnings: list[str], reporter: Reporter) -> None:
    """Record (and show) the tensors the copy pass found NaN/Inf in; --strict refused them earlier."""
    if result.nonfinite:
        keys = sorted(result.nonfinite)
        warnings.append(f"non-finite values (NaN/Inf) in {len(keys)} tensor(s): {', '.join(keys[:5])}"
                        + (" ..." if len(keys) > 5 else "") + " (copied as they are; --strict refuses)")
        reporter.warn(warnings[-1])


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def check_space(out: Path, need: int) -> None:
    free = shutil.disk_usage(existing_ancestor(out.parent)).free
    if need > free:
        raise BadInput(f"{out}: needs {need / 1e9:.2f} GB but only {free / 1e9:.2f} GB is free on that disk; "
                       "free some space or use --components link/skip")


def write_weights(tensors: list[OutTensor], folder: Path, *, max_shard: int, reader: ShardedReader,
                  opts: Options, reporter: Reporter, label: str) -> tuple[list[OutShard], StreamResult]:
    """Lay out and stream ``tensors`` into ``folder`` (shards + index)."""
    shards = layout(tensors, max_shard)
    folder.mkdir(parents=True, exist_ok=True)
    total = sum(t.nbytes for t in tensors)
    engine = Engine(chunk=opts.chunk, workers=opts.workers, strict=opts.strict,
                    progress=reporter.task(label, total), hash_sources=opts.source_sha256,
                    hash_tensors=opts.hash_tensors, writeback=opts.fsync)
    result = engine.run(shards, folder, reader.files, reader.data_starts)
    (folder / index_name()).write_text(index_json(shards))
    return shards, result


def tensor_records(shards: list[OutShard], result: StreamResult) -> dict:
    rec = {}
    for s in shards:
        for t in s.tensors:
            rec[t.key] = {"sha256": result.tensor_sha256.get(t.key), "dtype": t.dtype, "shape": list(t.shape),
                          "file": s.name, "from": list(t.sources), "op": t.op,
                          **({"cast_from": t.src_dtype} if t.cast else {})}
    return rec


def source_records(result: StreamResult, reader: ShardedReader, root: Path, small: list[Path]) -> dict:
    """conversion.json's record of every file read.

    Shards get the digest of their header and a manifest digest (sha256 over the
    sha256 of every byte range, which the single copy pass yields for free); the
    plain file sha256 as well when it was computed (--source-sha256) or when the
    Hugging Face cache names the file by it. Small files get their sha256.
    """
    out = {}
    for p in reader.files:
        rec = dict(result.file_manifest.get(p, {"bytes": p.stat().st_size}))
        if p in result.file_sha256:
            rec["sha256"] = result.file_sha256[p]
        elif (known := sources.cached_sha256(p)) is not None:
            rec["sha256"] = known
            rec["sha256_from"] = "huggingface cache (LFS object id, not recomputed)"
        out[_rel(p, root)] = rec
    index = getattr(reader, "index", None)
    for p in small + ([index] if index else []):
        out[_rel(p, root)] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return dict(sorted(out.items()))


def convert(source: str, output: str | Path, opts: Options | None = None,
            reporter: Reporter | None = None) -> dict:
    """Convert SOURCE (model folder, dit/ folder or hub id) into a FastVideo folder at OUTPUT."""
    opts = opts or Options()
    reporter = reporter or Reporter(quiet=True)
    t0 = time.perf_counter()
    max_shard = opts.checked_max_shard()
    src = sources.resolve(source, revision=opts.revision, components=opts.components != "skip",
                          loras=opts.loras)
    src_root = src.root or src.dit
    out = check_output(Path(output), [src_root], opts.force)

    # -- everything that can be checked before a tensor byte moves ----------
    orig_cfg = config_map.load(src.config_path)
    dims = Dims.from_original_config(orig_cfg, str(src.config_path))
    native_cfg, warnings, notes = config_map.to_native(orig_cfg, str(src.config_path))
    reader = ShardedReader(src.dit)
    target_dtype = dtypes.safetensors(opts.dtype) if opts.dtype else None
    tensors = planmod.build(reader, expand(dims), dtype=target_dtype)
    lora_plans: list[LoraPlan] = [plan_lora(p, dims) for p in src.loras] if opts.loras else []
    components = src.components if opts.components != "skip" else {}
    skipped = sorted(src.components) if opts.components == "skip" else []
    notes += src.notes
    need = sum(t.nbytes for t in tensors) + sum(t.nbytes for lp in lora_plans for t in lp.tensors)
    if opts.components == "copy":
        need += comp.total_bytes(components)
    check_space(out, need)
    for w in warnings:
        reporter.warn(w)

    atomic = AtomicFolder(out, force=opts.force, fsync=opts.fsync)
    with sigterm_as_interrupt(), atomic as tmp, reporter:
        tdir = tmp / "transformer"
        shards, result = write_weights(tensors, tdir, max_shard=max_shard, reader=reader, opts=opts,
                                       reporter=reporter, label="transformer")
        (tdir / "config.json").write_text(config_map.dump(native_cfg))
        warn_nonfinite(result, warnings, reporter)
        lora_records = [write_lora(lp, tmp) for lp in lora_plans]
        comp_progress = reporter.task("components", comp.total_bytes(components)) if components else None
        comp_record, comp_notes = comp.place(components, tmp, opts.components, comp_progress)
        for name in skipped:
            comp_record[name] = {"mode": "skip"}
        notes += comp_notes
        pipeline = comp.pipeline_class(opts.workload)
        index = {"_class_name": pipeline,
                 "_diffusers_version": orig_cfg.get("_diffusers_version", "0.35.1")}
        for name in ("tokenizer", "text_encoder", "vae", "scheduler"):
            if name in components:
                index[name] = comp.INDEX_ENTRIES[name]
        index["transformer"] = ["diffusers", config_map.NATIVE_CLASS]
        missing = [c for c in comp.INDEX_ENTRIES if c not in components]
        if missing:
            notes.append(f"model_index.json lists only the transformer and the components written; "
                         f"FastVideo's {pipeline} also needs {', '.join(missing)}")
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

        src_files = source_records(result, reader, src_root,
                                   [src.config_path] + [lp.source for lp in lora_plans])
        record = {
            "tool": TOOL, "version": __version__, "table_hash": table_hash(),
            "direction": "original->native",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": src.describe(),
            "options": {"dtype": dtypes.short(opts.dtype) if opts.dtype else None, "max_shard_size": max_shard, "components": opts.components,
                        "loras": opts.loras, "strict": opts.strict, "source_sha256": opts.source_sha256,
                        "hash_tensors": opts.hash_tensors, "fsync": opts.fsync, "workload": opts.workload},
            "config": {"original": orig_cfg, "native": native_cfg},
            "warnings": warnings, "notes": notes,
            "dtype": planmod.dtype_decisions(tensors),
            "nonfinite": sorted(result.nonfinite),
            "source_files": src_files,
            "outputs": {f"transformer/{s.name}": {"bytes": s.file_bytes, "tensors": len(s.tensors)}
                        for s in shards},
            "tensors": tensor_records(shards, result),
            "loras": lora_records,
            "components": comp_record,
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        summary = {"ok": True, "command": "convert", "source": src.describe(), "output": str(out),
                   "tensors": len(tensors), "shards": len(shards), "bytes": sum(t.nbytes for t in tensors),
                   "loras": [lp.out_relpath for lp in lora_plans],
                   "components": {k: v["mode"] for k, v in comp_record.items()},
                   "workload": opts.workload, "pipeline": pipeline,
                   "seconds": round(time.perf_counter() - t0, 3), "warnings": warnings, "notes": notes}
        atomic.commit()                # after this, an interrupt leaves a complete output (exit 0)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def load_record(output: Path) -> dict | None:
    p = output / RECORD
    if not p.is_file():
        return None
    from .jsonfile import load_object
    record = load_object(p, "this tool's conversion record (the output folder is damaged: convert again)")
    shapes = {"direction": str, "options": dict, "components": dict}
    for key, kind in shapes.items():
        if key in record and not isinstance(record[key], kind):
            raise BadInput(f"{p}: {key!r} is not a {kind.__name__}; the output folder is damaged, convert again")
    if not all(isinstance(v, dict) for v in record.get("components", {}).values()):
        raise BadInput(f"{p}: 'components' entries are not objects; the output folder is damaged, convert again")
    return record
