"""From the mapping table and a checkpoint's headers to the exact list of output
tensors, each with the source byte ranges it is made of.

Everything that can be wrong with a checkpoint's keys, shapes or dtypes is
found here, before a single tensor byte is read.
"""
from __future__ import annotations

from pathlib import Path

from .errors import BadInput
from .shards import DTYPES, ShardedReader
from .stream import FLOAT_DTYPES
from .table import Op, check_coverage
from .writer import OutTensor, Piece



def build(reader: ShardedReader, ops: list[Op], *, what: str = "source",
          dtype: str | None = None) -> list[OutTensor]:
    """Validate ``reader`` against ``ops`` and return the output tensors in source file order.

    ``dtype`` (a safetensors dtype name) casts every floating-point tensor; other
    tensors keep their dtype.
    """
    where = str(reader.path)
    present = set(reader.keys())
    check_coverage(present, {s for op in ops for s in op.sources}, where, what)
    file_rank = {p: i for i, p in enumerate(reader.files)}
    out: list[OutTensor] = []
    for op in ops:
        infos = [reader.info(k) for k in op.sources]
        for info, shape in zip(infos, op.source_shapes):
            if info.shape != tuple(shape):
                raise BadInput(f"{info.file}: {info.key!r} has shape {list(info.shape)} but config.json implies "
                               f"{list(shape)}; the checkpoint does not match its config.json")
        src_dtype = infos[0].dtype
        for info in infos:
            if info.dtype not in DTYPES:
                raise BadInput(f"{info.file}: {info.key!r} is {info.dtype}; the converter handles "
                               f"{', '.join(DTYPES)} tensors only")
        for info in infos[1:]:
            if info.dtype != src_dtype:
                raise BadInput(f"{info.file}: {info.key!r} is {info.dtype} but {infos[0].key!r} is {src_dtype}; "
                               "tensors that are concatenated must share a dtype")
        out_dtype = dtype if (dtype and src_dtype in FLOAT_DTYPES) else src_dtype
        if len(infos) == 1:
            info = infos[0]
            rows = info.shape[0] if info.shape else 1
            row_bytes = info.nbytes // rows if rows else 0
            if op.transform.kind == "rename":
                ranges = [(0, rows)]
            else:
                ranges = op.transform.row_ranges()
            for target, shape, (r0, r1) in zip(op.targets, op.target_shapes, ranges):
                piece = Piece(info.file, info.start + r0 * row_bytes, info.start + r1 * row_bytes, info.key)
                out.append(OutTensor(target, out_dtype, tuple(shape), [piece], src_dtype, (info.key,),
                                     op.transform.kind))
        else:
            (target,), (shape,) = op.targets, op.target_shapes
            pieces = [Piece(i.file, i.start, i.stop, i.key) for i in infos]
            out.append(OutTensor(target, out_dtype, tuple(shape), pieces, src_dtype, tuple(op.sources), "concat"))
    out.sort(key=lambda t: (file_rank[t.pieces[0].file], t.pieces[0].start))
    return out


def dtype_decisions(tensors: list[OutTensor]) -> dict:
    """What happened to dtypes, for conversion.json."""
    kept: dict[str, int] = {}
    cast: dict[str, int] = {}
    for t in tensors:
        if t.cast:
            k = f"{t.src_dtype}->{t.dtype}"
            cast[k] = cast.get(k, 0) + 1
        else:
            kept[t.src_dtype] = kept.get(t.src_dtype, 0) + 1
    return {"kept": kept, "cast": cast}


def dtype_name(st: str) -> str:
    return DTYPES[st][0]


def _index_weight_map(dit: Path) -> dict[str, str]:
    from .jsonfile import load
    indexes = sorted(dit.glob("*.safetensors.index.json"))
    if not indexes:
        raise BadInput(f"{dit}: no shards and no *.safetensors.index.json to plan from")
    data = load(indexes[0], "a shard index ({'weight_map': {key: shard file name}})")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise BadInput(f"{indexes[0]}: not a valid shard index (needs a 'weight_map' object of file names)")
    return weight_map


def describe(source: str, *, revision: str | None = None) -> dict:
    """The expanded table for SOURCE as data (the ``plan`` command); writes nothing."""
    from . import config_map, sources
    from .lora import plan_lora
    from .table import Dims, expand, table_hash
    hub = sources.is_repo_id(source) and not Path(source).exists()
    # from the Hub only dit/'s JSON files are fetched; cached shards are used when present
    src = sources.resolve(source, revision=revision, components=False, loras=True, weights=not hub)
    orig_cfg = config_map.load(src.config_path)
    dims = Dims.from_original_config(orig_cfg, str(src.config_path))
    native_cfg, warnings, notes = config_map.to_native(orig_cfg, str(src.config_path))
    ops = expand(dims)
    try:
        reader = ShardedReader(src.dit)
    except BadInput:
        if not hub:
            raise
        reader = None
    rows = []
    if reader is not None:
        tensors = build(reader, ops)   # validates coverage, shapes and dtypes
        by_target = {t.key: t for t in tensors}
        for op in ops:
            infos = [reader.info(k) for k in op.sources]
            rows.append({
                "op": op.describe(),
                "sources": [{"key": i.key, "shape": list(i.shape), "dtype": i.dtype, "file": i.file.name}
                            for i in infos],
                "targets": [{"key": k, "shape": list(s), "dtype": by_target[k].dtype}
                            for k, s in zip(op.targets, op.target_shapes)],
            })
        counts = {"source": len(reader.keys()), "native": len(tensors), "bytes": sum(t.nbytes for t in tensors)}
    else:
        weight_map = _index_weight_map(src.dit)
        check_coverage(set(weight_map), {s for op in ops for s in op.sources}, str(src.dit))
        notes.append("shards not downloaded: shapes come from config.json, dtypes are unknown (?)")
        for op in ops:
            rows.append({
                "op": op.describe(),
                "sources": [{"key": k, "shape": list(s), "dtype": "?", "file": weight_map[k]}
                            for k, s in zip(op.sources, op.source_shapes)],
                "targets": [{"key": k, "shape": list(s), "dtype": "?"}
                            for k, s in zip(op.targets, op.target_shapes)],
            })
        counts = {"source": len(weight_map), "native": sum(len(op.targets) for op in ops), "bytes": None}
    loras = []
    for path in src.loras:
        lp = plan_lora(path, dims)
        loras.append({"source": path.name, "output": lp.out_relpath, "targets": lp.decisions})
    return {"source": src.describe(), "table_hash": table_hash(),
            "config": {"native": native_cfg, "warnings": warnings, "notes": notes},
            "tensors": counts,
            "ops": rows, "loras": loras, "components": sorted(src.components)}
