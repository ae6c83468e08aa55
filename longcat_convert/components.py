"""The non-DiT parts of a model folder (VAE, text encoder, tokenizer, scheduler):
copied, hard-linked or skipped, byte for byte."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable

from .errors import BadInput

MODES = ("copy", "link", "skip")

# model_index.json entries for FastVideo's LongCat pipeline (library, class), as in
# FastVideo's own LongCat-Video folders.
INDEX_ENTRIES = {
    "tokenizer": ["transformers", "AutoTokenizer"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
}

# model_index.json's _class_name per workload (--workload): FastVideo 0.2.1 resolves its
# pipeline class from it (fastvideo/pipelines/basic/longcat/). Refinement (480p -> 720p)
# runs through its t2v pipeline (LongCatRefineInitStage / LongCatRefineTimestepStage).
WORKLOADS = {
    "t2v": "LongCatPipeline",
    "i2v": "LongCatImageToVideoPipeline",
    "vc": "LongCatVideoContinuationPipeline",
    "refine": "LongCatPipeline",
}


def pipeline_class(workload: str) -> str:
    """FastVideo's LongCat pipeline class for a workload (one-line BadInput otherwise)."""
    if workload not in WORKLOADS:
        raise BadInput(f"--workload: {workload!r} is not one of {', '.join(WORKLOADS)}")
    return WORKLOADS[workload]


def list_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (symlinks followed, as in a Hugging Face cache snapshot)."""
    out = []
    for dirpath, dirnames, files in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                out.append(Path(dirpath) / name)
    return out


def total_bytes(components: dict[str, Path]) -> int:
    return sum(p.stat().st_size for folder in components.values() for p in list_files(folder))


def place(components: dict[str, Path], out_root: Path, mode: str,
          progress: Callable[[int], None] | None = None) -> tuple[dict, list[str]]:
    """Put each component folder under ``out_root``; returns (record, notes)."""
    if mode not in MODES:
        raise BadInput(f"--components: {mode!r} is not one of {', '.join(MODES)}")
    record, notes = {}, []
    for name, folder in components.items():
        if mode == "skip":
            record[name] = {"mode": "skip"}
            continue
        files = []
        used = mode
        for src in list_files(folder):
            rel = src.relative_to(folder)
            dst = out_root / name / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            real = src.resolve()
            if used == "link":
                try:
                    os.link(real, dst)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
                    notes.append(f"{name}: hard links are not possible here ({e.strerror}); copied instead")
                    used = "copy"
            if used == "copy":
                shutil.copyfile(real, dst)
            size = dst.stat().st_size
            files.append({"path": str(rel), "bytes": size})
            if progress:
                progress(size)
        record[name] = {"mode": used, "files": files}
    return record, notes


def compare(components_record: dict, src_components: dict[str, Path], out_root: Path) -> list[str]:
    """Problems with placed components (for verify): missing or differing files."""
    problems = []
    for name, rec in components_record.items():
        if rec.get("mode") == "skip":
            continue
        folder = src_components.get(name)
        if folder is None:
            problems.append(f"{name}: no longer in the source")
            continue
        for src in list_files(folder):
            rel = src.relative_to(folder)
            dst = out_root / name / rel
            if not dst.is_file():
                problems.append(f"{name}/{rel}: missing from the output")
            elif not _same_file(src.resolve(), dst):
                problems.append(f"{name}/{rel}: differs from the source")
    return problems


def _same_file(a: Path, b: Path, chunk: int = 16 * 2**20) -> bool:
    sa, sb = a.stat(), b.stat()
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if sa.st_size != sb.st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True
