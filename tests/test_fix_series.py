"""The fixes as a patch series (fixes/series.py, ``longcat-convert fixes``): written from the
installed FastVideo's own source, applying with ``patch -p1`` and ``git apply``, each patch's
FastVideo test failing before it and passing after it, a patched copy that leaves the installed
FastVideo alone, one-line refusals, and no FastVideo code in this repository (issue 23)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parity_support import ROOT, cli, needs_native


def _installed_root() -> Path:
    from longcat_convert.commands.fixes import installed_root
    return installed_root()


def _copy_fastvideo(dest: Path) -> Path:
    shutil.copytree(_installed_root() / "fastvideo", dest / "fastvideo", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("series")
    assert cli("fixes", "export", out) == 0
    return out


@needs_native
def test_the_series_has_a_patch_per_fix_with_its_description(exported):
    import fixes
    from fixes.series import ordered
    files = sorted(p.name for p in exported.glob("*.patch"))
    expect = [p.name for p in ordered([f.patch for f in fixes.FIXES.values() if f.patch is not None])]
    assert set(expect) == set(fixes.FIXES)            # every fix has its upstream patch
    assert files == [f"{i:04d}-{n}.patch" for i, n in enumerate(expect, 1)]
    for f in exported.glob("*.patch"):
        text = f.read_text()
        head = text.split("\ndiff --git ", 1)[0]
        for part in ("What:", "Why:", "Evidence:", "Leaves alone:", "FastVideo test: fastvideo/tests/"):
            assert part in head, (f.name, part)
        paths = [ln.split()[1] for ln in text.splitlines() if ln.startswith(("--- ", "+++ ")) and "/dev/null" not in ln]
        assert paths and all(p.startswith(("a/fastvideo/", "b/fastvideo/")) for p in paths), f.name


@needs_native
@pytest.mark.parametrize("tool", ["patch", "git"])
def test_the_series_applies_in_order_and_gives_the_built_copy(exported, tmp_path, tool):
    tree = _copy_fastvideo(tmp_path / "tree")
    if tool == "git":
        subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    for p in sorted(exported.glob("*.patch")):
        cmd = ["patch", "-p1", "--batch", "-s", "-i", str(p)] if tool == "patch" else ["git", "apply", str(p)]
        run = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
        assert run.returncode == 0, (p.name, run.stdout + run.stderr)
    assert cli("fixes", "build", tmp_path / "built") == 0
    diff = subprocess.run(["diff", "-r", "-x", "__pycache__", "-x", ".git", str(tree / "fastvideo"),
                           str(tmp_path / "built" / "fastvideo")], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout[-2000:]


@needs_native
def test_each_patchs_fastvideo_test_fails_before_it_and_passes_after(tmp_path):
    """Patch by patch on a copy: the test a patch adds fails with the patches before it in
    (its own pytest process on the copy; CPU, no download); with the whole series in, every
    one of them passes."""
    from fixes import series
    results = series.series(_installed_root())
    tree = _copy_fastvideo(tmp_path / "tree")
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")

    def run_tests(*paths: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    tests = []
    for r in results:
        test = r.patch.test
        assert test and test in r.files, r.patch.name
        (tree / test).parent.mkdir(parents=True, exist_ok=True)
        (tree / test).write_text(r.files[test])
        before = run_tests(test)
        assert before.returncode == 1 and " failed" in before.stdout, (r.patch.name, before.stdout[-1500:])
        for path, text in r.files.items():
            (tree / path).write_text(text)
        tests.append(test)
    after = run_tests(*tests)
    import re
    summary = after.stdout.strip().splitlines()[-1]
    passed = re.match(r"(\d+) passed in ", summary)      # every test of every patch, none skipped or failed
    assert after.returncode == 0 and passed and int(passed.group(1)) >= len(tests), after.stdout[-2000:]


def _one_line_exit_2(capsys, *argv) -> str:
    assert cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@needs_native
def test_an_anchor_not_found_is_refused_naming_fix_file_and_anchor(tmp_path, capsys):
    tree = _copy_fastvideo(tmp_path / "tree")
    f = tree / "fastvideo/pipelines/stages/longcat_kv_cache_init.py"
    f.write_text(f.read_text().replace("use_kv_cache = getattr(", "use_cache = getattr("))
    err = _one_line_exit_2(capsys, "fixes", "export", tmp_path / "out", "--against", tree)
    assert "kv-cache-flag-unread" in err and "longcat_kv_cache_init.py" in err
    assert "LongCatKVCacheInitStage.forward" in err
    assert not (tmp_path / "out").exists()                      # nothing half-written


@needs_native
def test_a_version_not_written_for_and_a_wrong_path_are_refused(tmp_path, capsys):
    tree = _copy_fastvideo(tmp_path / "tree")
    (tree / "fastvideo/version.py").write_text('__version__ = "0.3.0"\n')
    err = _one_line_exit_2(capsys, "fixes", "build", tmp_path / "out", "--against", tree)
    assert "version.py" in err and "0.3.0" in err
    err = _one_line_exit_2(capsys, "fixes", "export", tmp_path / "out", "--against", tmp_path)
    assert "no fastvideo/ folder" in err


@needs_native
def test_a_patch_that_does_not_apply_is_refused_naming_patch_and_file(exported, tmp_path, capsys):
    bad = tmp_path / "series"
    shutil.copytree(exported, bad)
    p = sorted(bad.glob("*kv-cache-flag*.patch"))[0]
    p.write_text(p.read_text().replace("use_kv_cache = getattr(fastvideo_args", "use_kv_cache = getattr(nothing"))
    err = _one_line_exit_2(capsys, "fixes", "build", tmp_path / "out", "--series", bad)
    assert p.name in err and "fastvideo/pipelines/stages/longcat_kv_cache_init.py" in err
    q = sorted(bad.glob("0001-*.patch"))[0]
    q.write_text(q.read_text().replace("b/fastvideo/", "b/elsewhere/"))
    err = _one_line_exit_2(capsys, "fixes", "build", tmp_path / "out", "--series", bad)
    assert q.name in err and "elsewhere/" in err


@needs_native
def test_the_built_copy_leaves_the_installed_fastvideo_alone_and_says_what_it_holds(tmp_path):
    import json
    from fixes import series
    root = _installed_root()
    before = {p: p.stat().st_mtime_ns for p in (root / "fastvideo").rglob("*.py")}
    assert cli("fixes", "build", tmp_path / "fv") == 0
    assert {p: p.stat().st_mtime_ns for p in (root / "fastvideo").rglob("*.py")} == before
    info = json.loads((tmp_path / "fv" / series.MARKER).read_text())
    assert info["version"] == "0.2.1" and info["patches"][0] == "0001-schedule-reshift.patch"
    code = "import fixes, fixes.series as s; print(fixes.in_fastvideo()); print(s.identity()['fastvideo_path'])"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fv"), str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    held, path = out.stdout.strip().splitlines()
    assert sorted(eval(held)) == sorted(info["fixes"]) and path == str((tmp_path / "fv" / "fastvideo").resolve())


def test_the_repository_stores_no_fastvideo_code():
    """No .patch file, and no run of four non-blank lines of a file the series touches."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [p for p in tracked if p.endswith((".patch", ".diff"))]
    from longcat_convert.commands.fixes import installed_root
    import fixes
    try:
        root = installed_root()
    except Exception:
        pytest.skip("fastvideo is not installed: nothing to compare with")
    touched = {e.file for f in fixes.FIXES.values() if f.patch for e in f.patch.edits}
    windows = set()
    for t in touched:
        lines = [ln.strip() for ln in (root / t).read_text().splitlines() if ln.strip()]
        windows |= {tuple(lines[i:i + 4]) for i in range(len(lines) - 3)}
    for p in tracked:
        if not p.endswith((".py", ".md", ".txt", ".json", ".toml")):
            continue
        lines = [ln.strip() for ln in (ROOT / p).read_text(errors="replace").splitlines() if ln.strip()]
        hits = [i for i in range(len(lines) - 3) if tuple(lines[i:i + 4]) in windows]
        assert not hits, f"{p}: lines {hits[:3]} repeat FastVideo's source"


def test_a_patched_twin_fails_on_drift_or_on_stock_fastvideo(tmp_path):
    """The gate's check of a *-patched step (parity/gate.py): every row of the run-time fixed
    step's report again, every metric equal; and the patched FastVideo named as what ran."""
    import json
    from parity.gate import Step, check_patched, drift
    row = {"name": "blocks.0.attn", "case": "c", "native_name": None, "rel_l2": 1e-7, "max_abs": 2e-7,
           "passed": True, "failures": []}
    fixed = {"layers": [row, dict(row, name="output")]}
    assert drift(fixed, json.loads(json.dumps(fixed))) == []
    moved = {"layers": [dict(row, rel_l2=1.0000001e-7), dict(row, name="output")]}
    assert drift(fixed, moved) == ["blocks.0.attn (c) rel_l2: 1e-07 run-time fixed, 1.0000001e-07 patched"]
    assert drift(fixed, {"layers": [row]}) == ["output (c): only in the run-time fixed report"]
    (tmp_path / "fixed").mkdir()
    (tmp_path / "fixed" / "report.json").write_text(json.dumps(fixed))
    twin = Step("m", "parity e2e-patched c", [], patched=Step("m", "parity e2e-fixed c", [], report=tmp_path / "fixed"))
    for env, want in (({"fastvideo_patches": "0001-schedule-reshift.patch"}, True),
                      ({"fastvideo_patches": "none (stock)"}, False)):
        ok, message = check_patched(True, "ok", twin, dict(fixed, environment=env))
        assert ok is want, message
    ok, message = check_patched(True, "ok", twin, dict(moved, environment={"fastvideo_patches":
                                                                         "0001-schedule-reshift.patch"}))
    assert not ok and "drift" in message and "blocks.0.attn" in message


def test_edits_after_a_pinned_statement_over_a_span_and_removing_lines():
    """The edit forms the later patches use: ``after`` the statement that starts on a multi-line
    find's last line (a comment before it pins which one), ``span`` from a first line to the end
    of a later statement, and an empty replacement that removes the found line; and ``ordered``
    puts a patch after those it names."""
    from fixes.series import Edit, Patch, apply_edit, ordered
    src = ("def f(x):\n"
           "    if x:\n"
           "        y = 1\n"
           "    # main\n"
           "    if x:\n"
           "        y = 2\n"
           "    else:\n"
           "        y = 3\n"
           "    drop = 0\n"
           "    # old\n"
           "    if y:\n"
           "        y += 1\n"
           "    return y\n")
    after = apply_edit(src, Edit("m.py", "f", "# main\nif x:", "y = -y", where="after"), "p")
    assert after.split("\n")[5:9] == ["        y = 2", "    else:", "        y = 3", "    y = -y"]
    span = apply_edit(src, Edit("m.py", "f", "# old\nif y:", "y = 0  # new", where="span"), "p")
    assert "    y = 0  # new\n    return y" in span and "y += 1" not in span and "# old" not in span
    gone = apply_edit(src, Edit("m.py", "f", "drop = 0", ""), "p")
    assert "drop" not in gone and gone.count("\n") == src.count("\n") - 1
    a, b, c = Patch("a", "", "", after=("c",)), Patch("b", "", ""), Patch("c", "", "")
    assert [p.name for p in ordered([a, b, c])] == ["b", "c", "a"]
    assert [p.name for p in ordered([a, b])] == ["a", "b"]        # a patch it names that is not there


def test_a_sequence_parallel_twin_is_judged_verdict_by_verdict_and_says_why():
    """Under --sp the patch and the run-time fix order the attention's sums differently: the twin
    must hold every row with the same verdict (each judged by the policy), not the same bits."""
    import json
    from parity.gate import SP_DRIFT_WHY, Step, check_patched, drift
    row = {"name": "blocks.0.attn", "case": "c:rank0", "native_name": None, "rel_l2": 3e-7, "passed": True,
           "failures": []}
    fixed = {"layers": [row]}
    moved = {"layers": [dict(row, rel_l2=4e-7)]}
    assert drift(fixed, moved, exact=False) == [] and drift(fixed, moved) != []
    assert drift(fixed, {"layers": [dict(row, passed=False)]}, exact=False) == [
        "blocks.0.attn (c:rank0) passed: True run-time fixed, False patched"]
    assert drift(fixed, {"layers": []}, exact=False) == ["blocks.0.attn (c:rank0): only in the run-time fixed report"]
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "report.json").write_text(json.dumps(fixed))
        twin = Step("m", "parity e2e-sp2-patched c", ["parity", "--sp", "2"],
                    patched=Step("m", "parity e2e-sp2-fixed c", [], report=Path(d)))
        ok, message = check_patched(True, "ok", twin, dict(moved, environment={"fastvideo_patches": "0011-x.patch"}))
    assert ok and SP_DRIFT_WHY in message
