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
    g = _golden_with(tmp_path, {"first_divergent": "blocks.0.cross_attn", "rel_l2": 0.5654, "why": "varlen"})
    assert cli("gate", "--golden", g, "--report", tmp_path / "r", "--threads", "1") == 0
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
    g = _golden_with(tmp_path, {"first_divergent": "blocks.1.cross_attn", "rel_l2": 0.5654})
    assert cli("gate", "--golden", g, "--report", tmp_path / "moved", "--threads", "1") == 1
    assert _junit(tmp_path / "moved" / "junit.xml")["parity e2e varlen"] is False
    g2 = _golden_with(tmp_path / "undeclared", None)
    assert cli("gate", "--golden", g2, "--report", tmp_path / "undeclared" / "r", "--threads", "1") == 1


def test_gate_without_manifest_is_bad_input(tmp_path):
    assert cli("gate", "--golden", tmp_path, "--report", tmp_path / "r") == 2


def test_a_features_step_holds_every_pinned_verdict():
    """The pins of a features run: a verdict that changes, a row that goes or one that appears is a change."""
    from parity.verdicts import check_pins, headline
    rows = [{"feature": "enable_teacache", "setting": "True", "verdict": "no_op"},
            {"feature": "unmerge_lora_weights", "setting": "after lora_path", "verdict": "diverges"}]
    pinned = {"enable_teacache=True": "no_op", "unmerge_lora_weights=after lora_path": "diverges"}

    def check(report_rows, want, baseline=None, have="diverges"):
        pins = {"file": "pins.json", "verdicts": want, "baseline_against_reference": baseline}
        return check_pins(report_rows, {"verdict": have}, pins)
    assert check(rows, pinned)["changed"] == []
    assert headline(rows, check(rows, pinned)) == "2 rows: 1 no_op, 1 diverges; every verdict as pinned (pins.json)"
    fixed = [dict(rows[0]), dict(rows[1], verdict="exact")]             # FastVideo fixed unmerge
    assert "unmerge_lora_weights" in check(fixed, pinned)["changed"][0]
    assert "1 changed against the pins" in headline(fixed, check(fixed, pinned))
    assert check(rows[:1], pinned)["changed"]                            # a row went
    assert check(rows + [{"feature": "x", "setting": "1", "verdict": "no_op"}], pinned)["changed"]
    # With fixes, the baseline's own verdict against the reference is pinned too.
    assert check(rows, pinned, baseline="within_tolerance", have="within_tolerance")["changed"] == []
    bad = check(rows, pinned, baseline="within_tolerance", have="diverges")["changed"]
    assert "baseline against the reference: diverges" in bad[0]


def test_the_bundled_manifest_pins_the_feature_matrix():
    manifest = json.loads((GOLDEN / "gate.json").read_text())
    pinned = next(e["verdicts"] for e in manifest["features"] if e["model"] == "tiny-bundle")
    assert pinned["enable_teacache=True"] == "no_op" and pinned["unmerge_lora_weights=after lora_path"] == "diverges"
    assert len(pinned) >= 25


def test_gate_quiet_and_the_working_folders_golden(tmp_path, monkeypatch, capsys):
    """`gate` from a folder with golden/ runs it (the README's default); -q drops the progress
    line per step on stderr, the table and verdict stay on stdout."""
    g = _golden_with(tmp_path, {"first_divergent": "blocks.0.cross_attn", "rel_l2": 0.5654, "why": "varlen"})
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli("gate", "-q", "--report", tmp_path / "r") == 0
    out, err = capsys.readouterr()
    assert "gate: 4 passed, 0 failed" in out and "gate:" not in err
    assert (tmp_path / "r" / "junit.xml").is_file() and g.name == "golden"
