"""``export NATIVE OUTPUT``: a FastVideo LongCat folder back to the original layout,
through the same mapping table read backwards (``reverse_ops``: renames back,
splits concatenated along dim 0), so weights trained in FastVideo run in the
original code. Original -> native -> original is bitwise identical.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, components as comp, config_map, dtypes, plan as planmod, precheck
from .atomic import AtomicFolder, check_output
from .convert import (RECORD, TOOL, Options, check_space, source_records, tensor_records, warn_nonfinite,
                      write_weights)
from .errors import BadInput, sigterm_as_interrupt
from .progress import Reporter
from .shards import ShardedReader
from .sources import COMPONENTS, local_note
from .table import Dims, reverse_ops, table_hash


@dataclass
class NativeSource:
    spec: str
    transformer: Path
    root: Path | None = None
    components: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.transformer / "config.json"

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": "native" if self.root else "transformer",
                "transformer": str(self.transformer)}


def resolve_native(spec: str) -> NativeSource:
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise BadInput(f"{spec}: no such folder{local_note(path)}; NATIVE must be a FastVideo LongCat folder "
                       "(with transformer/) or a transformer/ folder")
    if (path / "transformer").is_dir():
        src = NativeSource(spec, path / "transformer", root=path,
                           components={c: path / c for c in COMPONENTS if (path / c).is_dir()})
        if (path / "lora").is_dir():
            src.notes.append(f"{path / 'lora'}: LoRAs in FastVideo's format are not exported")
        return src
    if (path / "config.json").is_file():
        return NativeSource(spec, path)
    raise BadInput(f"{spec}: no transformer/ folder and no config.json; NATIVE must be a FastVideo LongCat "
                   "folder or its transformer/ folder")


def export(native: str, output: str | Path, opts: Options | None = None,
           reporter: Reporter | None = None) -> dict:
    opts = opts or Options()
    reporter = reporter or Reporter(quiet=True)
    t0 = time.perf_counter()
    max_shard = opts.checked_max_shard()
    precheck.export(native, output)
    nat = resolve_native(native)
    src_root = nat.root or nat.transformer
    out = check_output(Path(output), [src_root], opts.force)

    native_cfg = config_map.load(nat.config_path)
    orig_cfg, notes = config_map.to_original(native_cfg, str(nat.config_path))
    dims = Dims.from_original_config(orig_cfg, str(nat.config_path))
    warnings: list[str] = []
    notes += nat.notes
    reader = ShardedReader(nat.transformer)
    target_dtype = dtypes.safetensors(opts.dtype) if opts.dtype else None
    tensors = planmod.build(reader, reverse_ops(dims), what="native", dtype=target_dtype)
    components = nat.components if opts.components != "skip" else {}
    need = sum(t.nbytes for t in tensors) + (comp.total_bytes(components) if opts.components == "copy" else 0)
    check_space(out, need)

    atomic = AtomicFolder(out, force=opts.force, fsync=opts.fsync)
    with sigterm_as_interrupt(), atomic as tmp, reporter:
        ddir = tmp / "dit"
        shards, result = write_weights(tensors, ddir, max_shard=max_shard, reader=reader, opts=opts,
                                       reporter=reporter, label="dit")
        (ddir / "config.json").write_text(config_map.dump(orig_cfg))
        warn_nonfinite(result, warnings, reporter)
        comp_record, comp_notes = comp.place(components, tmp, opts.components)
        notes += comp_notes
        record = {
            "tool": TOOL, "version": __version__, "table_hash": table_hash(),
            "direction": "native->original",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": nat.describe(),
            "options": {"dtype": dtypes.short(opts.dtype) if opts.dtype else None, "max_shard_size": max_shard, "components": opts.components,
                        "strict": opts.strict, "hash_tensors": opts.hash_tensors, "fsync": opts.fsync},
            "config": {"native": native_cfg, "original": orig_cfg},
            "warnings": warnings, "notes": notes,
            "dtype": planmod.dtype_decisions(tensors),
            "nonfinite": sorted(result.nonfinite),
            "source_files": source_records(result, reader, src_root, [nat.config_path]),
            "outputs": {f"dit/{s.name}": {"bytes": s.file_bytes, "tensors": len(s.tensors)} for s in shards},
            "tensors": tensor_records(shards, result),
            "components": comp_record,
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        summary = {"ok": True, "command": "export", "source": nat.describe(), "output": str(out),
                   "tensors": len(tensors), "shards": len(shards), "bytes": sum(t.nbytes for t in tensors),
                   "components": {k: v["mode"] for k, v in comp_record.items()},
                   "seconds": round(time.perf_counter() - t0, 3), "warnings": warnings, "notes": notes}
        atomic.commit()                # after this, an interrupt leaves a complete output (exit 0)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
