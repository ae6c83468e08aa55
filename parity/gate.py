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

from .verdicts import VERDICTS

DEFAULT_GOLDEN = Path(__file__).resolve().parent.parent / "golden"
# A known difference that states its size (relative L2 at the first divergent row)
# must reproduce it to within this relative tolerance.
SIZE_RTOL = 0.02


# A pin within this factor of its boundary is fragile: another machine's summation order could
# flip it. The gate fails on one unless the manifest's ``holds`` says why it holds.
FRAGILE = 3.0


@dataclass
class Step:
    model: str
    name: str
    argv: list[str]
    report: Path | None = None
    expect: dict | None = None        # known difference: {"id", "first_divergent", "rel_l2" | "unsized", "why"}
    expect_sp: dict | None = None     # --sp steps: the report's sp section must hold these (numbers within SIZE_RTOL)
    expect_features: dict | None = None   # features step: the manifest's entry (verdicts: "<feature>=<setting>" -> verdict)
    holds: dict = field(default_factory=dict)   # row (fnmatch) or pin -> why its small margin holds
    floats: bool = False              # compares floats: run at every thread count of the gate
    patched: "Step | None" = None     # a twin on patched FastVideo (fixes/series.py): the --fixes step it re-runs
    rc: int | None = None
    seconds: float = 0.0
    ok: bool = False
    message: str = ""
    details: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)      # one per thread count: threads, rc, seconds, outcome
    margins: list[dict] = field(default_factory=list)   # every pinned row and size with its room (FRAGILE)


def load_manifest(golden: Path) -> dict:
    from longcat_convert.jsonfile import load_object
    p = golden / "gate.json"
    return load_object(p, "a gate manifest object", missing=f"{p}: no gate manifest in the golden folder")


# Every key a manifest may hold, per level: anything else is a typo that would silently drop
# steps ("parrity") or expectations ("known_diference"), so it is refused before any step runs.
TOP_KEYS = {"about", "models", "features"}
MODEL_KEYS = {"model", "cases"}
CASE_KEYS = {"case", "parity", "known_difference", "holds"}
RUN_KEYS = {"mode", "args", "tag", "known_difference", "expect_sp", "holds"}
KNOWN_KEYS = {"id", "first_divergent", "rel_l2", "unsized", "why"}
FEATURE_KEYS = {"model", "verdicts", "tag", "args", "baseline_against_reference", "holds"}
MODES = ("e2e", "layer", "blocks", "sampling")
# Why a known difference cannot pin a size: its first divergent row has no rel L2.
UNSIZED = {"crash": "the run stops before the row is compared",
           "shape mismatch": "the two sides' rows differ in shape",
           "one side only": "the row is recorded on one side only"}


def _where(golden: Path) -> Path:
    return golden / "gate.json"


def _keys(golden: Path, what: str, obj: dict, allowed: set[str]) -> None:
    import difflib
    for key in obj:
        if key not in allowed:
            near = difflib.get_close_matches(key, sorted(allowed), n=1)
            raise BadInput(f"{_where(golden)}: {what}: unknown key {key!r}"
                           + (f" (did you mean {near[0]!r}?)" if near else "") + f"; allowed: {', '.join(sorted(allowed))}")


def _holds(golden: Path, what: str, v) -> None:
    if v is not None and not (isinstance(v, dict) and all(isinstance(k, str) and isinstance(w, str) and w.strip()
                                                          for k, w in v.items())):
        raise BadInput(f"{_where(golden)}: {what}: 'holds' must map a row (or pin) to why its small margin holds, "
                       "e.g. {\"t_embedder\": \"bit for bit by construction\"}")


def check_manifest(golden: Path, manifest: dict, catalogue=None) -> None:
    """The whole manifest, before any step runs: every key known at its level, every mode
    known, every model folder and case file present (a case named without ``.safetensors``),
    every known difference's id in the catalogue and its size pinned or said why not, every
    features entry naming a model of the manifest. One line naming the file, the entry and
    the key, exit 2."""
    from .known import Catalogue
    catalogue = catalogue or Catalogue.load()
    where = _where(golden)
    shape = "needs models: [{model, cases: [{case, parity: [mode | {mode, args, tag, known_difference}]}]}]"

    def path_ok(v) -> bool:
        return isinstance(v, str) and v and "\0" not in v and not Path(v).is_absolute() and ".." not in Path(v).parts

    if not isinstance(manifest, dict):
        raise BadInput(f"{where}: {shape}")
    _keys(golden, "the manifest", manifest, TOP_KEYS)
    models = manifest.get("models")
    if not isinstance(models, list) or not models:
        raise BadInput(f"{where}: {shape}")
    for m in models:
        if not isinstance(m, dict) or not path_ok(m.get("model")) or not isinstance(m.get("cases"), list):
            raise BadInput(f"{where}: model entry {json.dumps(m)[:80]}: {shape} (paths relative to the golden folder)")
        _keys(golden, f"model {m['model']!r}", m, MODEL_KEYS)
        if not (golden / m["model"]).is_dir():
            raise BadInput(f"{where}: model {m['model']!r}: no such folder {golden / m['model']}")
        for c in m["cases"]:
            if not isinstance(c, dict) or not path_ok(c.get("case")) or not isinstance(c.get("parity", []), list):
                raise BadInput(f"{where}: case entry {json.dumps(c)[:80]}: {shape} (paths relative to the golden "
                               "folder)")
            what = f"case {c['case']!r}"
            _keys(golden, what, c, CASE_KEYS)
            _holds(golden, what, c.get("holds"))
            if c["case"].endswith(".safetensors"):
                raise BadInput(f"{where}: {what}: name the case without '.safetensors' (the gate adds it)")
            if not (golden / f"{c['case']}.safetensors").is_file():
                raise BadInput(f"{where}: {what}: no such case file {golden / (c['case'] + '.safetensors')}")
            for run in c.get("parity", []):
                _parity_run(run, c, golden)
            for known in [c.get("known_difference")] + [r.get("known_difference") for r in c.get("parity", [])
                                                        if isinstance(r, dict)]:
                if known is not None:
                    _check_known(golden, what, known, catalogue)
    for e in manifest.get("features", []) if isinstance(manifest.get("features", []), list) else [None]:
        if isinstance(e, dict):
            _keys(golden, f"features entry {e.get('tag') or e.get('model')!r}", e, FEATURE_KEYS)
            _holds(golden, f"features entry {e.get('tag') or e.get('model')!r}", e.get("holds"))
            if e.get("model") not in {m["model"] for m in models}:
                raise BadInput(f"{where}: features entry {e.get('tag') or e.get('model')!r}: model {e.get('model')!r} "
                               "is not among the manifest's models, so it would run no step")
    _features_for(manifest, None, golden)


def _check_known(golden: Path, what: str, known, catalogue) -> None:
    where = _where(golden)
    form = "{id: catalogue id, first_divergent: row, rel_l2: number (or unsized: reason), why: text}"
    if not isinstance(known, dict):
        raise BadInput(f"{where}: {what}: known_difference must be {form}")
    _keys(golden, f"{what}: known_difference", known, KNOWN_KEYS)
    if not (isinstance(known.get("first_divergent"), str) and known["first_divergent"]):
        raise BadInput(f"{where}: {what}: known_difference needs first_divergent (the row it must fail at)")
    if not isinstance(known.get("id", ""), str):
        raise BadInput(f"{where}: {what}: known_difference id must be a catalogue id (a string)")
    if known.get("id") is not None and known["id"] not in catalogue.ids:
        raise BadInput(f"{where}: {what}: known difference {known['id']!r} is not in the "
                       f"catalogue {catalogue.path}; add it there (docs/ci.md)")
    size = known.get("rel_l2")
    if size is not None and not (isinstance(size, (int, float)) and not isinstance(size, bool) and size == size
                                 and size > 0):
        raise BadInput(f"{where}: {what}: known_difference rel_l2 must be a positive number")
    if (size is None) == (known.get("unsized") is None):
        raise BadInput(f"{where}: {what}: a known difference pins its size (rel_l2) or says why it cannot "
                       f"(unsized: one of {', '.join(repr(k) for k in UNSIZED)}), not {'both' if size else 'neither'}")
    if known.get("unsized") is not None and known["unsized"] not in UNSIZED:
        raise BadInput(f"{where}: {what}: unsized must be one of {', '.join(repr(k) for k in UNSIZED)}")


def plan_steps(golden: Path, work: Path, manifest: dict, known_file: Path | None = None) -> list[Step]:
    from .known import Catalogue
    steps: list[Step] = []
    check_manifest(golden, manifest, Catalogue.load(known_file))
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
            pins = rep / f"{tag}.pins.json"
            pins.write_text(json.dumps({"verdicts": fe["verdicts"],
                                        "baseline_against_reference": fe.get("baseline_against_reference")},
                                       indent=1) + "\n")
            steps.append(Step(label, tag, ["features", str(src), str(out), *fe.get("args", []), "--pins", str(pins),
                                           "--report", str(r), "--quiet"], report=r, expect_features=fe,
                              holds=dict(fe.get("holds") or {}), floats=True))
        for entry in cases:
            cfile = golden / f"{entry['case']}.safetensors"
            name = Path(entry["case"]).name
            r = rep / f"golden-check-{name}"
            steps.append(Step(label, f"golden-check {name}",
                              ["golden-check", str(src), str(cfile), "--report", str(r), "--quiet"], report=r,
                              holds=dict(entry.get("holds") or {}), floats=True))
            for run in entry.get("parity", []):
                mode, args, tag, expect = _parity_run(run, entry, golden)
                r = rep / f"parity-{tag}-{name}"
                holds = {**(entry.get("holds") or {}), **((run.get("holds") if isinstance(run, dict) else None) or {})}
                steps.append(Step(label, f"parity {tag} {name}",
                                  ["parity", str(src), str(out), "--case", str(cfile), "--mode", mode, *args,
                                   *known_args, "--report", str(r), "--quiet"], report=r, expect=expect,
                                  expect_sp=_expect_sp(run, entry, golden), holds=holds, floats=True))
    return steps + patched_twins(steps, work)


# --- every --fixes step again on patched FastVideo (issue 23) -------------------------------------

PATCHED_DIR = "fastvideo-patched"


def patched_twins(steps: list[Step], work: Path) -> list[Step]:
    """``fixes build`` (a patched copy of the installed FastVideo under ``work``), then a twin of
    every step whose arguments hold ``--fixes``: the same command with the fixes the copy holds
    as patches taken off ``--fixes`` (a fix without an upstream patch stays a run-time fix and
    the twin says so), run in a child process that imports the copy, at the first thread count
    of the gate (the fixed step's own report is at that count). A twin passes when its step
    would, its report names the patched FastVideo, and every row agrees with the run-time fixed
    step's: bit for bit, or under ``--sp`` verdict by verdict (``drift``, SP_DRIFT_WHY)."""
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
        if s.expect_features is not None and "--pins" in argv:
            argv[argv.index("--pins") + 1] = str(Path(argv[argv.index("--pins") + 1]))
        name = s.name.replace("-fixed", "-patched", 1) if "-fixed" in s.name else s.name + " (patched)"
        if left:
            name += f" +run-time {','.join(left)}"
        out.append(Step(s.model, name, argv, report=report, expect=s.expect, expect_sp=s.expect_sp,
                        expect_features=s.expect_features, patched=s, details={"copy": str(copy)},
                        holds=dict(s.holds), floats=True))
    return out if len(out) > 1 else []


def run_patched(step: Step, argv: list[str], work_copy: Path) -> int:
    """A twin's command in a child process whose ``fastvideo`` is the patched copy (it inherits
    OMP_NUM_THREADS, so it runs at the thread count the gate set)."""
    import os
    import subprocess
    import sys
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(work_copy), str(repo)] + [p for p in [env.get("PYTHONPATH")] if p])
    run = subprocess.run([sys.executable, "-m", "longcat_convert.cli", *argv], env=env,
                         capture_output=True, text=True)
    step.details["stderr_tail"] = run.stderr.strip().splitlines()[-1:] if run.stderr.strip() else []
    return run.returncode


# Why a sequence-parallel twin agrees with its run-time fixed step within the policy, not bit for bit.
SP_DRIFT_WHY = "--sp: the patch attends in token order, the run-time fix in rank order; the same sums, reordered"


def drift(fixed: dict | None, patched: dict | None, *, exact: bool = True) -> list[str]:
    """Rows where the patched run and the run-time-fixed run differ: a row one has and the other
    not, a verdict, or (``exact``) any metric value: where both forms run the same code in the
    same process configuration they agree bit for bit. Not ``exact`` (``--sp``: the two forms
    order the attention's sums differently, SP_DRIFT_WHY), every row must still be there with
    the same verdict, each judged by the policy on its own."""
    from .verdicts import feature_key
    if not fixed or not patched:
        return ["a report is missing"]

    def rows(rep):
        return {(r.get("case"), r["name"]): r for r in rep.get("layers", [])}
    a, b = rows(fixed), rows(patched)
    bad = [f"{k[1]} ({k[0]}): only in the {'run-time fixed' if k in a else 'patched'} report"
           for k in sorted(set(a) ^ set(b), key=str)]
    skip = {"name", "native_name", "case", "failures"}
    for k in a.keys() & b.keys():
        if not exact:
            if a[k].get("passed") != b[k].get("passed"):
                bad.append(f"{k[1]} ({k[0]}) passed: {a[k].get('passed')!r} run-time fixed, "
                           f"{b[k].get('passed')!r} patched")
            continue
        for m in sorted((set(a[k]) | set(b[k])) - skip):
            if a[k].get(m) != b[k].get(m):
                bad.append(f"{k[1]} ({k[0]}) {m}: {a[k].get(m)!r} run-time fixed, {b[k].get(m)!r} patched")
    got = {feature_key(r): r.get("verdict") for r in fixed.get("features", [])}
    for r in patched.get("features", []):
        if got.get(feature_key(r)) != r.get("verdict"):
            bad.append(f"feature {feature_key(r)}: {got.get(feature_key(r))} run-time fixed, {r.get('verdict')} patched")
    return bad


def check_patched(ok: bool, msg: str, step: Step, rep: dict | None) -> tuple[bool, str]:
    """A twin: it ran the patched copy, and agrees with its run-time fixed step row by row."""
    if step.patched is None:
        return ok, msg
    env = (rep or {}).get("environment", {})
    held = env.get("fastvideo_patches") or ""
    if not held or held.startswith("none"):
        return False, f"ran stock FastVideo ({env.get('fastvideo_path')}), not the patched copy"
    fixed = None
    if step.patched.report and (step.patched.report / "report.json").is_file():
        fixed = json.loads((step.patched.report / "report.json").read_text())
    exact = "--sp" not in step.argv
    bad = drift(fixed, rep, exact=exact)
    agrees = "bit for bit" if exact else f"verdict by verdict ({SP_DRIFT_WHY})"
    return ok and not bad, msg + (f"; agrees with the run-time fixed step row by row, {agrees}" if not bad else
                                  "; drift from the run-time fixed step: " + "; ".join(bad[:4])
                                  + (" ..." if len(bad) > 4 else ""))


def steps_per_model(steps: list[Step]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in steps:
        out[s.model] = out.get(s.model, 0) + 1
    return out


def _features_for(manifest: dict, model: str, golden: Path) -> list[dict]:
    """The manifest's ``features`` entries for ``model``: ``{"model": ..., "verdicts":
    {"<feature>=<setting>": verdict}, "tag": "features-fixed", "args": ["--fixes", "all"],
    "baseline_against_reference": verdict}`` (tag, args and the baseline's verdict optional)."""
    entries = manifest.get("features", [])
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("model"), str) and isinstance(e.get("verdicts"), dict)
            and all(isinstance(k, str) and v in VERDICTS for k, v in e["verdicts"].items())
            and isinstance(e.get("args", []), list) and all(isinstance(a, str) for a in e.get("args", []))
            and isinstance(e.get("tag", ""), str) and isinstance(e.get("baseline_against_reference", ""), str)
            for e in entries):
        raise BadInput(f"{golden / 'gate.json'}: features must be a list of objects: model, verdicts "
                       f"(\"<feature>=<setting>\" -> one of {', '.join(VERDICTS)}), and optionally tag, args (strings) and "
                       "baseline_against_reference")
    return [e for e in entries if e["model"] == model]


def _parity_run(run, entry: dict, golden: Path) -> tuple[str, list[str], str, dict | None]:
    """A manifest parity entry -> (mode, extra arguments, step tag, expected known difference).

    ``"e2e"`` (a mode; the case's ``known_difference`` applies), or
    ``{"mode": "sampling", "args": ["--sigmas", "original"], "tag": "sampling-original",
    "known_difference": {...}}`` (its own expectation)."""
    if isinstance(run, str):
        if run not in MODES:
            raise BadInput(f"{_where(golden)}: case {entry.get('case')!r}: unknown mode {run!r}; one of "
                           f"{', '.join(MODES)}")
        return run, [], run, entry.get("known_difference")
    if not isinstance(run, dict) or not isinstance(run.get("mode"), str) or not isinstance(
            run.get("args", []), list) or not all(isinstance(a, str) for a in run.get("args", [])) \
            or not isinstance(run.get("tag", ""), (str, type(None))):
        raise BadInput(f"{golden / 'gate.json'}: case {entry.get('case')!r}: a parity entry is a mode or "
                       f"{{mode, args: [str], tag, known_difference}}, not {run!r}")
    what = f"case {entry.get('case')!r}: parity entry {run.get('tag') or run['mode']!r}"
    _keys(golden, what, run, RUN_KEYS)
    _holds(golden, what, run.get("holds"))
    args = list(run.get("args", []))
    if "--mode" in args or "--case" in args or "--report" in args:
        raise BadInput(f"{_where(golden)}: {what}: args may not set --mode, --case or --report (the gate does)")
    if run["mode"] not in MODES:
        raise BadInput(f"{_where(golden)}: {what}: unknown mode {run['mode']!r}; one of {', '.join(MODES)}")
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


def _check_sp(ok: bool, msg: str, step: Step, rep: dict | None) -> tuple[bool, str]:
    """An --sp step: what the report's ``sp`` section recorded must hold (a change in
    FastVideo's sequence parallelism -- sharding the sequence, say -- fails the gate)."""
    if step.expect_sp is None:
        return ok, msg
    got = (rep or {}).get("sp") or {}
    bad = [f"{k} {got.get(k)!r} (expected {v!r})" for k, v in step.expect_sp.items() if not _same(v, got.get(k))]
    return ok and not bad, msg + "; SP expectations " + ("hold" if not bad else "differ: " + ", ".join(bad))


def _clear(path: Path | None) -> None:
    """A report folder an earlier run left is removed: a step's detail comes from this run."""
    import shutil
    if path is not None and path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _judge_run(step: Step, rc: int, rep: dict | None) -> tuple[bool, str, tuple]:
    """One run of a step -> (ok, message, outcome). The outcome is what must not depend on the
    machine: exit code, verdict, first divergent row, the tag, whether sizes and pins held."""
    details = {"passed": rep.get("passed"), "first_divergent": rep.get("first_divergent")} if rep else {}
    step.details.update(details)
    if step.expect_features is not None:
        pins = (rep or {}).get("pins") or {}
        ok = rc == 0 and rep is not None and not pins.get("changed")
        msg = ((rep or {}).get("headline") or f"exit {rc}") if ok else \
            ("feature verdicts differ: " + "; ".join(pins.get("changed", [])[:6]) if pins.get("changed")
             else f"exit {rc}")
        verdicts = tuple(sorted((f"{r['feature']}={r['setting']}", r["verdict"]) for r in (rep or {}).get("features", [])))
        return ok, msg, (rc, verdicts, tuple(pins.get("changed", [])))
    if step.expect is None:
        ok = rc == 0
        msg = "ok" if ok else f"exit {rc}" + (f", first divergent {rep['first_divergent']}"
                                             if rep and rep.get("first_divergent") else "")
        ok, msg = _check_sp(ok, msg, step, rep)
        return ok, msg, (rc, details.get("passed"), details.get("first_divergent"), ok)
    want = step.expect
    got_first = rep.get("first_divergent") if rep else None
    ok = rc == 1 and rep is not None and rep.get("passed") is False and got_first == want.get("first_divergent")
    msg = (f"known difference reproduced: first divergent {got_first}" if ok else
           f"expected a failure at {want.get('first_divergent')}, got exit {rc}, first divergent {got_first}")
    tagged = None
    if ok and want.get("id"):
        # The step's own report must name the same known difference (parity/known.py).
        case = next((c for c in rep.get("cases", []) if not c.get("passed", True)), {})
        tagged = case.get("known_difference")
        ok = tagged == want["id"]
        msg += f", tagged {tagged or 'as no known difference'}" + ("" if ok else f" (expected {want['id']})")
    row = next((r for r in (rep or {}).get("layers", []) if r["name"] == got_first and not r["passed"]), {})
    if ok and want.get("rel_l2") is not None:
        # Its size must reproduce too (a change in FastVideo that moves it fails the gate).
        got = row.get("rel_l2")
        ok = isinstance(got, (int, float)) and abs(got - want["rel_l2"]) <= SIZE_RTOL * abs(want["rel_l2"])
        msg += (f", rel L2 {got:.4g} (expected {want['rel_l2']:.4g})" if isinstance(got, (int, float))
                else f", rel L2 not measured (expected {want['rel_l2']:.4g})")
    elif ok and want.get("unsized"):
        # No size to pin: the failure must be of the kind the manifest says.
        kind = _failure_kind(row)
        ok = kind == want["unsized"]
        msg += f", unsized: {kind}" + ("" if ok else f" (the manifest says {want['unsized']})")
    ok, msg = _check_sp(ok, msg, step, rep)
    return ok, msg, (rc, got_first, tagged, ok)


def _failure_kind(row: dict) -> str:
    fails = " ".join(row.get("failures", []))
    if "only" in fails and "ran in the" in fails:
        return "one side only"
    if fails.startswith("shape"):
        return "shape mismatch"
    if not row or not isinstance(row.get("rel_l2"), (int, float)):
        return "crash"
    return "sized"


def margins(step: Step, rep: dict | None) -> list[dict]:
    """Every pinned row and size of one run with its room: the factor it could move by before its
    verdict flips (a passing row: limit / value; the failing row a known difference pins: value /
    limit; a pinned size: the 2% band / its distance from the pin). Room below FRAGILE is fragile
    unless ``holds`` names the row (or pin) with why it holds."""
    from fnmatch import fnmatchcase
    if rep is None:
        return []
    out: list[dict] = []

    def add(what: str, row: str, room: float, detail: str) -> None:
        held = next((why for pat, why in step.holds.items() if fnmatchcase(row, pat) or pat == what), None)
        out.append({"step": step.name, "model": step.model, "pin": what, "row": row, "room": room, "detail": detail,
                    "fragile": room < FRAGILE, "held": held})

    pinned_cases = None
    if step.expect_features is not None:
        pinned_cases = set(step.expect_features["verdicts"])
        if step.expect_features.get("baseline_against_reference"):
            pinned_cases.add("baseline vs reference")
    by_case: dict = {}
    for r in rep.get("layers", []):
        by_case.setdefault(r.get("case"), []).append(r)
    for case, rows in by_case.items():
        if pinned_cases is not None and case not in pinned_cases:
            continue
        first_fail = next((k for k, r in enumerate(rows) if not r["passed"]), None)
        for k, r in enumerate(rows if first_fail is None else rows[:first_fail + 1]):
            m = r.get("margin")
            if not m:
                continue
            ratio = float(m["ratio"]) if not isinstance(m["ratio"], str) else float("inf")
            if r["passed"]:
                room = float("inf") if ratio == 0 else 1.0 / ratio
                add(f"{case} passes", r["name"], room, f"{m['limit']} at {ratio:.3g} of its limit")
            else:
                add(f"{case} fails at {r['name']}", r["name"], ratio, f"{m['limit']} at {ratio:.3g}x its limit")
    want = (step.expect or {}).get("rel_l2")
    if want:
        row = next((r for r in rep.get("layers", []) if r["name"] == rep.get("first_divergent") and not r["passed"]), {})
        got = row.get("rel_l2")
        if isinstance(got, (int, float)):
            dist = abs(got - want) / (SIZE_RTOL * abs(want))
            add("rel_l2 pinned", row["name"], float("inf") if dist == 0 else 1.0 / dist,
                f"rel L2 {got:.5g} against the pin {want:.5g} (2% band)")
    for key, want_v in (step.expect_sp or {}).items():
        have = ((rep.get("sp") or {}).get(key))
        for sub, w, h in (_numbers(key, want_v, have)):
            dist = abs(h - w) / (SIZE_RTOL * abs(w)) if w else 0.0
            add(f"sp {sub} pinned", sub, float("inf") if dist == 0 else 1.0 / dist, f"{h:.5g} against the pin {w:.5g}")
    return out


def _numbers(key: str, want, have):
    if isinstance(want, dict) and isinstance(have, dict):
        for k, v in want.items():
            yield from _numbers(f"{key}.{k}", v, have.get(k))
    elif isinstance(want, (int, float)) and not isinstance(want, bool) and isinstance(have, (int, float)):
        yield key, float(want), float(have)


def run_step(step: Step, root, threads: tuple[int, ...] = ()) -> None:
    """Run one step as the real command of ``root`` (the CLI group the gate was invoked from),
    in this process; a float-comparing step once per thread count in ``threads`` (torch's
    intra-op threads, and OMP_NUM_THREADS for the processes it starts), each run's report in
    its own folder. The step passes when every run passes, their outcomes are the same and no
    pinned margin is fragile without a reason in the manifest."""
    import os
    import torch
    counts = tuple(threads) if step.floats and threads else (None,)
    if step.patched is not None:
        counts = counts[:1]           # at the count of its fixed step's own report (the drift is bit for bit)
    before_threads, before_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    results = []
    try:
        for n, t in enumerate(counts):
            report = step.report if n == 0 or step.report is None else step.report.with_name(
                f"{step.report.name}.threads-{t}")
            argv = list(step.argv)
            if n and step.report is not None:
                argv[argv.index(str(step.report))] = str(report)
            if t is not None:
                torch.set_num_threads(t)
                os.environ["OMP_NUM_THREADS"] = str(t)
            _clear(report)
            t0 = time.perf_counter()
            rc = invoke(root, argv) if step.patched is None else run_patched(step, argv, Path(step.details["copy"]))
            seconds = time.perf_counter() - t0
            rep = json.loads((report / "report.json").read_text()) if report and (report / "report.json").is_file() \
                else None
            ok, msg, outcome = _judge_run(step, rc, rep)
            ok, msg = check_patched(ok, msg, step, rep)
            results.append({"threads": t, "rc": rc, "seconds": round(seconds, 2), "ok": ok, "message": msg,
                            "outcome": outcome, "margins": margins(step, rep)})
    finally:
        torch.set_num_threads(before_threads)
        if before_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_env
    first = results[0]
    step.rc, step.seconds = first["rc"], sum(r["seconds"] for r in results)
    step.runs = [{k: v for k, v in r.items() if k not in ("outcome", "margins")} for r in results]
    step.ok, step.message = all(r["ok"] for r in results), first["message"]
    bad = next((r for r in results if not r["ok"]), None)
    if bad is not None and bad is not first:
        step.message = f"at {bad['threads']} threads: {bad['message']}"
    if len({repr(r["outcome"]) for r in results}) > 1:
        step.ok = False
        step.message += "; the outcome depends on the thread count: " + "; ".join(
            f"{r['threads']} threads: {r['message']}" for r in results)
    # Each pin's smallest room over the runs.
    worst: dict = {}
    for r in results:
        for m in r["margins"]:
            key = (m["pin"], m["row"])
            if key not in worst or m["room"] < worst[key]["room"]:
                worst[key] = dict(m, threads=r["threads"])
    step.margins = sorted(worst.values(), key=lambda m: m["room"])
    fragile = [m for m in step.margins if m["fragile"] and not m["held"]]
    if fragile and step.ok:
        step.ok = False
        step.message += "; fragile: " + "; ".join(f"{m['pin']} ({m['row']}: room {m['room']:.2g}, {m['detail']})"
                                                  for m in fragile[:3]) + \
            " (say in gate.json 'holds' why it holds, or fix the cause)"
    if len(counts) > 1 and step.ok:
        step.message += f" (same at {', '.join(str(c) for c in counts)} threads)"


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
