"""Helpers for the parity tests (imported by test_parity_*.py; the session fixture is in conftest.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

from convert_support import GOLDEN, ROOT, TINY_A, TINY_B, needs_native  # noqa: F401  (one definition)


def cli(*argv) -> int:
    from longcat_convert.cli import main
    return main([str(a) for a in argv])


def copy_converted(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def plant(folder: Path, fault) -> set[str]:
    """Plant a fault: ``fault(tensors)`` edits a dict of every tensor in every
    safetensors file under ``folder`` in place and returns the keys it changed;
    the files holding them are rewritten (same names, so indexes stay valid)."""
    from safetensors.torch import load_file, save_file
    files = {f: load_file(str(f)) for f in sorted(folder.rglob("*.safetensors"))}
    where = {k: f for f, sd in files.items() for k in sd}
    tensors = {k: files[f][k] for k, f in where.items()}
    changed = set(fault(tensors))
    assert changed, "the planted fault changed nothing"
    for k in changed:
        files[where[k]][k] = tensors[k].contiguous()
    for f in {where[k] for k in changed}:
        save_file(files[f], str(f))
    return changed


def policy_limit(metric: str = "rel_l2", dtype: str = "float32", layer: str = "*", device: str = "cpu") -> float:
    """The tolerance policy's limit (parity/tolerances.json) on ``metric``. Data recorded in
    another run (the golden cases) and two implementations' results are held to it, never to
    bit equality or to a number measured on one machine: float kernels differ between CPUs."""
    from parity.policy import Policy
    return Policy.load().limits(dtype, device, layer)[metric]


def policy_failures(got: dict, expected: dict, dtype: str = "float32", device: str = "cpu",
                    skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Judge ``got[k]`` against ``expected[k]`` (golden ``act.*`` keys or report row names) as
    golden-check does: the metrics of parity.metrics, the limits of the policy for each layer
    (but those named in ``skip``) -> {name: failures} of the names that fail."""
    from parity.metrics import layer_metrics
    from parity.policy import Policy
    policy = Policy.load()
    out = {}
    for name, want in expected.items():
        layer = name[len("act."):] if name.startswith("act.") else name
        fails = [f for f in policy.failures(layer_metrics(got[name], want), dtype, device, layer)
                 if f.split("=")[0] not in skip]
        if fails:
            out[name] = fails
    return out


def read_report(d: Path) -> dict:
    import json
    return json.loads((d / "report.json").read_text())
