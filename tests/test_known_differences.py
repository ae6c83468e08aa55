"""Known differences travel with the result: a failing run that matches the catalogue
says so in the console, report.json, report.md and report.html, with why and what
isolates it; ``--expect ID`` exits 0 when, and only when, that difference reproduces."""
import json

import pytest

from longcat_convert.errors import BadInput
from parity import known
from parity_support import GOLDEN, TINY_A, cli, needs_native

T2V_TRAJ = GOLDEN / "tiny-a/cases/traj_t2v_cfg.safetensors"
VARLEN = GOLDEN / "tiny-b/cases/varlen.safetensors"


def _report(d):
    return json.loads((d / "report.json").read_text())


@needs_native
def test_a_known_difference_is_named_in_every_rendering(converted, tmp_path, capsys):
    rc = cli("parity", TINY_A, converted["tiny-a"], "--mode", "sampling", "--case", T2V_TRAJ, "--report", tmp_path)
    assert rc == 1
    rep = _report(tmp_path)
    case = rep["cases"][0]
    assert case["first_divergent"] == "timesteps" and case["known_difference"] == "schedule-reshift"
    assert case["settings"]["sigmas"] == "fastvideo" and case["settings"]["loop"] == "t2v"
    kd = rep["known_differences"][0]
    assert kd["id"] == "schedule-reshift" and "--sigmas original" in kd["isolate"]
    assert kd["cases"][0]["row"] == "timesteps" and kd["cases"][0]["rel_l2"] == pytest.approx(0.05583, rel=0.02)
    assert rep["unexplained"] == []
    row = next(r for r in rep["layers"] if r["name"] == "timesteps")
    assert row["known_difference"] == "schedule-reshift"
    md = (tmp_path / "report.md").read_text()
    assert "Known difference `schedule-reshift`" in md and "to isolate it: `parity SOURCE CONVERTED --case CASE --mode sampling --sigmas original` fails as " \
        "bf16-dit-input" in md
    assert "schedule-reshift" in (tmp_path / "report.html").read_text()
    out = capsys.readouterr().out                        # results on stdout
    assert "known difference schedule-reshift" in out and "to isolate it" in out
    # The console's failure summary says what report.md says: why, --expect ID, --fixes NAME.
    assert "why: timesteps of case traj_t2v_cfg fails the policy: rel_l2=0.0558" in out, out
    assert "add --expect schedule-reshift" in out and "--fixes schedule-reshift runs FastVideo" in out
    assert "fixes schedule-reshift" in md


@needs_native
def test_expect_passes_only_when_the_expected_difference_reproduces(converted, tmp_path, capsys):
    base = ("parity", TINY_A, converted["tiny-a"], "--mode", "sampling", "--case", T2V_TRAJ, "--quiet")
    assert cli(*base, "--expect", "schedule-reshift", "--report", tmp_path / "a") == 0
    assert _report(tmp_path / "a")["expected"]["passed"] is True
    # Another known difference than the one that shows: not a pass.
    assert cli(*base, "--expect", "bf16-dit-input", "--report", tmp_path / "b") == 1
    assert "not expected" in _report(tmp_path / "b")["expected"]["message"]
    # With the schedule isolated, the stage's bf16 cast is what remains.
    assert cli(*base, "--sigmas", "original", "--expect", "bf16-dit-input") == 0
    assert "known difference bf16-dit-input" in capsys.readouterr().out


@needs_native
def test_expect_fails_when_the_run_passes(converted, tmp_path):
    """An expected difference that no longer shows (FastVideo fixed it, say) fails."""
    t2v = GOLDEN / "tiny-a/cases/t2v.safetensors"
    assert cli("parity", TINY_A, converted["tiny-a"], "--case", t2v, "--expect", "varlen-text",
               "--report", tmp_path) == 1
    assert "did not reproduce" in _report(tmp_path)["expected"]["message"]


@needs_native
def test_a_failure_no_entry_explains_is_said_to_be_unknown(converted, tmp_path):
    """A team's catalogue without the schedule entry: the same failure is unexplained."""
    data = json.loads(known.DEFAULT_PATH.read_text())
    data["known_differences"] = [e for e in data["known_differences"] if e["id"] != "schedule-reshift"]
    mine = tmp_path / "known.json"
    mine.write_text(json.dumps(data))
    rc = cli("parity", TINY_A, converted["tiny-a"], "--mode", "sampling", "--case", T2V_TRAJ, "--known", mine,
             "--report", tmp_path / "r", "--quiet")
    rep = _report(tmp_path / "r")
    assert rc == 1 and rep["unexplained"] == [rep["cases"][0]["case"]] and "known_difference" not in rep["cases"][0]
    assert "Not a known difference" in (tmp_path / "r" / "report.md").read_text()


def test_an_unknown_expect_id_is_bad_input_before_any_model_work(tmp_path, capsys):
    assert cli("parity", TINY_A, tmp_path / "nowhere", "--expect", "no-such-id") == 2
    err = capsys.readouterr().err
    assert "--expect no-such-id" in err and "schedule-reshift" in err


@pytest.mark.parametrize("text,why", [
    ("[]", "found an array"),
    ('{"known_differences": [{"id": "x"}]}', "title"),
    ('{"known_differences": [{"id": "x", "title": "t", "why": "w", "fastvideo_code": "c"}]}', "match"),
    ('{"known_differences": [{"id": "x", "title": "t", "why": "w", "fastvideo_code": "c", '
     '"match": {"rows": ["a"]}}, {"id": "x", "title": "t", "why": "w", "fastvideo_code": "c", '
     '"match": {"rows": ["a"]}}]}', "twice"),
])
def test_a_bad_catalogue_is_one_line_bad_input(tmp_path, text, why):
    p = tmp_path / "k.json"
    p.write_text(text)
    with pytest.raises(BadInput, match=why):
        known.Catalogue.load(p)


def test_first_match_wins_and_settings_must_hold():
    cat = known.Catalogue.load()
    rep = {"kind": "parity", "cases": [
        {"case": "a", "passed": False, "first_divergent": "timesteps", "settings": {"sigmas": "fastvideo",
                                                                                  "use_distill": True}},
        {"case": "b", "passed": False, "first_divergent": "timesteps", "settings": {"sigmas": "fastvideo"}},
        {"case": "c", "passed": False, "first_divergent": "timesteps", "settings": {"sigmas": "original"}},
        {"case": "d:golden", "passed": False, "first_divergent": "prompt_embeds",
         "settings": {"mode": "component text_encoder", "against": "golden data"}},
        {"case": "e", "passed": True, "first_divergent": None}], "layers": []}
    known.annotate(rep, cat)
    tags = {c["case"]: c.get("known_difference") for c in rep["cases"]}
    assert tags == {"a": "use-distill-unread", "b": "schedule-reshift", "c": None, "d:golden": None, "e": None}
    assert rep["unexplained"] == ["c", "d:golden"]


def test_the_gate_manifest_names_catalogue_ids():
    """Every known difference the gate pins names an id of the shipped catalogue."""
    ids = known.Catalogue.load().ids
    manifest = json.loads((GOLDEN / "gate.json").read_text())
    named = [kd["id"] for m in manifest["models"] for c in m["cases"]
             for kd in [c.get("known_difference")] + [r.get("known_difference") for r in c.get("parity", [])
                                                      if isinstance(r, dict)] if kd]
    assert len(named) == 29 and set(named) <= ids          # every one a stock step: --fixes all leaves none
