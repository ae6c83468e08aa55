"""Pictures in the reports: decoded frames side by side with their difference, and
each sampling loop's error per step (rendered by parity/render.py).

- ``png``: a PNG file from a uint8 image (grey, RGB or RGBA), written with zlib and
  struct only (no imaging library is a dependency of the project).
- ``frames_picture``: one grid per case; a row per decoded frame (at most
  ``MAX_FRAMES``, evenly spaced), the columns ``original | FastVideo | |difference|``,
  and with the fixes a second pair, ``FastVideo stock | |difference| | FastVideo fixed |
  |difference|``. Frames are the pipeline's output video, ``[B, C, F, H, W]`` with values
  in [0, 1] (the original's ``to_frames``, FastVideo's ``DecodingStage``); the first batch
  entry is drawn. The difference is ``max over channels |FastVideo - original|``
  multiplied by one amplification for the whole picture (a 1-2-5 number chosen so the
  bulk of the differences shows: their 99th percentile at most white), on a
  black-red-yellow-white scale: black is 0, white is 1/amplification or more. The
  column headers, drawn in the image with a small bitmap font of our own, name each
  column, the PSNR, the largest difference and the scale.
- ``step_curves``: per case of a report whose rows hold a denoising loop, an SVG with
  one curve per row kind (``step.<i>.dit_in``, ``dit_out``, ``noise_pred``, ``latents``,
  ...): relative L2 against the step index on a log axis, the policy's ``rel_l2``
  limit dashed, exact zeros on a floor marked ``0``.
"""
from __future__ import annotations

import html
import math
import re
import struct
import zlib

import numpy as np

from .rows import STEP_FIELDS

MAX_FRAMES = 9          # rows of a frames picture
CELL_HEIGHT = 128       # frames are magnified (nearest neighbour) to about this height
MAX_CELL_WIDTH = 320    # and sub-sampled above this width
GAP, GROUP_GAP, MARGIN = 4, 14, 8
BACKGROUND = 255


# --------------------------------------------------------------------- PNG

def png(image) -> bytes:
    """PNG bytes of a uint8 array: [H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA
    (8 bits per sample, no interlace, filter 0 on every line)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"png: uint8 image expected, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or 0 in a.shape:
        raise ValueError(f"png: [H, W], [H, W, 3] or [H, W, 4] expected, got {list(a.shape)}")
    h, w, c = a.shape
    color_type = {1: 0, 3: 2, 4: 6}[c]
    lines = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(a).reshape(h, w * c)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(lines.tobytes(), 6)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------- frames

def frame_count(video) -> int:
    shape = tuple(video.shape)
    if len(shape) not in (4, 5):
        raise ValueError(f"frames: [B, C, F, H, W] expected, got {list(shape)}")
    return int(shape[-3])


def video_array(video, frames: list[int] | None = None) -> np.ndarray:
    """A decoded video (torch tensor or array, [B, C, F, H, W] or [C, F, H, W]) -> float64
    [F, H, W, C] of its first batch entry (only the ``frames`` given, when given)."""
    frame_count(video)
    v = video[0] if len(video.shape) == 5 else video
    if frames is not None:
        v = v[:, list(frames)]
    if hasattr(v, "detach"):
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64).transpose(1, 2, 3, 0)


def to_rgb8(frame: np.ndarray) -> np.ndarray:
    """[H, W, C] in [0, 1] -> [H, W, 3] uint8 (one channel repeated; more than 3: the first 3)."""
    f = np.clip(np.round(np.nan_to_num(frame, nan=0.0) * 255.0), 0, 255).astype(np.uint8)
    if f.shape[2] == 1:
        f = np.repeat(f, 3, axis=2)
    return f[:, :, :3]


def amplification(max_abs: float) -> float:
    """The largest 1-2-5 number k >= 1 with k * max_abs <= 1 (1 for no difference)."""
    if not (isinstance(max_abs, (int, float)) and math.isfinite(max_abs)) or max_abs <= 0:
        return 1.0
    best = 1.0
    for e in range(0, 20):
        for m in (1, 2, 5):
            k = m * 10.0 ** e
            if k * max_abs <= 1.0 + 1e-12:
                best = k
    return best


def heat(v: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8, black -> red -> yellow -> white."""
    v = np.clip(np.nan_to_num(v, nan=1.0), 0.0, 1.0)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def difference(a: np.ndarray, b: np.ndarray, amplify: float) -> np.ndarray:
    """The difference image of two [H, W, C] frames: max over channels of |a - b| times
    ``amplify``, on the heat scale (identical frames: all zero)."""
    return heat(np.abs(a - b).max(axis=2) * amplify)


def pick_frames(count: int, limit: int = MAX_FRAMES) -> list[int]:
    """At most ``limit`` frame indices, evenly spaced, first and last included."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _number(x: float) -> str:
    if not math.isfinite(x):
        return "INF" if x > 0 else "NAN"
    return f"{x:.3g}".upper().replace("E-0", "E-").replace("E+0", "E")


def frames_picture(case: str, original, runs: list[tuple[str, object]], *, limit: int = MAX_FRAMES
                   ) -> tuple[dict, bytes]:
    """The frames grid of one case -> (its ``pictures`` entry, PNG bytes). ``runs``: the
    FastVideo sides to show, (label, video) each, every one beside its difference with the
    original; one amplification for all of them, so a fix shows as a darker column. PSNR,
    largest difference and amplification are over the frames shown (every frame up to
    ``limit``)."""
    F = frame_count(original)
    idx = pick_frames(F, limit)
    ref = video_array(original, idx)
    sides = []
    for label, video in runs:
        if tuple(video.shape) != tuple(original.shape):
            raise ValueError(f"frames of {label}: shape {list(video.shape)}, original {list(original.shape)}")
        sides.append((label, video_array(video, idx)))
    _, H, W, _ = ref.shape
    maxes = [float(np.abs(v - ref).max()) for _, v in sides]
    # Scaled so the bulk of the largest difference shows: its 99th percentile (of the
    # per-pixel channel maximum) at most white; the few pixels above it saturate.
    p99 = max((float(np.percentile(np.abs(v - ref).max(axis=3), 99)) for _, v in sides), default=0.0)
    amp = amplification(p99 if p99 > 0 else max(maxes, default=0.0))
    stride = max(1, math.ceil(W / MAX_CELL_WIDTH))
    h, w = -(-H // stride), -(-W // stride)
    zoom = max(1, min(8, CELL_HEIGHT // h, MAX_CELL_WIDTH // w))

    def cell(img: np.ndarray) -> np.ndarray:
        img = img[::stride, ::stride]
        return np.repeat(np.repeat(img, zoom, axis=0), zoom, axis=1)
    columns = [("ORIGINAL", "", "", [cell(to_rgb8(f)) for f in ref])]
    run_info = []
    for (label, v), mx in zip(sides, maxes):
        p = psnr(v, ref)
        run_info.append({"label": label, "psnr_db": p if math.isfinite(p) else str(p), "max_abs": mx})
        columns.append((label.upper(), f"PSNR {_number(p)} DB", "", [cell(to_rgb8(f)) for f in v]))
        columns.append(("|DIFFERENCE|", f"MAX {_number(mx)}", f"X{_number(amp)}: WHITE {_number(1 / amp)}",
                        [cell(difference(f, r, amp)) for f, r in zip(v, ref)]))
    image = _grid(columns, [f"F{f}" for f in idx])
    entry = {"kind": "frames", "case": case, "file": f"pictures/{slug(case)}.frames.png",
             "columns": ["original"] + [c for label, _ in sides for c in (label, f"|{label} - original|")],
             "frames": idx, "frame_count": F, "frame_size": [H, W], "amplification": amp,
             "white": 1.0 / amp, "runs": run_info, "size": [int(image.shape[0]), int(image.shape[1])]}
    return entry, png(image)


def _grid(columns: list[tuple[str, str, str, list[np.ndarray]]], row_labels: list[str]) -> np.ndarray:
    """Cells in rows (frames) and columns, a three-line header above each column, a label
    left of each row; a wider gap before each FastVideo pair."""
    ch, cw = columns[0][3][0].shape[:2]
    label_w = max(text_width(t, 2) for t in row_labels) + 2 * GAP
    scale_for = [2 if max(text_width(t, 2) for t in c[:3]) <= cw else 1 for c in columns]
    header_h = 3 * (7 * 2 + 4) + GAP
    gaps = [0] + [GROUP_GAP if k % 2 == 1 else GAP for k in range(1, len(columns))]
    width = MARGIN + label_w + sum(gaps) + cw * len(columns) + MARGIN
    height = MARGIN + header_h + len(row_labels) * (ch + GAP) - GAP + MARGIN
    img = np.full((height, width, 3), BACKGROUND, np.uint8)
    x = MARGIN + label_w
    for k, (*lines, cells) in enumerate(columns):
        x += gaps[k]
        for j, line in enumerate(lines):
            draw_text(img, line, x, MARGIN + j * (7 * 2 + 4), scale_for[k])
        y = MARGIN + header_h
        for c in cells:
            img[y:y + ch, x:x + cw] = c
            y += ch + GAP
        x += cw
    y = MARGIN + header_h
    for t in row_labels:
        draw_text(img, t, MARGIN, y + (ch - 14) // 2, 2)
        y += ch + GAP
    return img


# A 5x7 bitmap font of our own: upper case, digits and a little punctuation (7 rows each).
_GLYPHS = {
    "A": ".###. #...# #...# ##### #...# #...# #...#", "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.", "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####", "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####", "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.", "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#", "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#", "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.", "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#", "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.", "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.", "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.", "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..", "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.", "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####", "3": "####. ....# ....# .###. ....# ....# ####.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.", "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": ".###. #.... #.... ####. #...# #...# .###.", "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.", "9": ".###. #...# #...# .#### ....# ....# .###.",
    " ": "..... ..... ..... ..... ..... ..... .....", ".": "..... ..... ..... ..... ..... .##.. .##..",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..", "=": "..... ..... ##### ..... ##### ..... .....",
    "-": "..... ..... ..... ##### ..... ..... .....", "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....", "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...", "/": "....# ....# ...#. ..#.. .#... #.... #....",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...", "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
}
_BITMAPS = {ch: np.array([[c == "#" for c in row] for row in g.split()], bool) for ch, g in _GLYPHS.items()}


def text_width(text: str, scale: int) -> int:
    return max(0, len(text) * 6 * scale - scale)


def draw_text(img: np.ndarray, text: str, x: int, y: int, scale: int = 1, color=(0, 0, 0)) -> None:
    """Draw ``text`` (upper-cased; unknown characters as blanks) at (x, y), clipped to the image."""
    for i, ch in enumerate(text.upper()):
        bm = _BITMAPS.get(ch)
        if bm is None:
            continue
        big = np.repeat(np.repeat(bm, scale, axis=0), scale, axis=1)
        x0 = x + i * 6 * scale
        h = max(0, min(big.shape[0], img.shape[0] - y))
        w = max(0, min(big.shape[1], img.shape[1] - x0))
        if h and w and y >= 0 and x0 >= 0:
            img[y:y + h, x0:x0 + w][big[:h, :w]] = color


def slug(case: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", case or "case").strip("_") or "case"


# --------------------------------------------------------------------- the loop's error per step

_STEP = re.compile(r"^step\.(\d+)\.(\w+)$")
KIND_LABELS = {"timestep": "timestep", "dit_in": "DiT input", "dit_out": "DiT output",
               "noise_pred": "noise prediction (the step's input)", "latents": "latents after the step"}
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def is_step_row(name: str) -> bool:
    """A row of one step of a denoising loop (``step.<i>.<kind>``)."""
    return bool(_STEP.match(name or ""))


def _value(v) -> float | None:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None


def _series(named) -> dict[str, list[tuple[int, float]]]:
    """(row name, value) pairs -> row kind -> [(step, value)], kinds in loop order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for name, v in named:
        m = _STEP.match(name or "")
        v = _value(v)
        if m and v is not None:
            out.setdefault(m.group(2), []).append((int(m.group(1)), v))
    order = {k: i for i, k in enumerate(STEP_FIELDS)}
    return {k: sorted(out[k]) for k in sorted(out, key=lambda k: (order.get(k, len(order)), k))}


def step_series(report: dict, case: str | None, metric: str = "rel_l2") -> dict[str, list[tuple[int, float]]]:
    """Row kind -> [(step, metric)] for one case's ``step.<i>.<kind>`` rows, kinds in loop
    order (rows without the metric, e.g. one-sided rows, are left out)."""
    return _series((r.get("name"), r.get(metric)) for r in report.get("layers", []) if r.get("case") == case)


def stock_series(report: dict, case: str | None) -> dict[str, list[tuple[int, float]]]:
    """The stock FastVideo run's relative L2 per step (``--component pipeline --fixes``:
    ``frames[i].stock.steps``), drawn beside the judged run's; empty when there is none."""
    for f in report.get("frames") or []:
        if f.get("case") == case and (f.get("stock") or {}).get("steps"):
            return _series(f["stock"]["steps"].items())
    return {}


def curve_svg(title: str, series: dict[str, list[tuple[int, float]]], *, limit: float | None,
              first_divergent_step: int | None = None, stock: dict | None = None, width: int = 660,
              height: int = 300) -> str:
    """The error per step: one ``<path class="kind">`` per row kind, log y axis, the limit
    dashed; ``stock``: the same kinds of an unjudged stock run, dotted (``class="stock"``)."""
    stock = {k: v for k, v in (stock or {}).items() if v}
    everything = [v for group in (series, stock) for pts in group.values() for _, v in pts]
    finite = [v for v in everything if math.isfinite(v) and v > 0]
    cands = finite + ([limit] if limit and limit > 0 else [])
    hi = math.ceil(math.log10(max(cands))) if cands else 0
    lo = math.floor(math.log10(min(cands))) if cands else -1
    zeros = any(v == 0 for v in everything)
    if zeros or lo == hi:
        lo -= 1                                     # room for the floor of exact zeros
    floor = lo
    steps = sorted({s for group in (series, stock) for pts in group.values() for s, _ in pts}) or [0]
    s0, s1 = steps[0], steps[-1]
    pad_l, pad_r, pad_t, pad_b = 58, 240, 26, 40
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def X(s: float) -> float:
        return pad_l + (w * (s - s0) / (s1 - s0) if s1 > s0 else w / 2)

    def Y(v: float) -> float:
        y = floor if v <= 0 else (hi + 0.5 if not math.isfinite(v) else math.log10(v))
        return pad_t + h - h * (min(y, hi + 0.5) - lo) / (hi + 0.5 - lo)
    e = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" role="img">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
             f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>',
             f'<text x="{pad_l}" y="16" font-size="13" font-weight="bold">{e(title)}</text>']
    for d in range(lo, hi + 1, max(1, (hi - lo) // 6)):
        label = "0" if zeros and d == floor else f"1e{d}"
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{Y(10.0 ** d):.1f}" y2="{Y(10.0 ** d):.1f}" '
                     f'stroke="#e4e4e4"/><text x="{pad_l - 4}" y="{Y(10.0 ** d) + 4:.1f}" font-size="10" '
                     f'text-anchor="end">{label}</text>')
    for s in steps:
        parts.append(f'<text x="{X(s):.1f}" y="{pad_t + h + 14}" font-size="10" text-anchor="middle">{s}</text>')
    parts.append(f'<text x="{pad_l + w / 2:.1f}" y="{height - 8}" font-size="11" text-anchor="middle">step</text>'
                 f'<text x="14" y="{pad_t + h / 2:.1f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 14 {pad_t + h / 2:.1f})">relative L2 (log)</text>')
    if limit and limit > 0:
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{Y(limit):.1f}" y2="{Y(limit):.1f}" '
                     f'stroke="#d62728" stroke-dasharray="6 4" stroke-width="1.5"/>'
                     f'<text x="{pad_l + w - 4}" y="{Y(limit) - 4:.1f}" font-size="10" text-anchor="end" '
                     f'fill="#d62728">policy limit rel_l2 {limit:g}</text>')
    if first_divergent_step is not None:
        x = X(first_divergent_step)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad_t}" y2="{pad_t + h}" stroke="#d62728" '
                     f'stroke-width="0.8"/>')
    kinds = list(series) + [k for k in stock if k not in series]
    color = {k: _COLORS[n % len(_COLORS)] for n, k in enumerate(kinds)}

    def path(cls: str, kind: str, pts, style: str, what: str) -> None:
        d = " ".join(f"{'M' if i == 0 else 'L'}{X(s):.1f},{Y(v):.1f}" for i, (s, v) in enumerate(pts))
        parts.append(f'<path class="{cls}" data-kind="{e(kind)}" d="{d}" fill="none" stroke="{color[kind]}" '
                     f'{style}/>')
        for s, v in pts:
            parts.append(f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="{2 if cls == "stock" else 3}" '
                         f'fill="{color[kind]}"><title>{what}step.{s}.{e(kind)}: {v:.3e}</title></circle>')
    for kind, pts in stock.items():
        path("stock", kind, pts, 'stroke-width="1.5" stroke-dasharray="2 3" opacity="0.75"', "stock FastVideo ")
    for kind, pts in series.items():
        path("kind", kind, pts, 'stroke-width="2"', "")
    ly = pad_t + 10
    for kind in kinds:
        parts.append(f'<line x1="{pad_l + w + 12}" x2="{pad_l + w + 30}" y1="{ly}" y2="{ly}" stroke="{color[kind]}" '
                     f'stroke-width="2"/><text x="{pad_l + w + 34}" y="{ly + 4}" font-size="10">'
                     f'{e(KIND_LABELS.get(kind, kind))}</text>')
        ly += 16
    if stock:
        parts.append(f'<line x1="{pad_l + w + 12}" x2="{pad_l + w + 30}" y1="{ly + 6}" y2="{ly + 6}" stroke="#555" '
                     f'stroke-width="1.5" stroke-dasharray="2 3"/><text x="{pad_l + w + 34}" y="{ly + 10}" '
                     f'font-size="10">dotted: stock FastVideo (not judged)</text>')
    parts.append("</svg>")
    return "".join(parts)


def step_curves(report: dict, metric: str = "rel_l2") -> list[tuple[dict, str]]:
    """Per case with loop step rows: (its ``pictures`` entry, the SVG text)."""
    cases = []
    for r in report.get("layers", []):
        if _STEP.match(r.get("name") or "") and r.get("case") not in cases:
            cases.append(r.get("case"))
    limit = (report.get("policy") or {}).get("limits", {}).get(metric)
    firsts = {c.get("case"): c.get("first_divergent") for c in report.get("cases", [])}
    out = []
    for case in cases:
        series = step_series(report, case, metric)
        if not series:
            continue
        m = _STEP.match(firsts.get(case) or "")
        what = "relative L2" if metric == "rel_l2" else metric
        title = f"{case}: {what} per step" if case else f"{what} per step"
        stock = stock_series(report, case) if metric == "rel_l2" else {}
        svg = curve_svg(title, series, limit=limit, first_divergent_step=int(m.group(1)) if m else None,
                        stock=stock)
        entry = {"kind": "steps", "case": case, "file": f"pictures/{slug(case)}.steps.svg", "metric": metric,
                 "rows": list(series), "limit": limit, "stock": bool(stock)}
        out.append((entry, svg))
    return out
