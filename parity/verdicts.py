"""The feature matrix's verdicts, in one place: their names and what each means (the legend
every features report and the console carry), the headline (counts per verdict, and what
changed against the pins) and the pins themselves (``features --pins FILE``; the gate's
manifest entries have the same shape). Torch-free, so the pins are checked with the other
inputs before anything runs."""
from __future__ import annotations

from pathlib import Path

from longcat_convert.errors import BadInput

VERDICTS = ("exact", "no_op", "already_default", "within_tolerance", "diverges", "unsupported", "crashes",
            "not_run")

# What each verdict means, at the top of every features report and on the console.
LEGEND = {
    "exact": "every row bit for bit with the baseline; the built objects differ",
    "no_op": "accepted, but nothing changed: the built objects and every row are the baseline's",
    "already_default": "the setting the baseline already runs with: nothing to change",
    "within_tolerance": "rows differ, within the policy of the precision both runs computed them in",
    "diverges": "a row differs beyond the policy (the first such row and its size are given)",
    "unsupported": "FastVideo refused the setting",
    "crashes": "the run raised (where, in one line)",
    "not_run": "it could not run here (why)",
}


def counts(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out[r["verdict"]] = out.get(r["verdict"], 0) + 1
    return {v: out[v] for v in VERDICTS if v in out}


def headline(rows: list[dict], pins: dict | None) -> str:
    """The matrix in one line: counts per verdict, and what changed against the pins."""
    line = f"{len(rows)} rows: " + ", ".join(f"{n} {v}" for v, n in counts(rows).items())
    if pins is not None:
        line += "; " + (f"every verdict as pinned ({pins['file']})" if not pins["changed"] else
                        f"{len(pins['changed'])} changed against the pins: " + "; ".join(pins["changed"][:6]))
    return line


def feature_key(row: dict) -> str:
    return f"{row['feature']}={row['setting']}"


def load_pins(path: Path) -> dict:
    """``--pins FILE``: ``{"verdicts": {"<feature>=<setting>": verdict}, "baseline_against_reference":
    verdict}`` (the shape of a gate manifest's features entry)."""
    from longcat_convert.jsonfile import load_object
    pins = load_object(Path(path), "a features pins object", missing=f"{path}: no such pins file (--pins)")
    verdicts = pins.get("verdicts")
    if not isinstance(verdicts, dict) or not all(isinstance(k, str) and v in VERDICTS for k, v in verdicts.items()):
        raise BadInput(f"{path}: --pins needs 'verdicts': {{\"<feature>=<setting>\": one of {', '.join(VERDICTS)}}}")
    base = pins.get("baseline_against_reference")
    if base is not None and base not in VERDICTS:
        raise BadInput(f"{path}: baseline_against_reference {base!r} is not one of {', '.join(VERDICTS)} (--pins)")
    return {"file": str(path), "verdicts": dict(verdicts), "baseline_against_reference": base}


def check_pins(rows: list[dict], base_vs_ref: dict, pins: dict) -> dict:
    """Every row's verdict against its pin; a row appearing or going changes the matrix too."""
    got = {feature_key(r): r["verdict"] for r in rows}
    want = pins["verdicts"]
    changed = [f"{k}: {got.get(k, 'missing')} (pinned {v})" for k, v in want.items() if got.get(k) != v]
    changed += [f"{k}: {v} (not pinned)" for k, v in got.items() if k not in want]
    base = pins.get("baseline_against_reference")
    if base is not None and base_vs_ref.get("verdict") != base:
        changed.insert(0, f"the baseline against the reference: {base_vs_ref.get('verdict')} (pinned {base})")
    return {"file": pins["file"], "held": len(want) - sum(1 for c in changed if "(pinned" in c), "changed": changed}
