"""A case's kind is decided in one place (parity/case_kind.py): the CLI's input checks
(longcat_convert/precheck.py, before torch) and the case readers (parity/cases.py) agree
on every bundled case, and the rule is the documented one."""
from __future__ import annotations

from pathlib import Path

import pytest

from longcat_convert import precheck
from parity.case_kind import case_kind, kind_of

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted((ROOT / "golden").glob("**/cases/*.safetensors"))


def test_the_rule():
    assert case_kind("vae", ["traj.x"]) == "component"          # a named component wins
    assert case_kind(None, ["input.latents", "traj.step.0.dit_out"]) == "trajectory"
    assert case_kind("", ["act.blocks.0", "input.hidden_states"]) == "dit"
    assert case_kind(None, []) == "dit"


@pytest.mark.parametrize("path", CASES, ids=[str(p.relative_to(ROOT / "golden")) for p in CASES])
def test_the_cli_checks_and_the_readers_agree(path):
    assert precheck.read_case(path).kind == kind_of(path)


def test_every_kind_is_among_the_bundled_cases():
    kinds = {p.name: kind_of(p) for p in CASES}
    assert set(kinds.values()) == {"dit", "trajectory", "component"}
    assert kinds["pipeline_t2v.safetensors"] == "component" and kinds["traj_i2v.safetensors"] == "trajectory"
    assert kinds["bsa_b2.safetensors"] == "dit"
