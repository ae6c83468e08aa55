"""``longcat-convert gate``: the CI parity gate over the bundled golden data.

For every model folder in the manifest (golden/gate.json) it runs what a user
would run: convert, verify, golden-check every case, and parity for every case
(plus the extra modes the manifest asks for). Each step is the real command,
run in-process; its exit code and report decide the step. A step the manifest
marks as a known difference must fail exactly as stated (same first divergent
layer) -- if it starts passing or diverges elsewhere, the gate fails.
Writes one summary, a JUnit XML and every step's reports.
"""
from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from longcat_convert.errors import BadInput, invoke

DEFAULT_GOLDEN = Path(__file__).resolve().parent.parent / "golden"
# A known difference that states its size (relative L2 at the first divergent row)
# must reproduce it to within this relative tolerance.
SIZE_RTOL = 0.02


@dataclass
class Step:
    model: str
    name: str
    argv: list[str]
    report: Path | None = None
    expect: dict | None = None        # known difference: {"passed": false, "first_divergent": ..., "why": ...}
    expect_sp: dict | None = None     # --sp steps: the report's sp section must hold these (numbers within SIZE_RTOL)
    expect_features: dict | None = None   # features step: the manifest's entry (verdicts: "<feature>=<setting>" -> verdict)
    patched: "Step | None" = None     # a twin on patched FastVideo (fixes/series.py): the --fixes step it re-runs
    rc: int | None = None
    seconds: float = 0.0
    ok: bool = False
    message: str = ""
    details: dict = field(default_factory=dict)


def load_manifest(golden: Path) -> dict:
    from longcat_convert.jsonfile import load_object
    p = golden / "gate.json"
    return load_object(p, "a gate manifest object", missing=f"{p}: no gate manifest in the golden folder")


def _check_manifest(golden: Path, manifest: dict, catalogue=None) -> None:
    """Every model and case a relative path inside the golden folder, every entry of the
    shape plan_steps reads, every known difference's id in the catalogue: one line naming
    what is wrong, before anything runs."""
    from .known import Catalogue
    catalogue = catalogue or Catalogue.load()
    where = golden / "gate.json"
    shape = "needs models: [{model, cases: [{case, parity: [mode | {mode, args, tag, known_difference}]}]}]"

    def path_ok(v) -> bool:
        return isinstance(v, str) and v and "\0" not in v and not Path(v).is_absolute() and ".." not in Path(v).parts

    models = manifest.get("models")
    if not isinstance(models, list):
        raise BadInput(f"{where}: {shape}")
    for m in models:
        if not isinstance(m, dict) or not path_ok(m.get("model")) or not isinstance(m.get("cases"), list):
            raise BadInput(f"{where}: model entry {json.dumps(m)[:80]}: {shape} (paths relative to the golden folder)")
        for c in m["cases"]:
            if not isinstance(c, dict) or not path_ok(c.get("case")) or not isinstance(c.get("parity", []), list):
                raise BadInput(f"{where}: case entry {json.dumps(c)[:80]}: {shape} (paths relative to the golden "
                               "folder)")
            for run in c.get("parity", []):
                _parity_run(run, c, golden)
            for known in [c.get("known_difference")] + [r.get("known_difference") for r in c.get("parity", [])
                                                        if isinstance(r, dict)]:
                if known is not None and not (isinstance(known, dict) and _number_or_none(known.get("rel_l2"))
                                              and isinstance(known.get("first_divergent", ""), str)
                                              and isinstance(known.get("id", ""), str)):
                    raise BadInput(f"{where}: case {c['case']!r}: known_difference {json.dumps(known)[:80]} must be "
                                   "{id: catalogue id, first_divergent: layer, rel_l2: number, why: text}")
                if known is not None and known.get("id") is not None and known["id"] not in catalogue.ids:
                    raise BadInput(f"{where}: case {c['case']!r}: known difference {known['id']!r} is not in the "
                                   f"catalogue {catalogue.path}; add it there (docs/ci.md)")


def _number_or_none(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == v)


def plan_steps(golden: Path, work: Path, manifest: dict, known_file: Path | None = None) -> list[Step]:
    from .known import Catalogue
    steps: list[Step] = []
    _check_manifest(golden, manifest, Catalogue.load(known_file))
    known_args = ["--known", str(known_file)] if known_file else []
    models = [(m["model"], m["cases"]) for m in manifest["models"]]
    for model, cases in models:
        src = golden / model
        label = model
        out = work / model.replace("/", "_") / "converted"
        rep = out.parent
        rep.mkdir(parents=True, exist_ok=True)
        steps.append(Step(label, "convert", ["convert", str(src), str(out), "--force", "--quiet"]))
        steps.append(Step(label, "verify", ["verify", str(src), str(out), "--quiet"]))
        for fe in _features_for(manifest, model, golden):
            tag = fe.get("tag") or "features"
            r = rep / tag
            steps.append(Step(label, tag, ["features", str(src), str(out), *fe.get("args", []), "--report", str(r),
                                           "--quiet"], report=r, expect_features=fe))
        for entry in cases:
            cfile = golden / f"{entry['case']}.safetensors"
            name = Path(entry["case"]).name
            r = rep / f"golden-check-{name}"
            steps.append(Step(label, f"golden-check {name}",
                              ["golden-check", str(src), str(cfile), "--report", str(r), "--quiet"], report=r))
            for run in entry.get("parity", []):
                mode, args, tag, expect = _parity_run(run, entry, golden)
                r = rep / f"parity-{tag}-{name}"
                steps.append(Step(label, f"parity {tag} {name}",
                                  ["parity", str(src), str(out), "--case", str(cfile), "--mode", mode, *args,
                                   *known_args, "--report", str(r), "--quiet"], report=r, expect=expect,
                                  expect_sp=_expect_sp(run, entry, golden)))
    return steps + patched_twins(steps, work)


# --- every --fixes step again on patched FastVideo (issue 23) -------------------------------------

PATCHED_DIR = "fastvideo-patched"


def patched_twins(steps: list[Step], work: Path) -> list[Step]:
    """``fixes build`` (a patched copy of the installed FastVideo under ``work``), then a twin of
    every step whose arguments hold ``--fixes``: the same command with the fixes the copy holds
    as patches taken off ``--fixes`` (a fix without an upstream patch stays a run-time fix and
    the twin says so), run in a child process that imports the copy. A twin passes when its
    step would, its report names the patched FastVideo, and every row agrees with the run-time
    fixed step's (``drift``)."""
    import fixes
    patched = {n for n, f in fixes.FIXES.items() if f.patch is not None}
    copy = work / PATCHED_DIR
    out = [Step("fastvideo", "fixes build", ["fixes", "build", str(copy)])]
    for s in steps:
        if "--fixes" not in s.argv:
            continue
        i = s.argv.index("--fixes")
        # sp-whole-sequence acts only with --sp: elsewhere it is left off with the patched ones
        left = [n for n in fixes.parse(s.argv[i + 1]) if n not in patched
                and (n != "sp-whole-sequence" or "--sp" in s.argv)]
        argv = s.argv[:i] + (["--fixes", ",".join(left)] if left else []) + s.argv[i + 2:]
        report = s.report.parent / (s.report.name + "-patched") if s.report else None
        if report is not None:
            argv[argv.index(str(s.report))] = str(report)
        name = s.name.replace("-fixed", "-patched", 1) if "-fixed" in s.name else s.name + " (patched)"
        if left:
            name += f" +run-time {','.join(left)}"
        out.append(Step(s.model, name, argv, report=report, expect=s.expect, expect_sp=s.expect_sp,
                        expect_features=s.expect_features, patched=s, details={"copy": str(copy)}))
    return out if len(out) > 1 else []


def run_patched(step: Step, work_copy: Path) -> int:
    """A twin's command in a child process whose ``fastvideo`` is the patched copy."""
    import os
    import subprocess
    import sys
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(work_copy), str(repo)] + [p for p in [env.get("PYTHONPATH")] if p])
    run = subprocess.run([sys.executable, "-m", "longcat_convert.cli", *step.argv], env=env,
                         capture_output=True, text=True)
    step.details["stderr_tail"] = run.stderr.strip().splitlines()[-1:] if run.stderr.strip() else []
    return run.returncode


def drift(fixed: dict | None, patched: dict | None) -> list[str]:
    """Rows where the patched run and the run-time-fixed run differ: a row one has and the other
    not, a verdict, or any metric value (both forms run the same code in the same process
    configuration, so they agree bit for bit)."""
    if not fixed or not patched:
        return ["a report is missing"]
    def rows(rep):
        return {(r.get("case"), r["name"]): r for r in rep.get("layers", [])}
    a, b = rows(fixed), rows(patched)
    bad = [f"{k[1]} ({k[0]}): only in the {'run-time fixed' if k in a else 'patched'} report"
           for k in sorted(set(a) ^ set(b), key=str)]
    skip = {"name", "native_name", "case", "failures"}
    for k in a.keys() & b.keys():
        for m in sorted((set(a[k]) | set(b[k])) - skip):
            if a[k].get(m) != b[k].get(m):
                bad.append(f"{k[1]} ({k[0]}) {m}: {a[k].get(m)!r} run-time fixed, {b[k].get(m)!r} patched")
    got = {feature_key(r): r.get("verdict") for r in fixed.get("features", [])}
    for r in patched.get("features", []):
        if got.get(feature_key(r)) != r.get("verdict"):
            bad.append(f"feature {feature_key(r)}: {got.get(feature_key(r))} run-time fixed, {r.get('verdict')} patched")
    return bad


def check_patched(step: Step, rep: dict | None) -> None:
    if step.patched is None:
        return
    env = (rep or {}).get("environment", {})
    held = env.get("fastvideo_patches") or ""
    if not held or held.startswith("none"):
        step.ok, step.message = False, f"ran stock FastVideo ({env.get('fastvideo_path')}), not the patched copy"
        return
    fixed = None
    if step.patched.report and (step.patched.report / "report.json").is_file():
        fixed = json.loads((step.patched.report / "report.json").read_text())
    bad = drift(fixed, rep)
    step.ok = step.ok and not bad
    step.message += ("; agrees with the run-time fixed step row by row" if not bad else
                     "; drift from the run-time fixed step: " + "; ".join(bad[:4]) + (" ..." if len(bad) > 4 else ""))


def _features_for(manifest: dict, model: str, golden: Path) -> list[dict]:
    """The manifest's ``features`` entries for ``model``: ``{"model": ..., "verdicts":
    {"<feature>=<setting>": verdict}, "tag": "features-fixed", "args": ["--fixes", "all"],
    "baseline_against_reference": verdict}`` (tag, args and the baseline's verdict optional)."""
    entries = manifest.get("features", [])
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("model"), str) and isinstance(e.get("verdicts"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in e["verdicts"].items())
            and isinstance(e.get("args", []), list) and all(isinstance(a, str) for a in e.get("args", []))
            and isinstance(e.get("tag", ""), str) and isinstance(e.get("baseline_against_reference", ""), str)
            for e in entries):
        raise BadInput(f"{golden / 'gate.json'}: features must be a list of objects: model, verdicts "
                       "(\"<feature>=<setting>\" -> verdict), and optionally tag, args (strings) and "
                       "baseline_against_reference")
    return [e for e in entries if e["model"] == model]


def feature_key(row: dict) -> str:
    return f"{row['feature']}={row['setting']}"


def _check_features(step: Step, rep: dict | None) -> None:
    """A features step: every row of the matrix must have the verdict the manifest pins (a
    change in what FastVideo does with a feature, or a row appearing or going, fails the gate)."""
    if step.expect_features is None:
        return
    got = {feature_key(r): r["verdict"] for r in (rep or {}).get("features", [])}
    want = step.expect_features["verdicts"]
    bad = [f"{k}: {got.get(k, 'missing')} (expected {v})" for k, v in want.items() if got.get(k) != v]
    bad += [f"{k}: {v} (not in the manifest)" for k, v in got.items() if k not in want]
    base = step.expect_features.get("baseline_against_reference")
    have = (((rep or {}).get("features_baseline") or {}).get("against_reference") or {}).get("verdict")
    if base is not None and have != base:
        bad.insert(0, f"the baseline against the reference: {have} (expected {base})")
    step.ok = step.ok and not bad
    step.message = (f"{len(got)} feature verdicts as pinned" if not bad else
                    "feature verdicts differ: " + "; ".join(bad[:6]) + (" ..." if len(bad) > 6 else ""))


def _parity_run(run, entry: dict, golden: Path) -> tuple[str, list[str], str, dict | None]:
    """A manifest parity entry -> (mode, extra arguments, step tag, expected known difference).

    ``"e2e"`` (a mode; the case's ``known_difference`` applies), or
    ``{"mode": "sampling", "args": ["--sigmas", "original"], "tag": "sampling-original",
    "known_difference": {...}}`` (its own expectation)."""
    if isinstance(run, str):
        return run, [], run, entry.get("known_difference")
    if not isinstance(run, dict) or not isinstance(run.get("mode"), str) or not isinstance(
            run.get("args", []), list) or not all(isinstance(a, str) for a in run.get("args", [])) \
            or not isinstance(run.get("tag", ""), (str, type(None))):
        raise BadInput(f"{golden / 'gate.json'}: case {entry.get('case')!r}: a parity entry is a mode or "
                       f"{{mode, args: [str], tag, known_difference}}, not {run!r}")
    args = list(run.get("args", []))
    return run["mode"], args, run.get("tag") or "-".join([run["mode"], *[a.lstrip("-") for a in args]]), \
        run.get("known_difference")


def _expect_sp(run, entry: dict, golden: Path) -> dict | None:
    """A parity entry's ``expect_sp`` (``{"every_rank_whole_sequence": true, "attention_work_ratio": 1.6}``)."""
    want = run.get("expect_sp") if isinstance(run, dict) else None
    if want is not None and not (isinstance(want, dict) and want):
        raise BadInput(f"{golden / 'gate.json'}: case {entry.get('case')!r}: expect_sp must be an object of the "
                       f"report's sp keys and their values, not {want!r}")
    return want


def _same(want, have) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_same(v, have.get(k)) for k, v in want.items())
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        return isinstance(have, (int, float)) and not isinstance(have, bool) and \
            abs(have - want) <= SIZE_RTOL * abs(want)
    return have == want


def _check_sp(step: Step, rep: dict | None) -> None:
    """An --sp step: what the report's ``sp`` section recorded must hold (a change in
    FastVideo's sequence parallelism -- sharding the sequence, say -- fails the gate)."""
    if step.expect_sp is None:
        return
    got = (rep or {}).get("sp") or {}
    bad = [f"{k} {got.get(k)!r} (expected {v!r})" for k, v in step.expect_sp.items() if not _same(v, got.get(k))]
    step.ok = step.ok and not bad
    step.message += "; SP expectations " + ("hold" if not bad else "differ: " + ", ".join(bad))


def run_step(step: Step, root) -> None:
    """Run one step as the real command of ``root`` (the CLI group the gate was
    invoked from), in this process."""
    t0 = time.perf_counter()
    step.rc = invoke(root, step.argv) if step.patched is None else run_patched(step, Path(step.details["copy"]))
    step.seconds = time.perf_counter() - t0
    rep = None
    if step.report and (step.report / "report.json").is_file():
        rep = json.loads((step.report / "report.json").read_text())
        step.details.update({"passed": rep.get("passed"), "first_divergent": rep.get("first_divergent")})
    if step.expect is None:
        step.ok = step.rc == 0
        step.message = "ok" if step.ok else f"exit {step.rc}" + (
            f", first divergent {rep['first_divergent']}" if rep and rep.get("first_divergent") else "") + (
            f" ({step.details['stderr_tail'][0]})" if step.details.get("stderr_tail") and rep is None else "")
        _check_sp(step, rep)
        _check_features(step, rep)
        check_patched(step, rep)
        return
    want = step.expect
    got_first = rep.get("first_divergent") if rep else None
    step.ok = (step.rc == 1 and rep is not None and rep.get("passed") is False
               and got_first == want.get("first_divergent"))
    step.message = (f"known difference reproduced: first divergent {got_first}"
                    if step.ok else f"expected a failure at {want.get('first_divergent')}, got exit {step.rc}, "
                    f"first divergent {got_first}")
    if step.ok and want.get("id"):
        # The step's own report must name the same known difference (parity/known.py).
        case = next((c for c in rep.get("cases", []) if not c.get("passed", True)), {})
        tagged = case.get("known_difference")
        step.ok = tagged == want["id"]
        step.message += f", tagged {tagged or 'as no known difference'}" + ("" if step.ok else
                                                                              f" (expected {want['id']})")
    if step.ok and "rel_l2" in want:
        # Its size must reproduce too (a change in FastVideo that moves it fails the gate).
        row = next((r for r in rep["layers"] if r["name"] == got_first and not r["passed"]), {})
        got = row.get("rel_l2")
        step.ok = isinstance(got, (int, float)) and abs(got - want["rel_l2"]) <= SIZE_RTOL * abs(want["rel_l2"])
        step.message += (f", rel L2 {got:.4g} (expected {want['rel_l2']:.4g})" if isinstance(got, (int, float))
                         else f", rel L2 not measured (expected {want['rel_l2']:.4g})")
    _check_sp(step, rep)


def write_junit(steps: list[Step], path: Path) -> None:
    """JUnit XML as CI systems read it: <testsuites> holding one <testsuite>, a <testcase>
    per step (class gate.<model>), a failed step as <failure> (message: what differed; text:
    the command to re-run), a known difference that reproduced as a pass saying so."""
    failures, total = str(sum(not s.ok for s in steps)), f"{sum(s.seconds for s in steps):.3f}"
    root = ET.Element("testsuites", name="longcat-convert gate", tests=str(len(steps)), failures=failures,
                      errors="0", time=total)
    suite = ET.SubElement(root, "testsuite", name="longcat-convert-gate", tests=str(len(steps)), failures=failures,
                          errors="0", skipped="0", time=total)
    for s in steps:
        tc = ET.SubElement(suite, "testcase", classname=f"gate.{s.model}", name=s.name, time=f"{s.seconds:.3f}")
        if not s.ok:
            f = ET.SubElement(tc, "failure", message=s.message)
            f.text = "longcat-convert " + " ".join(s.argv)
        else:
            ET.SubElement(tc, "system-out").text = s.message
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
