"""Renderings of a report (parity/report.py holds the schema): Markdown, a
self-contained HTML page with one error plot per metric, a rich table on the
console, and the files ``report.json`` / ``report.md`` / ``report.html``."""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

from . import pictures, plots
from .metrics import METRIC_KEYS
from .rows import ordered

# Metrics drawn on a log axis as-is, and similarity metrics drawn as log10(1 - x).
_LOG_METRICS = ("max_abs", "mean_abs", "p99_abs", "rel_l2", "noise_ratio")
_SIM_METRICS = ("cosine", "pearson")


def _num(v) -> float | None:
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return None


def _fmt(v, metric: str = "") -> str:
    x = _num(v)
    if metric in _SIM_METRICS and x is not None and math.isfinite(x):
        return f"{x:.9f}"  # similarities live just below 1: show the digits that differ
    if x is None:
        return "" if v is None else str(v)
    if x == 0 or math.isinf(x) or math.isnan(x):
        return f"{x:g}"
    return f"{x:.3e}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.4f}"


def _columns(report: dict) -> list[str]:
    cols = [k for k in METRIC_KEYS if any(k in r for r in report["layers"])]
    if any("noise_ratio" in r for r in report["layers"]):
        cols.append("noise_ratio")
    return cols


# --------------------------------------------------------------------- text

def verdict_line(report: dict) -> str:
    """One line: PASSED, or FAILED at the first divergent row, and whether that is a
    known difference (and what isolates it) or, with --expect, what was expected."""
    if report["passed"]:
        line = "PASSED"
    elif report.get("timeouts"):
        t = report["timeouts"][0]
        line = f"TIMED OUT ({t['run']} of {t['case']}: {t['message']})"
    else:
        line = f"FAILED (first divergent: {report['first_divergent']})"
        first = next((c for c in report["cases"] if not c["passed"]), {})
        kd = next((k for k in report.get("known_differences", []) if k["id"] == first.get("known_difference")), None)
        if kd:
            line += f"; known difference {kd['id']}: {kd['title']}"
            if kd.get("isolate"):
                line += f" (to isolate it: {kd['isolate']})"
            if kd.get("fix"):
                line += f"; fixed by {kd['fix'].split(' (')[0]}"
        elif report.get("unexplained") is not None:
            line += "; not a known difference"
    exp = report.get("expected")
    if exp:
        line += f"; --expect {' '.join(exp['ids'])}: {'PASSED' if exp['passed'] else 'FAILED'}, {exp['message']}"
    return line


def _known_markdown(report: dict) -> list[str]:
    out = []
    for k in report.get("known_differences", []):
        cases = ", ".join(f"{c['case']} at `{c['row']}`" + (f" (rel L2 {_fmt(c['rel_l2'])})"
                                                           if c.get("rel_l2") is not None else "")
                          for c in k["cases"])
        out += [f"**Known difference `{k['id']}`**: {k['title']}." + (f" Cases: {cases}." if cases else ""),
                "", f"- why: {k['why']}", f"- FastVideo code: {k['fastvideo_code']}"]
        if k.get("isolate"):
            out.append(f"- to isolate it: {k['isolate']}")
        if k.get("fix"):
            out.append(f"- fix: {k['fix']}")
        out.append("")
    if report.get("unexplained"):
        out += [f"**Not a known difference**: case(s) {', '.join(map(str, report['unexplained']))} failed where no "
                f"entry of the catalogue ({report.get('known_catalogue')}) applies.", ""]
    exp = report.get("expected")
    if exp:
        out += [f"**--expect {' '.join(exp['ids'])}**: {'PASSED' if exp['passed'] else 'FAILED'}, {exp['message']}.",
                ""]
    return out


def status_word(report: dict) -> str:
    """PASSED / FAILED, or a report's own headline (the feature matrix: its verdict counts)."""
    return report.get("headline") or ("PASSED" if report["passed"] else "FAILED")


def legend_lines(report: dict) -> list[str]:
    return [f"- `{v}`: {what}" for v, what in (report.get("legend") or {}).items()]


def lowered_rows(report: dict) -> list[dict]:
    """Rows judged at another precision than the one asked (parity/precision.py), for the tables."""
    asked = report["environment"].get("dtype")
    return [r for r in report["layers"] if r.get("precision", {}).get("dtype") not in (None, asked)]


def to_markdown(report: dict, *, with_pictures: bool = True) -> str:
    """The report for PR comments; ``with_pictures``: link the pictures (files of the
    report folder; left out of ``$GITHUB_STEP_SUMMARY``, where they would not resolve)."""
    lines = [f"## {report['title']}: {status_word(report)}", ""]
    if report.get("legend"):
        lines += ["Verdicts:", *legend_lines(report), ""]
    if report["first_divergent"]:
        lines.append(f"First divergent row: `{report['first_divergent']}`")
        lines.append("")
    if report.get("fixes"):
        lines += ["FastVideo ran with our fixes installed: " + "; ".join(f"`{f['name']}` ({f['what']})"
                                                                         for f in report["fixes"]), ""]
    lines += _known_markdown(report)
    if with_pictures:
        lines += _pictures_markdown(report)
    elif picture_entries(report):
        lines += ["Pictures (decoded frames, error per step): report.md / report.html of the report folder.", ""]
    env = report["environment"]
    lines.append(f"torch {env.get('torch')}, fastvideo {env.get('fastvideo')}, CUDA {env.get('cuda')}, "
                 f"device {env.get('device')} ({env.get('device_name')}), dtype {env.get('dtype')}, "
                 f"attention {env.get('attention_backend')}; mode {report.get('mode')}; tolerance policy "
                 f"v{report['policy']['version']}: "
                 + ", ".join(f"{k} <= {v:g}" for k, v in report["policy"]["limits"].items()))
    lines.append("")
    matrix = report.get("kind") == "features"     # its rows are in report.json / .html; its table below
    if not matrix and (len(report["cases"]) > 1 or (report["cases"] and report["cases"][0]["case"])):
        lines += ["| case | result | first divergent | known difference |", "|---|---|---|---|"]
        for c in report["cases"]:
            lines.append(f"| {c['case']} | {'pass' if c['passed'] else '**FAIL**'} | {c['first_divergent'] or ''} | "
                         f"{c.get('known_difference') or ''} |")
        lines.append("")
    cols = _columns(report)
    has_case = any(r.get("case") for r in report["layers"])
    has_native = any(r.get("native_name") for r in report["layers"])
    has_prec = bool(lowered_rows(report))
    head = (["case"] if has_case else []) + ["layer"] + (["native"] if has_native else []) + cols + \
        (["judged at"] if has_prec else []) + ["margin", "result"]
    if report["layers"] and not matrix:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["layers"] if not matrix else []:
        cells = ([r.get("case") or ""] if has_case else []) + [f"`{r['name']}`"]
        cells += [f"`{r.get('native_name') or ''}`"] if has_native else []
        cells += [_fmt(r.get(c), c) for c in cols]
        cells += [r.get("precision", {}).get("why", "")] if has_prec else []
        cells.append(margin_text(r.get("margin")))
        cells.append("pass" if r["passed"] else "**FAIL** " + "; ".join(r.get("failures", [])))
        lines.append("| " + " | ".join(cells) + " |")
    lines += _timing_markdown(report)
    lines += _sp_markdown(report)
    lines += features_markdown(report)
    for n in report.get("notes", []):
        lines += ["", f"> {n}"]
    return "\n".join(lines) + "\n"


def picture_entries(report: dict) -> list[tuple[dict, str | None]]:
    """Every picture of the report, (entry, SVG text or None): the frames grids the run
    attached, then one error-per-step curve per loop case (drawn from the rows)."""
    frames = [(e, None) for e in report.get("pictures") or [] if e.get("kind") != "steps"]
    return frames + pictures.step_curves(report)


def _caption(entry: dict) -> str:
    if entry["kind"] == "steps":
        return (f"{entry['case'] or 'the loop'}: relative L2 per step, one curve per row kind "
                f"({', '.join(entry['rows'])}); dashed: the policy limit")
    if entry["kind"] == "clip":
        frames = entry["frames"]
        shown = (f"all {entry['frame_count']} decoded frames" if len(frames) == entry["frame_count"]
                 else f"{len(frames)} of {entry['frame_count']} decoded frames")
        return (f"{entry['case']}: {shown} at {entry['fps']} frames/s; top {' | '.join(entry['columns'])}, below "
                f"each run its difference (max over channels, x{entry['amplification']:g}: black 0, white >= "
                f"{entry['white']:.3g})" + (f"; {entry['mp4_note']}" if entry.get("mp4_note") else ""))
    runs = "; ".join(f"{r['label']}: PSNR {_fmt(r['psnr_db'])} dB, max abs {_fmt(r['max_abs'])}"
                     for r in entry["runs"])
    return (f"{entry['case']}: decoded frames {', '.join(map(str, entry['frames']))} of {entry['frame_count']}, "
            f"columns {' | '.join(entry['columns'])}; difference = max over channels, x{entry['amplification']:g} "
            f"(black 0, white >= {entry['white']:.3g}); {runs}")


def _pictures_markdown(report: dict) -> list[str]:
    out = []
    for entry, _ in picture_entries(report):
        out += [f"![{entry['kind']} {entry['case'] or ''}]({entry['file']})", ""]
        if entry.get("mp4"):
            out += [f"[the clip as MP4]({entry['mp4']})", ""]
        out += [f"*{_caption(entry)}*", ""]
    return (["### Pictures", ""] + out) if out else []


def _pictures_html(report: dict) -> str:
    import base64
    files = report.get("attachments") or {}
    out = []
    def src(name: str, mime: str) -> str:
        data = files.get(name)
        return f"data:{mime};base64," + base64.b64encode(data).decode() if data else html.escape(name)
    for entry, svg in picture_entries(report):
        kind = html.escape(entry["kind"])
        if svg is not None:
            body = svg
        else:
            mime = "image/gif" if entry["file"].endswith(".gif") else "image/png"
            body = f'<img class="{kind}" src="{src(entry["file"], mime)}" alt="{kind}" style="max-width:100%">'
        if entry.get("mp4"):        # the clip as a video, its GIF where the browser plays no MP4
            body = (f'<video class="clip" controls autoplay loop muted playsinline style="max-width:100%">'
                    f'<source src="{src(entry["mp4"], "video/mp4")}" type="video/mp4">{body}</video>')
        out.append(f"<figure>{body}<figcaption>{html.escape(_caption(entry))}</figcaption></figure>")
    return ("<h2>Pictures</h2>" + "".join(out)) if out else ""


def margin_text(m: dict | None) -> str:
    """A row's margin: its binding limit and value / limit (below 1 passes)."""
    return "" if not m else f"{m['limit']} {_fmt(m['ratio'])}"


FEATURES_HEAD = ["feature", "setting", "verdict", "against", "evidence", "wall s (baseline)",
                 "peak MiB (baseline)", "vs reference"]


def features_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """The feature matrix (``longcat-convert features``): one row per feature and setting."""
    rows = []
    for f in report.get("features") or []:
        ref = f.get("against_reference") or {}
        vs_ref = "" if not ref else ref["verdict"] + (f" at {ref['first_divergent']} ({_fmt(ref.get('rel_l2'))})"
                                                      if ref.get("first_divergent") else "")
        if ref.get("same_as_baseline"):
            vs_ref += " (as the baseline)"
        wall = "" if f.get("wall_s") is None else f"{f['wall_s']:.2f} ({f.get('baseline_wall_s', 0):.2f})"
        mem = "" if f.get("peak_mib") is None else f"{f['peak_mib']:.1f} ({f.get('baseline_peak_mib', 0):.1f})"
        rows.append([f["feature"], f["setting"], f["verdict"], f.get("baseline", ""), f.get("message", ""),
                     wall, mem, vs_ref])
    return FEATURES_HEAD, rows


def features_markdown(report: dict) -> list[str]:
    head, body = features_table(report)
    if not body:
        return []
    out = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return out


def features_lines(report: dict) -> list[str]:
    """The matrix on the console: one line per row."""
    return [f"{r[2]:>16}  {r[0]} = {r[1]}: {r[4]}" for r in features_table(report)[1]]


def _timing_markdown(report: dict) -> list[str]:
    rows = report.get("timing") or []
    if not rows:
        return []
    out = ["", "| case | DiT calls (ref / native) | reference ms per DiT call (min-max) | native ms per DiT call "
           "(min-max) | native / reference | first call ms (ref / native) |", "|---|---|---|---|---|---|"]
    for t in rows:
        calls, first = t.get("dit_calls", {}), t.get("first_call_ms") or {}
        out.append(f"| {t['case']} | {calls.get('reference')} / {calls.get('native')} | "
                   f"{_fmt(t.get('reference_ms_per_dit_call'))}{_spread(t.get('reference_ms_spread'))} | "
                   f"{_fmt(t.get('native_ms_per_dit_call'))}{_spread(t.get('native_ms_spread'))} | "
                   f"{_fmt(t.get('native_over_reference'))} | {_fmt(first.get('reference'))} / "
                   f"{_fmt(first.get('native'))} |")
    return out


def _spread(s) -> str:
    return f" ({_fmt(s[0])}-{_fmt(s[1])})" if s else ""


def sp_rows(report: dict) -> tuple[str, list[list[str]], str]:
    """The ``sp`` section as (heading, rows [run, forward ms, peak MiB (+ above start),
    attention calls, work vs 1 process], speedup line)."""
    sp = report.get("sp")
    if not sp:
        return "", [], ""
    head = (f"Sequence parallelism: {sp['world_size']} ranks ({sp['backend']}, {sp['start']}, {sp['device']}), "
            f"{sp['threads']['rank']} torch thread(s) per rank, {sp['threads']['baseline']} for the 1-process run")
    rows = []
    for label, r in [("1 process", sp.get("baseline") or {})] + [(f"rank {r['rank']}", r) for r in sp["ranks"]]:
        if "forward_ms" not in r:
            rows.append([label, "", "", f"failed: {r.get('error', '')}", ""])
            continue
        calls = "; ".join(
            f"{k} {v['calls']}x B{_vals(v.get('batch'))} H{_vals(v.get('heads'))} q{_vals(v.get('q_len'))} "
            f"k{_vals(v.get('k_len'))}" for k, v in r["attention"].items())
        ratio = r.get("attention_work_ratio", 1.0 if label == "1 process" else None)
        rows.append([label, _fmt(r["forward_ms"]), f"{r['peak_memory_mib']:.1f}",
                     calls, "" if ratio is None else f"{ratio:.3f}"])
    speed = (f"speedup (1-process ms / slowest rank ms) {sp['speedup']:.2f}x, attention work per rank "
             f"{sp['attention_work_ratio']:.3f}x of one process" if sp.get("speedup") is not None
             else "no speedup: a run did not finish")
    return head, rows, speed


def _vals(v) -> str:
    return "/".join(map(str, v)) if isinstance(v, list) else str(v)


_SP_HEAD = ["run", "forward ms", "peak MiB (model + work)", "attention calls", "attention work / 1 process"]


def _sp_markdown(report: dict) -> list[str]:
    head, rows, speed = sp_rows(report)
    if not head:
        return []
    out = ["", f"**{head}**", "", "| " + " | ".join(_SP_HEAD) + " |", "|" + "---|" * len(_SP_HEAD)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + ["", speed]


def print_table(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    # Results go to stdout; wide enough for the metric columns when it is a pipe (CI logs).
    console = console or Console(width=None if os.isatty(1) else 200)
    cols = _columns(report)
    has_case = any(r.get("case") for r in report["layers"])
    t = Table(title=report["title"], show_lines=False)
    if has_case:
        t.add_column("case")
    t.add_column("layer")
    if any(r.get("native_name") for r in report["layers"]):
        t.add_column("native")
        native = True
    else:
        native = False
    for c in cols:
        t.add_column(c, justify="right")
    t.add_column("")
    for r in report["layers"]:
        row = ([r.get("case") or ""] if has_case else []) + [r["name"]]
        row += [r.get("native_name") or ""] if native else []
        row += [_fmt(r.get(c), c) for c in cols]
        row.append("[green]pass[/]" if r["passed"] else "[bold red]FAIL[/]")
        t.add_row(*row)
    console.print(t)
    for t in report.get("timing") or []:
        console.print(f"timing {t['case']}: reference {_fmt(t.get('reference_ms_per_dit_call'))} ms"
                      f"{_spread(t.get('reference_ms_spread'))}, native {_fmt(t.get('native_ms_per_dit_call'))} ms"
                      f"{_spread(t.get('native_ms_spread'))} per DiT call (median after the first call; "
                      f"native/reference {_fmt(t.get('native_over_reference'))})", highlight=False)
    head, rows, speed = sp_rows(report)
    if head:
        console.print(head)
        for r in rows:
            console.print(f"  {r[0]}: {r[1]} ms, {r[2]} MiB, work x{r[4] or '?'}; {r[3]}", highlight=False)
        console.print(f"  {speed}")
    for n in report.get("notes", []):
        console.print(f"[yellow]note:[/] {n}")
    for k in report.get("known_differences", []):
        cases = ", ".join(f"{c['case']} at {c['row']}" for c in k["cases"])
        console.print(f"[bold yellow]known difference {k['id']}[/]: {k['title']}" + (f" ({cases})" if cases else ""),
                      highlight=False)
        console.print(f"  why: {k['why']}\n  FastVideo code: {k['fastvideo_code']}"
                      + (f"\n  to isolate it: {k['isolate']}" if k.get("isolate") else ""), highlight=False)
    if report.get("unexplained"):
        console.print(f"[bold red]not a known difference[/]: {', '.join(map(str, report['unexplained']))}",
                      highlight=False)
    if report["passed"]:
        console.print(f"[bold green]PASSED[/] ({len(report['layers'])} rows)")
    elif report.get("timeouts"):
        console.print(f"[bold red]{verdict_line(report)}[/]", highlight=False)
    else:
        console.print(f"[bold red]FAILED[/]: first divergent row [bold]{report['first_divergent']}[/]")
    if report.get("expected"):
        exp = report["expected"]
        console.print(f"--expect {' '.join(exp['ids'])}: " + ("[bold green]PASSED[/]" if exp["passed"] else
                                                             "[bold red]FAILED[/]") + f", {exp['message']}",
                      highlight=False)


# --------------------------------------------------------------------- html

def _svg_plot(report: dict, metric: str, width=560, height=300) -> str:
    """One metric per row in run order, a curve per case (parity/plots.py draws it)."""
    rows = report["layers"]
    # One x axis for every case, in run order (parity/rows.py; cases can lack rows:
    # a KV-cache continuation has no self-attention hook, a cache prefill no
    # cross-attention).
    names = ordered(r["name"] for r in rows)
    if not names:
        return ""
    sim = metric in _SIM_METRICS
    by_case: dict[str, plots.Series] = {}
    for r in rows:
        v = _num(r.get(metric))
        if v is None or math.isnan(v):
            continue
        case = r.get("case") or ""
        s = by_case.setdefault(case, plots.Series(case, [], cls="case", label=case))
        i = names.index(r["name"])
        s.points.append((i, 1.0 - v if sim else v))
        s.tips.append(f"{case} {r['name']}: {v:.3e}".strip())
    if not by_case:
        return ""
    lim = report["policy"]["limits"].get(metric)
    fd = report.get("first_divergent")
    step = max(1, len(names) // 16)
    title = f"1 - {metric}" if sim else metric
    log = metric in _LOG_METRICS or sim
    return plots.svg_plot(f"{title} per row, in run order{' (log scale)' if log else ''}", list(by_case.values()),
                          x=plots.Axis(ticks=[(i, names[i]) for i in range(0, len(names), step)], slanted=True),
                          y_title=title, log=log, limit=None if lim is None else (1.0 - lim if sim else lim),
                          limit_label="" if lim is None else f"tolerance {lim:g}",
                          marker=names.index(fd) if fd in names else None,
                          marker_label=f"first divergent: {fd}" if fd in names else "",
                          width=width, height=height)


def _known_html(report: dict) -> str:
    e = html.escape
    out = []
    for k in report.get("known_differences", []):
        cases = ", ".join(f"{c['case']} at <code>{e(c['row'])}</code>" + (f" (rel L2 {_fmt(c['rel_l2'])})"
                                                                          if c.get("rel_l2") is not None else "")
                          for c in k["cases"])
        items = [f"<li>why: {e(k['why'])}</li>", f"<li>FastVideo code: <code>{e(k['fastvideo_code'])}</code></li>"]
        items += [f"<li>to isolate it: {e(k['isolate'])}</li>"] if k.get("isolate") else []
        items += [f"<li>fix: {e(k['fix'])}</li>"] if k.get("fix") else []
        out.append(f"<div class='known'><b>Known difference <code>{e(k['id'])}</code></b>: {e(k['title'])}."
                   + (f" Cases: {cases}." if cases else "") + f"<ul>{''.join(items)}</ul></div>")
    if report.get("unexplained"):
        out.append(f"<div class='known unexplained'><b>Not a known difference</b>: case(s) "
                   f"{e(', '.join(map(str, report['unexplained'])))} failed where no entry of the catalogue "
                   f"({e(str(report.get('known_catalogue')))}) applies.</div>")
    exp = report.get("expected")
    if exp:
        out.append(f"<div class='known'><b>--expect {e(' '.join(exp['ids']))}</b>: "
                   f"{'PASSED' if exp['passed'] else 'FAILED'}, {e(exp['message'])}.</div>")
    return "".join(out)


def to_html(report: dict) -> str:
    status = status_word(report)
    color = "#2ca02c" if report["passed"] else "#d62728"
    plots = "".join(f"<div class='plot'>{_svg_plot(report, m)}</div>" for m in _columns(report))
    md_table = to_markdown(report)
    cols = _columns(report)
    head = "".join(f"<th>{c}</th>" for c in ["case", "layer", "native"] + cols + ["judged at", "margin", "result"])
    body = []
    for r in report["layers"]:
        cls = "" if r["passed"] else ' class="fail"'
        cells = [r.get("case") or "", r["name"], r.get("native_name") or ""] + [_fmt(r.get(c), c) for c in cols]
        cells += [r.get("precision", {}).get("why", ""), margin_text(r.get("margin"))]
        cells.append("pass" if r["passed"] else "FAIL " + "; ".join(r.get("failures", [])))
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    env = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                  for k, v in report["environment"].items())
    notes = _known_html(report)
    if report.get("legend"):
        notes += "<h2>Verdicts</h2><ul>" + "".join(f"<li><b>{html.escape(v)}</b>: {html.escape(w)}</li>"
                                                    for v, w in report["legend"].items()) + "</ul>"
    notes += "".join(f"<p class='note'>{html.escape(n)}</p>" for n in report.get("notes", []))
    f_head, f_body = features_table(report)
    if f_body:
        notes += ("<h2>Features</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in f_head) + "</tr>"
                  + "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in r)
                            + "</tr>" for r in f_body) + "</table>")
    sp_head, sp_body, sp_speed = sp_rows(report)
    if sp_head:
        notes += (f"<h2>{html.escape(sp_head)}</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in _SP_HEAD)
                  + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                      for r in sp_body) + f"</table><p>{html.escape(sp_speed)}</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(report['title'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ddd;padding:2px 6px;text-align:right}}td:nth-child(-n+3){{text-align:left}}
tr.fail td{{background:#fde0e0}}.plots{{display:flex;flex-wrap:wrap;gap:8px}}.status{{color:{color}}}.note{{background:#fff6d5;padding:4px}}.known{{background:#e8f0fe;padding:4px 8px;margin:4px 0}}.known ul{{margin:2px 0}}.unexplained{{background:#fde0e0}}figure{{margin:8px 0 16px}}figcaption{{font-size:12px;color:#444;max-width:1000px}}</style></head><body>
<h1>{html.escape(report['title'])}: <span class="status">{status}</span></h1>
<p>First divergent row: <b>{html.escape(str(report['first_divergent']))}</b> &middot; mode {html.escape(str(report.get('mode')))}
&middot; tolerance policy v{report['policy']['version']}: {html.escape(', '.join(f'{k} <= {v:g}' for k, v in report['policy']['limits'].items()))}</p>
{notes}{_pictures_html(report)}<h2>Error per row</h2><div class="plots">{plots}</div>
<h2>Rows (run order)</h2><table><tr>{head}</tr>{''.join(body)}</table>
<h2>Environment</h2><table>{env}</table>
<!-- markdown rendering of the same report:
{html.escape(md_table).replace('--', '- -')}
--></body></html>
"""


def write_reports(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "report.html"]
    entries = picture_entries(report)
    files = dict(report.get("attachments") or {})
    files.update({e["file"]: svg.encode() for e, svg in entries if svg is not None})
    for name, data in files.items():
        p = out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths.append(p)
    if entries:
        report["pictures"] = [e for e, _ in entries]
    paths[0].write_text(json.dumps({k: v for k, v in report.items() if k != "attachments"}, indent=2) + "\n")
    md = to_markdown(report)
    paths[1].write_text(md)
    paths[2].write_text(to_html(report))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(to_markdown(report, with_pictures=False) + "\n")
    return paths
