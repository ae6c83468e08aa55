"""Pictures in the reports: decoded frames side by side with their difference, as a
grid and as an animated clip, and each sampling loop's error per step (rendered by
parity/render.py). Images are drawn and encoded with Pillow; the MP4 goes through
imageio's ffmpeg plugin where it is installed; plots are parity/plots.py's.

- ``frames_picture``: one PNG grid per case; a row per decoded frame (at most
  ``MAX_FRAMES``, evenly spaced), the columns ``original | FastVideo | |difference|``,
  and with the fixes a second pair, ``FastVideo stock | |difference| | FastVideo fixed |
  |difference|``. Frames are the pipeline's output video, ``[B, C, F, H, W]`` with values
  in [0, 1] (the original's ``to_frames``, FastVideo's ``DecodingStage``); the first batch
  entry is drawn. The difference is ``max over channels |FastVideo - original|``
  multiplied by one amplification for the whole picture (a 1-2-5 number chosen so the
  bulk of the differences shows: their 99th percentile at most white), on a
  black-red-yellow-white scale: black is 0, white is 1/amplification or more. The
  column headers name each column, the PSNR (dB), the largest difference and the scale.
- ``frames_clip``: the same frames played in time (every frame up to
  ``MAX_CLIP_FRAMES``): the top row ``original | each FastVideo run``, below each run
  its difference on the grid's scale; an animated GIF, and an MP4 where imageio's
  ffmpeg plugin is installed (``mp4_writer`` says why not otherwise).
- ``step_curves``: per case of a report whose rows hold a denoising loop, an SVG with
  one curve per row kind (``step.<i>.dit_in``, ``dit_out``, ``noise_pred``, ``latents``,
  ...): relative L2 against the step index on a log axis, the policy's ``rel_l2``
  limit dashed, exact zeros on a floor marked ``0``.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import math
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import plots
from .metrics import psnr
from .rows import STEP_FIELDS

MAX_FRAMES = 9          # rows of a frames picture
MAX_CLIP_FRAMES = 96    # frames of a clip (evenly spaced beyond)
CLIP_FPS = 8
CELL_HEIGHT = 128       # frames are magnified (nearest neighbour) to about this height
MAX_CELL_WIDTH = 320    # and sub-sampled above this width
GAP, GROUP_GAP, MARGIN = 4, 14, 8
TEXT_SIZE = 13          # pixels
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


# --------------------------------------------------------------------- images

def encode(image, fmt: str = "PNG") -> bytes:
    """The bytes of a uint8 image ([H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA, or a PIL
    image) in ``fmt``, written by Pillow."""
    if not isinstance(image, Image.Image):
        a = np.asarray(image)
        if a.dtype != np.uint8:
            raise ValueError(f"image: uint8 expected, got {a.dtype}")
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
            raise ValueError(f"image: [H, W], [H, W, 3] or [H, W, 4] expected, got {list(a.shape)}")
        image = Image.fromarray(np.ascontiguousarray(a))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def png(image) -> bytes:
    """PNG bytes of a uint8 image (see ``encode``)."""
    return encode(image, "PNG")


@functools.lru_cache(maxsize=None)
def font(size: int = TEXT_SIZE) -> ImageFont.ImageFont:
    """Pillow's own scalable font (its bitmap font where Pillow has no FreeType)."""
    return ImageFont.load_default(size=size)


def text_width(text: str, size: int = TEXT_SIZE) -> int:
    return math.ceil(font(size).getlength(text))


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


def number(x: float) -> str:
    if not math.isfinite(x):
        return "inf" if x > 0 else "nan"
    return f"{x:.3g}"


class Frames:
    """The frames of one case ready to draw: the original's and each run's (float64
    [F, H, W, C] of the frames picked), one difference scale for all, and cells
    magnified or sub-sampled to a readable size."""

    def __init__(self, original, runs: list[tuple[str, object]], limit: int):
        self.count = frame_count(original)
        self.index = pick_frames(self.count, limit)
        self.ref = video_array(original, self.index)
        self.runs = []
        for label, video in runs:
            if tuple(video.shape) != tuple(original.shape):
                raise ValueError(f"frames of {label}: shape {list(video.shape)}, original {list(original.shape)}")
            self.runs.append((label, video_array(video, self.index)))
        _, self.H, self.W, _ = self.ref.shape
        self.maxes = [float(np.abs(v - self.ref).max()) for _, v in self.runs]
        # Scaled so the bulk of the largest difference shows: its 99th percentile (of the
        # per-pixel channel maximum) at most white; the few pixels above it saturate.
        p99 = max((float(np.percentile(np.abs(v - self.ref).max(axis=3), 99)) for _, v in self.runs), default=0.0)
        self.amp = amplification(p99 if p99 > 0 else max(self.maxes, default=0.0))
        self.stride = max(1, math.ceil(self.W / MAX_CELL_WIDTH))
        h, w = -(-self.H // self.stride), -(-self.W // self.stride)
        self.zoom = max(1, min(8, CELL_HEIGHT // h, MAX_CELL_WIDTH // w))
        self.cell_size = (h * self.zoom, w * self.zoom)

    def cell(self, img: np.ndarray) -> np.ndarray:
        img = img[::self.stride, ::self.stride]
        return np.repeat(np.repeat(img, self.zoom, axis=0), self.zoom, axis=1)

    def picture(self, video: np.ndarray, k: int) -> np.ndarray:
        return self.cell(to_rgb8(video[k]))

    def diff(self, video: np.ndarray, k: int) -> np.ndarray:
        return self.cell(difference(video[k], self.ref[k], self.amp))

    def run_info(self) -> list[dict]:
        out = []
        for (label, v), mx in zip(self.runs, self.maxes):
            p = psnr(v, self.ref)
            out.append({"label": label, "psnr_db": p if math.isfinite(p) else str(p), "max_abs": mx})
        return out

    def scale_line(self) -> str:
        return f"x{number(self.amp)}: white >= {number(1 / self.amp)}"


def _canvas(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (width, height), BACKGROUND)
    return img, ImageDraw.Draw(img)


def _column_width(cell_w: int, lines: list[str]) -> int:
    return max([cell_w] + [text_width(t) for t in lines])


def frames_picture(case: str, original, runs: list[tuple[str, object]], *, limit: int = MAX_FRAMES
                   ) -> tuple[dict, bytes]:
    """The frames grid of one case -> (its ``pictures`` entry, PNG bytes). ``runs``: the
    FastVideo sides to show, (label, video) each, every one beside its difference with the
    original; one amplification for all of them, so a fix shows as a darker column. PSNR,
    largest difference and amplification are over the frames shown (every frame up to
    ``limit``)."""
    fr = Frames(original, runs, limit)
    info = fr.run_info()
    columns = [(["original", "", ""], [fr.picture(fr.ref, k) for k in range(len(fr.index))])]
    for (label, v), r in zip(fr.runs, info):
        columns.append(([label, f"PSNR {number(float(r['psnr_db']))} dB", ""],
                        [fr.picture(v, k) for k in range(len(fr.index))]))
        columns.append(([f"|{label} - original|", f"max {number(r['max_abs'])}", fr.scale_line()],
                        [fr.diff(v, k) for k in range(len(fr.index))]))
    image = _grid(columns, [f"frame {f}" for f in fr.index], fr.cell_size)
    entry = {"kind": "frames", "case": case, "file": f"pictures/{slug(case)}.frames.png",
             "columns": ["original"] + [c for label, _ in fr.runs for c in (label, f"|{label} - original|")],
             "headers": [[t for t in lines if t] for lines, _ in columns],
             "frames": fr.index, "frame_count": fr.count, "frame_size": [fr.H, fr.W], "amplification": fr.amp,
             "white": 1.0 / fr.amp, "runs": info, "size": [image.height, image.width]}
    return entry, png(image)


def _grid(columns: list[tuple[list[str], list[np.ndarray]]], row_labels: list[str],
          cell_size: tuple[int, int]) -> Image.Image:
    """Cells in rows (frames) and columns, a three-line header above each column, a label
    left of each row; a wider gap before each FastVideo pair."""
    ch, cw = cell_size
    line_h = TEXT_SIZE + 5
    label_w = max(text_width(t) for t in row_labels) + 2 * GAP
    widths = [_column_width(cw, lines) for lines, _ in columns]
    header_h = 3 * line_h + GAP
    gaps = [0] + [GROUP_GAP if k % 2 == 1 else GAP for k in range(1, len(columns))]
    width = MARGIN + label_w + sum(gaps) + sum(widths) + MARGIN
    height = MARGIN + header_h + len(row_labels) * (ch + GAP) - GAP + MARGIN
    img, draw = _canvas(width, height)
    x = MARGIN + label_w
    for k, (lines, cells) in enumerate(columns):
        x += gaps[k]
        for j, line in enumerate(lines):
            draw.text((x, MARGIN + j * line_h), line, fill=INK, font=font())
        y = MARGIN + header_h
        for c in cells:
            img.paste(Image.fromarray(c), (x, y))
            y += ch + GAP
        x += widths[k]
    y = MARGIN + header_h
    for t in row_labels:
        draw.text((MARGIN, y + (ch - TEXT_SIZE) // 2), t, fill=INK, font=font())
        y += ch + GAP
    return img


# --------------------------------------------------------------------- the clip

def mp4_writer() -> tuple[bool, str]:
    """(whether an MP4 can be written here, why not)."""
    if importlib.util.find_spec("imageio") is None:
        return False, "MP4 not written: imageio is not installed"
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        return False, "MP4 not written: imageio's ffmpeg plugin (the imageio-ffmpeg package) is not installed"
    try:
        import imageio_ffmpeg
        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:                           # no ffmpeg binary for this platform
        return False, f"MP4 not written: imageio's ffmpeg plugin has no ffmpeg here ({exc})"
    return True, ""


def _mp4(frames: list[Image.Image], fps: int) -> bytes:
    import imageio.v2 as imageio
    w, h = frames[0].size
    W, H = -(-w // 16) * 16, -(-h // 16) * 16           # H.264 wants whole macro blocks: pad, never scale
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                pixelformat="yuv420p", macro_block_size=1) as writer:
            for f in frames:
                padded = Image.new("RGB", (W, H), BACKGROUND)
                padded.paste(f, (0, 0))
                writer.append_data(np.asarray(padded))
        return path.read_bytes()


def frames_clip(case: str, original, runs: list[tuple[str, object]], *, limit: int = MAX_CLIP_FRAMES,
                fps: int = CLIP_FPS) -> tuple[dict, dict[str, bytes]]:
    """The frames played in time -> (its ``pictures`` entry, {file: bytes}): an animated GIF
    (``file``) and, where imageio's ffmpeg plugin is installed, an MP4 (``mp4``; else
    ``mp4_note`` says why not). Each clip frame: ``original | each run`` on top, each
    run's difference below it, on one scale for the whole clip."""
    fr = Frames(original, runs, limit)
    ch, cw = fr.cell_size
    line_h = TEXT_SIZE + 5
    top_lines = [["original", ""]] + [[label, f"PSNR {number(float(r['psnr_db']))} dB"]
                                      for (label, _), r in zip(fr.runs, fr.run_info())]
    bottom_lines = [[f"|{label} - original|", fr.scale_line()] for label, _ in fr.runs]
    widths = [_column_width(cw, a + b) for a, b in zip(top_lines, [[""]] + bottom_lines)]
    header_h = 2 * line_h
    width = 2 * MARGIN + sum(widths) + GAP * (len(widths) - 1)
    height = 2 * MARGIN + 2 * (header_h + ch) + GROUP_GAP
    frames = []
    for k, f in enumerate(fr.index):
        img, draw = _canvas(width, height)
        x = MARGIN
        for col, (lines, w) in enumerate(zip(top_lines, widths)):
            for j, line in enumerate(lines):
                draw.text((x, MARGIN + j * line_h), line, fill=INK, font=font())
            video = fr.ref if col == 0 else fr.runs[col - 1][1]
            img.paste(Image.fromarray(fr.picture(video, k)), (x, MARGIN + header_h))
            y = MARGIN + header_h + ch + GROUP_GAP
            if col == 0:
                draw.text((x, y), f"frame {f} of {fr.count}", fill=INK, font=font())
            else:
                for j, line in enumerate(bottom_lines[col - 1]):
                    draw.text((x, y + j * line_h), line, fill=INK, font=font())
                img.paste(Image.fromarray(fr.diff(video, k)), (x, y + header_h))
            x += w + GAP
        frames.append(img)
    base = f"pictures/{slug(case)}.clip"
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0,
                   disposal=1)
    files = {f"{base}.gif": buf.getvalue()}
    ok, why = mp4_writer()
    entry = {"kind": "clip", "case": case, "file": f"{base}.gif", "mp4": f"{base}.mp4" if ok else None,
             "columns": ["original"] + [label for label, _ in fr.runs],
             "differences": [f"|{label} - original|" for label, _ in fr.runs],
             "frames": fr.index, "frame_count": fr.count, "fps": fps, "frame_size": [fr.H, fr.W],
             "amplification": fr.amp, "white": 1.0 / fr.amp, "size": [height, width]}
    if ok:
        files[f"{base}.mp4"] = _mp4(frames, fps)
    else:
        entry["mp4_note"] = why
    return entry, files


def slug(case: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", case or "case").strip("_") or "case"


# --------------------------------------------------------------------- the loop's error per step

_STEP = re.compile(r"^step\.(\d+)\.(\w+)$")
KIND_LABELS = {"timestep": "timestep", "dit_in": "DiT input", "dit_out": "DiT output",
               "noise_pred": "noise prediction (the step's input)", "latents": "latents after the step"}


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
    lines = [plots.Series(kind, list(pts), cls="kind", label=KIND_LABELS.get(kind, kind),
                          tips=[f"step.{s}.{kind}: {v:.3e}" for s, v in pts]) for kind, pts in series.items()]
    lines += [plots.Series(kind, list(pts), cls="stock", label=KIND_LABELS.get(kind, kind), dotted=True,
                           tips=[f"stock FastVideo step.{s}.{kind}: {v:.3e}" for s, v in pts])
              for kind, pts in stock.items()]
    steps = sorted({s for group in (series, stock) for pts in group.values() for s, _ in pts})
    return plots.svg_plot(title, lines, x=plots.Axis("step", [(s, str(s)) for s in steps]),
                          y_title="relative L2 (log)", limit=limit if limit and limit > 0 else None,
                          limit_label=f"policy limit rel_l2 {limit:g}" if limit else "",
                          marker=first_divergent_step,
                          legend_note="dotted: stock FastVideo (not judged)" if stock else "",
                          width=width, height=height)


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
