"""The gate runs the real commands over a golden folder and must fail when a
known difference stops reproducing exactly as its manifest states."""
import json
import shutil
import xml.etree.ElementTree as ET

from parity_support import GOLDEN, cli, needs_native

pytestmark = needs_native


def _golden_with(tmp_path, expectation):
    g = tmp_path / "golden"
    shutil.copytree(GOLDEN / "tiny-b", g / "tiny-b")
    case = {"case": "tiny-b/cases/varlen", "parity": ["e2e"]}
    if expectation:
        case["known_difference"] = expectation
    (g / "gate.json").write_text(json.dumps({"models": [{"model": "tiny-b", "cases": [case]}]}))
    return g


def _junit(path):
    root = ET.parse(path).getroot()
    return {tc.get("name"): tc.find("failure") is None for tc in root.iter("testcase")}


def test_gate_passes_when_the_known_difference_reproduces(tmp_path, monkeypatch):
    ci_summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(ci_summary))
    g = _golden_with(tmp_path, {"first_divergent": "blocks.0.cross_attn", "why": "varlen"})
    assert cli("gate", "--golden", g, "--report", tmp_path / "r") == 0
    cases = _junit(tmp_path / "r" / "junit.xml")
    assert cases == {"convert": True, "verify": True, "golden-check varlen": True, "parity e2e varlen": True}
    assert "known difference reproduced" in (tmp_path / "r" / "summary.md").read_text()
    # The CI summary holds the gate's own table once, the known difference shown as such,
    # and none of the steps' own reports (the known difference's says FAILED).
    text = ci_summary.read_text()
    assert text.startswith("### longcat-convert gate: PASSED (4 of 4 steps)")
    assert "| tiny-b | parity e2e varlen | known difference, reproduced |" in text
    assert "FAILED" not in text and "first divergent row" not in text.lower()


def test_gate_fails_when_the_difference_moves_or_is_not_declared(tmp_path):
    g = _golden_with(tmp_path, {"first_divergent": "blocks.1.cross_attn"})
    assert cli("gate", "--golden", g, "--report", tmp_path / "moved") == 1
    assert _junit(tmp_path / "moved" / "junit.xml")["parity e2e varlen"] is False
    g2 = _golden_with(tmp_path / "undeclared", None)
    assert cli("gate", "--golden", g2, "--report", tmp_path / "undeclared" / "r") == 1


def test_gate_without_manifest_is_bad_input(tmp_path):
    assert cli("gate", "--golden", tmp_path, "--report", tmp_path / "r") == 2
