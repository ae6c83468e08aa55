"""The gate's manifest is validated whole before any step runs, a mistyped key named with
the entry it is in; every known difference pins its size or says why it cannot; a pin
close to its boundary is fragile and fails unless the manifest says why it holds; and a
step whose outcome depends on the thread count fails."""
from __future__ import annotations

import json
import shutil

import click
import pytest
import torch

from parity_support import GOLDEN, cli, needs_native

VARLEN = {"id": "varlen-text", "first_divergent": "blocks.0.cross_attn", "rel_l2": 0.5654, "why": "varlen"}


def _golden(tmp_path, case: dict | None = None, **top) -> object:
    g = tmp_path / "golden"
    if not (g / "tiny-b").exists():
        shutil.copytree(GOLDEN / "tiny-b", g / "tiny-b")
    case = case if case is not None else {"case": "tiny-b/cases/varlen", "parity": ["e2e"], "known_difference": VARLEN}
    (g / "gate.json").write_text(json.dumps({"models": [{"model": "tiny-b", "cases": [case]}], **top}))
    return g


@pytest.mark.parametrize("case, top, words", [
    ({"case": "tiny-b/cases/varlen", "parrity": ["e2e"], "known_difference": VARLEN}, {},
     ["case 'tiny-b/cases/varlen'", "unknown key 'parrity'", "did you mean 'parity'"]),
    ({"case": "tiny-b/cases/varlen", "parity": ["e2e"], "known_diference": VARLEN}, {},
     ["unknown key 'known_diference'", "did you mean 'known_difference'"]),
    ({"case": "tiny-b/cases/varlen", "parity": ["e2e"], "known_difference": dict(VARLEN, first_divergnt="x")}, {},
     ["known_difference: unknown key 'first_divergnt'"]),
    ({"case": "tiny-b/cases/varlen", "parity": ["e2e"], "known_difference": {k: v for k, v in VARLEN.items()
                                                                            if k != "rel_l2"}}, {},
     ["pins its size (rel_l2) or says why it cannot"]),
    ({"case": "tiny-b/cases/varlen", "parity": ["e2e2"]}, {}, ["unknown mode 'e2e2'"]),
    ({"case": "tiny-b/cases/varlen", "parity": [{"mode": "sampl", "tag": "s"}]}, {}, ["unknown mode 'sampl'"]),
    ({"case": "tiny-b/cases/varlen.safetensors", "parity": ["e2e"]}, {}, ["without '.safetensors'"]),
    ({"case": "tiny-b/cases/nope", "parity": ["e2e"]}, {}, ["no such case file"]),
    ({"case": "tiny-b/cases/varlen", "parity": [{"mode": "e2e", "args": ["--sp", "2"], "expect_spp": {}}]}, {},
     ["unknown key 'expect_spp'"]),
    (None, {"features": [{"model": "tiny-bundle", "verdicts": {}}]}, ["is not among the manifest's models"]),
    (None, {"feature": []}, ["the manifest: unknown key 'feature'"]),
])
def test_a_mistyped_manifest_is_refused_before_any_step_runs(tmp_path, capsys, case, top, words):
    g = _golden(tmp_path, case, **top)
    assert cli("gate", "--golden", g, "--report", tmp_path / "r", "--threads", "1") == 2
    err = capsys.readouterr().err
    assert str(g / "gate.json") in err and len([x for x in err.splitlines() if x.strip()]) == 1, err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "r" / "tiny-b" / "converted").exists()      # nothing ran


def test_a_mistyped_catalogue_key_is_refused(tmp_path, capsys):
    cat = json.loads((GOLDEN.parent / "parity" / "known_differences.json").read_text())
    cat["known_differences"][0]["isolte"] = "x"
    (tmp_path / "k.json").write_text(json.dumps(cat))
    g = _golden(tmp_path)
    assert cli("gate", "--golden", g, "--report", tmp_path / "r", "--known", tmp_path / "k.json") == 2
    assert "unknown key 'isolte'" in capsys.readouterr().err


def test_margins_name_the_room_of_every_pin_and_holds_excuses_a_fragile_one():
    from parity.gate import Step, margins
    rep = {"first_divergent": "b", "layers": [
        {"name": "a", "case": "c", "passed": True, "margin": {"limit": "rel_l2", "ratio": 0.5}},
        {"name": "b", "case": "c", "passed": False, "rel_l2": 0.101, "margin": {"limit": "rel_l2", "ratio": 1e4}},
        {"name": "z", "case": "c", "passed": True, "margin": {"limit": "rel_l2", "ratio": 0.9}}]}
    step = Step("m", "parity e2e c", [], expect={"first_divergent": "b", "rel_l2": 0.1})
    got = {m["pin"]: m for m in margins(step, rep)}
    assert got["c passes"]["room"] == 2.0 and got["c passes"]["fragile"]            # row a, 2x from its limit
    assert "z" not in {m["row"] for m in got.values()}                             # after the first failure
    assert got["c fails at b"]["room"] == 1e4 and not got["c fails at b"]["fragile"]
    assert got["rel_l2 pinned"]["room"] == pytest.approx(2.0) and got["rel_l2 pinned"]["fragile"]   # 1% of a 2% band
    held = Step("m", "s", [], expect={"first_divergent": "b", "rel_l2": 0.1}, holds={"a": "bit for bit by design"})
    assert next(m for m in margins(held, rep) if m["row"] == "a")["held"] == "bit for bit by design"


@needs_native
def test_a_fragile_size_fails_the_gate_unless_the_manifest_says_why_it_holds(tmp_path):
    near = dict(VARLEN, rel_l2=round(0.56536 * 1.012, 5))      # inside the 2% band, 1.2% away: room 1.7
    g = _golden(tmp_path, {"case": "tiny-b/cases/varlen", "parity": ["e2e"], "known_difference": near})
    assert cli("gate", "--golden", g, "--report", tmp_path / "r", "--threads", "1") == 1
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "fragile: rel_l2 pinned" in summary
    g = _golden(tmp_path, {"case": "tiny-b/cases/varlen", "parity": ["e2e"], "known_difference": near,
                           "holds": {"rel_l2 pinned": "a test of the mechanism"}})
    assert cli("gate", "--golden", g, "--report", tmp_path / "r2", "--threads", "1") == 0
    margins = json.loads((tmp_path / "r2" / "margins.json").read_text())
    assert any(m["pin"] == "rel_l2 pinned" and m["held"] == "a test of the mechanism" for m in margins)


@needs_native
def test_every_float_step_runs_at_each_thread_count_and_says_so(tmp_path):
    g = _golden(tmp_path)
    assert cli("gate", "--golden", g, "--report", tmp_path / "r", "--threads", "1,2") == 0
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "same at 1, 2 threads" in summary and "tiny-b 4" in summary
    assert (tmp_path / "r" / "tiny-b" / "parity-e2e-varlen.threads-2" / "report.json").is_file()


def test_an_outcome_that_depends_on_the_thread_count_fails_the_step(tmp_path):
    """A command whose verdict follows torch's thread count: the gate's step must fail, naming both."""
    from parity.gate import Step, run_step

    @click.group()
    def root():
        pass

    @root.command("judge-threads")
    @click.option("--report")
    @click.option("--quiet", is_flag=True)
    def judge_threads(report, quiet):
        from pathlib import Path
        ok = torch.get_num_threads() == 1
        Path(report).mkdir(parents=True, exist_ok=True)
        (Path(report) / "report.json").write_text(json.dumps({"passed": ok, "first_divergent": None if ok else "x",
                                                              "layers": []}))
        return 0 if ok else 1
    step = Step("m", "planted", ["judge-threads", "--report", str(tmp_path / "rep"), "--quiet"],
                report=tmp_path / "rep", floats=True)
    run_step(step, root, (1, 2))
    assert not step.ok and "depends on the thread count" in step.message
    assert [r["threads"] for r in step.runs] == [1, 2]
    # A stale report of an earlier run is cleared, never read.
    stale = Step("m", "stale", ["judge-threads", "--report", str(tmp_path / "rep2"), "--quiet"],
                 report=tmp_path / "rep2", floats=True)
    (tmp_path / "rep2").mkdir()
    (tmp_path / "rep2" / "old.txt").write_text("old")
    run_step(stale, root, (1,))
    assert stale.ok and not (tmp_path / "rep2" / "old.txt").exists()
