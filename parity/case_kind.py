"""What kind a case file is, decided in one place (no torch: the CLI's input checks
use it before torch is imported; parity/cases.py reads each kind).

* ``component``: its JSON names a ``component`` (text encoder, VAE, pipeline);
* ``trajectory``: its tensors hold ``traj.*`` rows (a recorded sampling run);
* ``dit``: anything else (a golden DiT forward, ``act.*`` rows).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from longcat_convert.shards import ShardedReader

KINDS = ("dit", "trajectory", "component")
TRAJECTORY_PREFIX = "traj."


def case_kind(component, keys: Iterable[str]) -> str:
    """The kind of a case whose JSON names ``component`` (None or empty: none) and whose
    tensor file has ``keys``."""
    if component:
        return "component"
    return "trajectory" if any(k.startswith(TRAJECTORY_PREFIX) for k in keys) else "dit"


def component_of(path) -> str | None:
    """The ``component`` a case JSON names, or None (a DiT or trajectory case)."""
    p = Path(path).with_suffix(".json")
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (ValueError, RecursionError):   # not JSON (or nested too deeply): the case readers say so
        return None
    return meta.get("component") if isinstance(meta, dict) else None


def kind_of(path) -> str:
    """The kind of the case file at ``path`` (reads its JSON and its tensors' header only)."""
    component = component_of(path)
    p = Path(path)
    keys = ShardedReader(p).keys() if not component and p.suffix == ".safetensors" and p.is_file() else ()
    return case_kind(component, keys)
