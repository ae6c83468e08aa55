"""The one plot writer of the reports: an SVG line plot, log or linear y axis.

Used for the error per row of every report (parity/render.py) and the error per
step of a denoising loop (parity/pictures.py). A plot is a set of ``Series``
(one ``<path class=... data-kind=...>`` each, a ``<circle>`` with a tooltip per
point), optionally a limit drawn dashed, a marked x position (the first divergent
row or step) and a legend on the right.

On a log axis whole decades are ticked; an exact zero sits on a floor one decade
below the smallest value, labelled ``0``; an infinite value is drawn half a decade
above the top. On a linear axis an infinite value is drawn at the top.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
LIMIT_COLOR = "#d62728"


@dataclass
class Series:
    """One curve: ``points`` [(x, y)], drawn in ``key``'s colour (series sharing a key
    share a colour); ``label``: its legend text ("" for none); ``tips``: one tooltip
    per point (default ``key x: y``)."""
    key: str
    points: list[tuple[float, float]]
    cls: str = "series"
    label: str = ""
    dotted: bool = False
    tips: list[str] = field(default_factory=list)


@dataclass
class Axis:
    """The x axis: ``ticks`` [(x, label)], their labels turned 40 degrees when ``slanted``."""
    title: str = ""
    ticks: list[tuple[float, str]] = field(default_factory=list)
    slanted: bool = False


def _y_range(values: list[float], limit: float | None, log: bool) -> tuple[float, float, bool]:
    """(low, high, has a floor of zeros) in axis units (decades on a log axis)."""
    finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    cands = finite + ([limit] if limit is not None and (limit > 0 or not log) else [])
    if log:
        hi = math.ceil(math.log10(max(cands))) if cands else 0
        lo = math.floor(math.log10(min(cands))) if cands else -1
        zeros = any(v <= 0 for v in values)
        if zeros or lo == hi:
            lo -= 1                                  # room for the floor of exact zeros
        return lo, hi, zeros
    lo, hi = (min(cands), max(cands)) if cands else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    return lo, hi, False


def svg_plot(title: str, series: list[Series], *, x: Axis, y_title: str, log: bool = True,
             limit: float | None = None, limit_label: str = "", marker: float | None = None,
             marker_label: str = "", legend_note: str = "", width: int = 660, height: int = 300) -> str:
    """The plot as SVG text (a standalone ``<svg>`` element, also valid inside HTML)."""
    e = html.escape
    series = [s for s in series if s.points]
    values = [v for s in series for _, v in s.points]
    lo, hi, zeros = _y_range(values, limit, log)
    top = hi + 0.5 if log else hi
    xs = sorted({px for s in series for px, _ in s.points} | {t for t, _ in x.ticks}) or [0.0]
    x0, x1 = xs[0], xs[-1]
    labels = [s.label for s in series if s.label] + ([legend_note] if legend_note else [])
    pad_l, pad_t = 58, 26
    pad_r = 12 + (min(240, 44 + 6 * max(map(len, labels))) if labels else 0)
    pad_b = 86 if x.slanted else 40
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def X(v: float) -> float:
        return pad_l + (w * (v - x0) / (x1 - x0) if x1 > x0 else w / 2)

    def Y(v: float) -> float:
        if log:
            y = lo if v <= 0 else (top if not math.isfinite(v) else min(math.log10(v), top))
        else:
            y = top if not math.isfinite(v) else v
        return pad_t + h - h * (y - lo) / (top - lo)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" role="img">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
             f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>',
             f'<text x="{pad_l}" y="16" font-size="13" font-weight="bold">{e(title)}</text>']
    if log:
        ticks = [(10.0 ** d, "0" if zeros and d == lo else f"1e{d}") for d in range(lo, hi + 1, max(1, (hi - lo) // 6))]
    else:
        ticks = [(lo + (hi - lo) * k / 4, f"{lo + (hi - lo) * k / 4:.3g}") for k in range(5)]
    for v, label in ticks:
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e4e4e4"/>'
                     f'<text x="{pad_l - 4}" y="{Y(v) + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
    for v, label in x.ticks:
        px, py = X(v), pad_t + h + 12
        turn = f' transform="rotate(-40 {px:.1f} {py})"' if x.slanted else ""
        anchor = "end" if x.slanted else "middle"
        parts.append(f'<text x="{px:.1f}" y="{py}" font-size="{9 if x.slanted else 10}" text-anchor="{anchor}"'
                     f'{turn}>{e(label)}</text>')
    if x.title:
        parts.append(f'<text x="{pad_l + w / 2:.1f}" y="{height - 8}" font-size="11" text-anchor="middle">'
                     f'{e(x.title)}</text>')
    parts.append(f'<text x="14" y="{pad_t + h / 2:.1f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 14 {pad_t + h / 2:.1f})">{e(y_title)}</text>')
    if limit is not None and (limit > 0 or not log):
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{Y(limit):.1f}" y2="{Y(limit):.1f}" '
                     f'stroke="{LIMIT_COLOR}" stroke-dasharray="6 4" stroke-width="1.5"/>'
                     f'<text x="{pad_l + w - 4}" y="{Y(limit) - 4:.1f}" font-size="10" text-anchor="end" '
                     f'fill="{LIMIT_COLOR}">{e(limit_label)}</text>')
    if marker is not None:
        parts.append(f'<line x1="{X(marker):.1f}" x2="{X(marker):.1f}" y1="{pad_t}" y2="{pad_t + h}" '
                     f'stroke="{LIMIT_COLOR}" stroke-width="0.8"/>')
        if marker_label:
            parts.append(f'<text x="{X(marker) + 3:.1f}" y="{pad_t + 10}" font-size="10" fill="{LIMIT_COLOR}">'
                         f'{e(marker_label)}</text>')
    keys = list(dict.fromkeys(s.key for s in series))
    color = {k: COLORS[n % len(COLORS)] for n, k in enumerate(keys)}
    for s in sorted(series, key=lambda s: not s.dotted):           # dotted ones underneath
        d = " ".join(f"{'M' if i == 0 else 'L'}{X(px):.1f},{Y(v):.1f}" for i, (px, v) in enumerate(s.points))
        style = 'stroke-width="1.5" stroke-dasharray="2 3" opacity="0.75"' if s.dotted else 'stroke-width="2"'
        parts.append(f'<path class="{e(s.cls)}" data-kind="{e(s.key)}" d="{d}" fill="none" '
                     f'stroke="{color[s.key]}" {style}/>')
        tips = s.tips or [f"{s.key} {px:g}: {v:.3e}" for px, v in s.points]
        for (px, v), tip in zip(s.points, tips):
            parts.append(f'<circle cx="{X(px):.1f}" cy="{Y(v):.1f}" r="{2 if s.dotted else 3}" '
                         f'fill="{color[s.key]}"><title>{e(tip)}</title></circle>')
    ly, shown = pad_t + 10, set()
    for s in series:
        if s.label and s.key not in shown:
            shown.add(s.key)
            parts.append(f'<line x1="{pad_l + w + 12}" x2="{pad_l + w + 30}" y1="{ly}" y2="{ly}" '
                         f'stroke="{color[s.key]}" stroke-width="2"/><text x="{pad_l + w + 34}" y="{ly + 4}" '
                         f'font-size="10">{e(s.label)}</text>')
            ly += 16
    if legend_note:
        parts.append(f'<line x1="{pad_l + w + 12}" x2="{pad_l + w + 30}" y1="{ly + 6}" y2="{ly + 6}" stroke="#555" '
                     f'stroke-width="1.5" stroke-dasharray="2 3"/><text x="{pad_l + w + 34}" y="{ly + 10}" '
                     f'font-size="10">{e(legend_note)}</text>')
    parts.append("</svg>")
    return "".join(parts)
