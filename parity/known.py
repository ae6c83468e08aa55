"""Known differences travel with the result.

The catalogue (``known_differences.json`` beside this module, or a team's own file
given with ``--known FILE``; format in docs/ci.md) lists each difference between
the original and FastVideo that is understood: its id, what it is, why (from
FastVideo's code), what isolates or fixes it, and when it shows: the row a case
first diverges at and the settings the case ran with. After a run,
:func:`annotate` tags every failing case that matches an entry (first match wins)
and every finding the report holds (``sp.every_rank_whole_sequence``); the
renderings show the tags, and :func:`check_expected` turns ``--expect ID`` into a
verdict: an expected difference passes when, and only when, it reproduces.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from longcat_convert.errors import BadInput

DEFAULT_PATH = Path(__file__).with_name("known_differences.json")
_ENTRY_TEXT = ("id", "title", "why", "fastvideo_code")


@dataclass(frozen=True)
class Catalogue:
    entries: tuple[dict, ...]            # matched against failing cases, in order
    findings: tuple[dict, ...]           # matched against a report key that holds
    path: str

    @property
    def ids(self) -> set[str]:
        return {e["id"] for e in self.entries + self.findings}

    def check_ids(self, ids, flag: str = "--expect") -> None:
        """Every id in the catalogue, else BadInput naming the first that is not."""
        unknown = [i for i in ids or () if i not in self.ids]
        if unknown:
            raise BadInput(f"{flag} {unknown[0]}: no such known difference in {self.path} "
                           f"(ids: {', '.join(sorted(self.ids))})")

    def get(self, known_id: str) -> dict | None:
        return next((e for e in self.entries + self.findings if e["id"] == known_id), None)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Catalogue":
        from longcat_convert.jsonfile import load_object
        p = Path(path) if path else DEFAULT_PATH
        data = load_object(p, "a known-differences catalogue (docs/ci.md)")

        def bad(why: str) -> BadInput:
            return BadInput(f"{p}: not a known-differences catalogue: {why} (format: docs/ci.md)")
        entries, findings = data.get("known_differences", []), data.get("findings", [])
        if not isinstance(entries, list) or not isinstance(findings, list):
            raise bad("'known_differences' and 'findings' must be lists")
        _unknown_keys(p, "the catalogue", data, TOP_KEYS)
        for e in entries:
            if isinstance(e, dict):
                _unknown_keys(p, f"known difference {e.get('id')!r}", e, ENTRY_KEYS)
                if isinstance(e.get("match"), dict):
                    _unknown_keys(p, f"known difference {e.get('id')!r}: match", e["match"], MATCH_KEYS)
        for f in findings:
            if isinstance(f, dict):
                _unknown_keys(p, f"finding {f.get('id')!r}", f, FINDING_KEYS)
        seen = set()
        for i, e in enumerate(entries + findings):
            if not isinstance(e, dict):
                raise bad(f"entry {i} is not an object")
            for key in _ENTRY_TEXT:
                if not isinstance(e.get(key), str) or not e[key]:
                    raise bad(f"entry {i}: {key!r} must be a non-empty string")
            if e["id"] in seen:
                raise bad(f"id {e['id']!r} appears twice")
            seen.add(e["id"])
            for key in ("isolate", "fix"):
                if e.get(key) is not None and not isinstance(e[key], str):
                    raise bad(f"{e['id']}: {key!r} must be a string")
        for e in entries:
            m = e.get("match")
            if not (isinstance(m, dict) and isinstance(m.get("rows"), list) and m["rows"]
                    and all(isinstance(r, str) for r in m["rows"]) and isinstance(m.get("when", {}), dict)):
                raise bad(f"{e['id']}: 'match' must be {{rows: [pattern, ...], when: {{setting: value}}}}")
        for f in findings:
            if not isinstance(f.get("report_key"), str):
                raise bad(f"{f['id']}: a finding needs 'report_key' (a dotted key of the report that holds)")
        return cls(tuple(entries), tuple(findings), str(p))


# Every key the catalogue may hold: a mistyped one is refused, never silently ignored.
TOP_KEYS = {"version", "about", "known_differences", "findings"}
ENTRY_KEYS = {"id", "title", "why", "fastvideo_code", "isolate", "fix", "match"}
MATCH_KEYS = {"rows", "when"}
FINDING_KEYS = {"id", "title", "why", "fastvideo_code", "isolate", "fix", "report_key"}


def _unknown_keys(path, where: str, obj: dict, allowed: set[str]) -> None:
    import difflib
    for key in obj:
        if key not in allowed:
            near = difflib.get_close_matches(key, sorted(allowed), n=1)
            raise BadInput(f"{path}: {where}: unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                           + f"; allowed: {', '.join(sorted(allowed))}")


def _matches(entry: dict, row: str, settings: dict) -> bool:
    """The row matches one of the entry's patterns and every ``when`` setting holds. An
    entry describes FastVideo against the original unless its ``when`` names ``against``
    (rows checked against golden data are another comparison)."""
    m = entry["match"]
    when = m.get("when", {})
    if settings.get("against", "fastvideo") != when.get("against", "fastvideo"):
        return False
    if not any(fnmatchcase(row, pattern) for pattern in m["rows"]):
        return False
    return all(settings.get(k) == v for k, v in when.items() if k != "against")


def _lookup(report: dict, dotted: str):
    v = report
    for part in dotted.split("."):
        if not isinstance(v, dict):
            return None
        v = v.get(part)
    return v


def _summary(entry: dict) -> dict:
    return {k: entry.get(k) for k in ("id", "title", "why", "fastvideo_code", "isolate", "fix")}


def annotate(report: dict, catalogue: Catalogue | None = None) -> dict:
    """Tag the report's failing cases (``cases[i].known_difference``: the id) and the
    first divergent row of each (``layers[j].known_difference``), and list every matched
    entry with its cases and sizes under ``known_differences``; failing cases that match
    nothing are listed under ``unexplained``."""
    catalogue = catalogue or Catalogue.load()
    found: dict[str, dict] = {}
    unexplained = []
    timed_out = {t["case"] for t in report.get("timeouts", [])}
    for case in report.get("cases", []):
        if case.get("passed", True) or case.get("case") in timed_out:    # a timeout is no difference
            continue
        row = case.get("first_divergent")
        settings = dict(case.get("settings") or {}, kind=report.get("kind"))
        if report.get("kind") == "golden-check":
            settings.setdefault("against", "golden data")
        entry = next((e for e in catalogue.entries if row and _matches(e, row, settings)), None)
        if entry is None:
            unexplained.append(case.get("case"))
            continue
        case["known_difference"] = entry["id"]
        layer = next((r for r in report.get("layers", [])
                      if r.get("case") == case.get("case") and r["name"] == row and not r["passed"]), {})
        if layer:
            layer["known_difference"] = entry["id"]
        hit = found.setdefault(entry["id"], dict(_summary(entry), cases=[]))
        hit["cases"].append({"case": case.get("case"), "row": row, "rel_l2": layer.get("rel_l2")})
    for f in catalogue.findings:
        if _lookup(report, f["report_key"]) is True:
            found.setdefault(f["id"], dict(_summary(f), cases=[], report_key=f["report_key"]))
    report["known_differences"] = list(found.values())
    report["unexplained"] = unexplained
    report["known_catalogue"] = catalogue.path
    return report


def check_expected(report: dict, expected: list[str], catalogue: Catalogue) -> tuple[bool, str]:
    """``--expect ID ...``: True when every failing case is one of the expected known
    differences and each expected one reproduced; the sentence says which way it went."""
    catalogue.check_ids(expected)
    found = {k["id"] for k in report.get("known_differences", [])}
    missing = [i for i in expected if i not in found]
    others = sorted(found - set(expected))
    if report.get("unexplained"):
        return False, ("failed where no known difference explains it: case(s) "
                       + ", ".join(map(str, report["unexplained"])))
    if any(k["cases"] for k in report.get("known_differences", []) if k["id"] in others):
        return False, f"failed with known difference(s) not expected: {', '.join(others)}"
    if missing:
        return False, f"expected known difference(s) did not reproduce: {', '.join(missing)}"
    return True, f"the expected known difference(s) reproduced: {', '.join(expected)}"
