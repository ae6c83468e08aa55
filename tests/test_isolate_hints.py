"""Advice that works: every "to isolate it" hint of the known-differences catalogue is a
command that, run on the gate's case of that difference, gives what the hint says.

A hint reads ``\\`parity SOURCE CONVERTED ...\\` passes`` or ``... fails as ID`` (optionally
``while its row ROW passes``); SOURCE, CONVERTED and CASE are the model folder, its
conversion and the case of the first stock gate step (golden/gate.json) that reproduces
the difference. The command runs as written, the report says the rest."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from parity_support import GOLDEN, ROOT, cli, needs_native

HINT = re.compile(r"^`(parity [^`]+)` (?:still )?(passes|fails as ([\w-]+))(?: while its row (\S+) passes)?:")


def _entries() -> list[dict]:
    data = json.loads((ROOT / "parity" / "known_differences.json").read_text())
    return [e for e in data["known_differences"] if e.get("isolate")]


def _gate_step(known_id: str, work: Path):
    from parity.gate import load_manifest, plan_steps
    steps = plan_steps(GOLDEN, work, load_manifest(GOLDEN))
    for s in steps:
        exp = s.expect.get("id") if isinstance(getattr(s, "expect", None), dict) else getattr(s, "expect", None)
        if exp == known_id and "fixed" not in s.name and s.argv[0] == "parity":
            return s
    raise AssertionError(f"no stock gate step reproduces {known_id}")


def test_every_hint_is_a_command_with_its_outcome():
    entries = _entries()
    assert len(entries) >= 10
    for e in entries:
        m = HINT.match(e["isolate"])
        assert m, (e["id"], e["isolate"])
        argv = shlex.split(m.group(1))
        assert argv[:3] == ["parity", "SOURCE", "CONVERTED"], e["id"]
        if m.group(3):
            assert m.group(3) in {x["id"] for x in entries}, (e["id"], m.group(3))


@needs_native
@pytest.mark.slow
@pytest.mark.parametrize("known_id", [e["id"] for e in _entries()])
def test_the_hint_gives_what_it_says_on_the_gates_case(known_id, tmp_path, converted):
    entry = next(e for e in _entries() if e["id"] == known_id)
    m = HINT.match(entry["isolate"])
    step = _gate_step(known_id, tmp_path / "gate")
    source, case = step.argv[1], step.argv[step.argv.index("--case") + 1]
    model = Path(source).name
    conv = converted.get(model) if Path(source).parent == GOLDEN else None
    if conv is None:
        conv = tmp_path / f"{model}-native"
        assert cli("convert", source, conv, "--quiet", "--no-fsync") == 0
    words = {"SOURCE": str(source), "CONVERTED": str(conv), "CASE": str(case)}
    argv = [words.get(w, w) for w in shlex.split(m.group(1))][1:]
    argv = [str(ROOT / w) if w.startswith("golden/") else w for w in argv]
    rc = cli("parity", *argv, "--report", tmp_path / "r", "--quiet")
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    if m.group(2) == "passes":
        assert rc == 0 and rep["passed"], (known_id, argv, rep["first_divergent"])
    else:
        first = next(c for c in rep["cases"] if not c["passed"])
        assert rc == 1 and first.get("known_difference") == m.group(3), (known_id, argv, first)
    if m.group(4):
        row = next(r for r in rep["layers"] if r["name"] == m.group(4))
        assert row["passed"], (known_id, row)
