"""Pictures in the reports (parity/pictures.py, drawn by parity/render.py): images through
Pillow, the frames grid (original | FastVideo | |difference|) with readable headers, the
animated clip (GIF; MP4 where imageio's ffmpeg plugin is installed), the error-per-step
curves (parity/plots.py), the files a report folder gets, and the HTML report as a
browser shows it (headless chromium)."""
from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from parity import pictures, render
from parity import report as R
from parity.policy import Policy
from parity_support import GOLDEN, cli, needs_native, read_report

SVG = "{http://www.w3.org/2000/svg}"


def decode_png(data: bytes) -> np.ndarray:
    """A PNG the report wrote, read back by Pillow -> [H, W, C] uint8."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        a = np.asarray(im)
    return a if a.ndim == 3 else a[:, :, None]


def decode_gif(data: bytes) -> list[np.ndarray]:
    """Every frame of an animated GIF, as RGB [H, W, 3] uint8."""
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "GIF" and im.info.get("loop") == 0
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]


@pytest.mark.parametrize("shape", [(5, 7), (6, 4, 3), (3, 9, 4), (1, 1, 3)])
def test_png_decodes_back_to_the_same_pixels(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    back = decode_png(pictures.png(img))
    assert back.shape == (shape if len(shape) == 3 else shape + (1,))
    assert np.array_equal(back.reshape(img.shape), img)


def test_png_refuses_what_it_cannot_write():
    with pytest.raises(ValueError):
        pictures.png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        pictures.png(np.zeros((4, 4, 2), np.uint8))


def test_no_encoder_or_font_of_our_own():
    """Pictures go through Pillow: no PNG chunk writer, no glyph table in the module."""
    source = (Path(pictures.__file__)).read_text()
    assert "zlib" not in source and "struct" not in source and "IHDR" not in source
    assert "GLYPH" not in source.upper() and "from PIL import" in source


def test_the_difference_of_identical_frames_is_all_zero():
    f = np.random.default_rng(1).random((8, 12, 3))
    assert not pictures.difference(f, f.copy(), 1e6).any()
    g = f.copy()                       # a difference of 1/amplification or more is white
    g[..., 1] += 0.25
    assert (pictures.difference(g, f, 4.0) == 255).all()


def test_amplification_is_a_1_2_5_number_keeping_the_difference_in_range():
    assert pictures.amplification(0.0) == 1.0 and pictures.amplification(float("nan")) == 1.0
    assert pictures.amplification(0.21) == 2.0
    assert pictures.amplification(0.1) == 10.0
    assert pictures.amplification(2.6e-6) == pytest.approx(2e5)
    assert pictures.amplification(3.0) == 1.0          # never attenuates


def test_frames_are_picked_evenly_with_first_and_last():
    assert pictures.pick_frames(5) == [0, 1, 2, 3, 4]
    p = pictures.pick_frames(93, 9)
    assert len(p) == 9 and p[0] == 0 and p[-1] == 92 and p == sorted(set(p))


def _video(value, F=3, H=8, W=12):
    v = np.empty((1, 3, F, H, W))
    v[0] = np.asarray(value, float)[:, None, None, None]
    return v


def _count(img, rgb, tol: int = 1) -> int:
    """Pixels of this colour (within ``tol`` per channel: the float rounding of the inputs)."""
    return int((np.abs(img.astype(int) - np.asarray(rgb)) <= tol).all(axis=2).sum())


def test_frames_picture_shows_each_run_beside_its_difference_on_one_scale():
    """original | stock | |stock - original| | fixed | |fixed - original|: the cells hold the
    frames' own pixels; one amplification (from the larger difference) for both
    difference columns, so the smaller difference is darker; identical frames are black."""
    ref = _video([0.2, 0.4, 0.6])
    stock = _video([0.2, 0.5, 0.6])           # differs by 0.1 in one channel
    half = _video([0.2, 0.45, 0.6])           # by 0.05
    entry, data = pictures.frames_picture("c", ref, [("FastVideo stock", stock), ("half", half),
                                                     ("FastVideo fixed", ref.copy())])
    img = decode_png(data)
    assert list(img.shape[:2]) == entry["size"] and img.shape[2] == 3
    assert entry["file"] == "pictures/c.frames.png" and entry["frames"] == [0, 1, 2]
    assert entry["columns"] == ["original", "FastVideo stock", "|FastVideo stock - original|", "half",
                                "|half - original|", "FastVideo fixed", "|FastVideo fixed - original|"]
    assert entry["amplification"] == 10.0 and entry["white"] == pytest.approx(0.1)
    zoom = min(8, pictures.CELL_HEIGHT // 8)      # magnified up to 8x
    area = 3 * (8 * zoom) * (12 * zoom)       # 3 frames per column
    assert _count(img, (51, 102, 153)) == 2 * area          # original and fixed show the same pixels
    assert _count(img, (51, 128, 153)) == area
    assert _count(img, (255, 255, 255)) >= area             # 0.1 x 10: white (the background is white too)
    assert _count(img, (255, 128, 0)) == area               # 0.05 x 10 = 0.5 on the heat scale
    assert _count(img, (0, 0, 0)) >= area                   # identical: black (text is black too)
    runs = {r["label"]: r for r in entry["runs"]}
    assert runs["FastVideo fixed"]["psnr_db"] == "inf" and runs["FastVideo fixed"]["max_abs"] == 0
    assert runs["FastVideo stock"]["psnr_db"] == pytest.approx(10 * math.log10(1 / (0.01 / 3)))
    with pytest.raises(ValueError):
        pictures.frames_picture("c", ref, [("x", _video([0, 0, 0], F=2))])


def test_large_videos_are_subsampled_and_limited_in_frames():
    ref = np.random.default_rng(2).random((1, 3, 20, 40, 700))
    entry, data = pictures.frames_picture("big", ref, [("FastVideo", ref)])
    img = decode_png(data)
    assert entry["frames"] == pictures.pick_frames(20) and len(entry["frames"]) == pictures.MAX_FRAMES
    assert img.shape[1] < 3 * 700 and entry["frame_count"] == 20


def test_the_headers_read_as_text_psnr_in_db():
    """Header lines are real text (Pillow's font, any case): the PSNR is in "dB", the
    difference column names its scale; they are drawn above the cells, readably large."""
    ref = _video([0.2, 0.4, 0.6])
    entry, data = pictures.frames_picture("c", ref, [("FastVideo", _video([0.2, 0.5, 0.6]))])
    p = 10 * math.log10(1 / (0.01 / 3))
    assert entry["headers"] == [["original"], ["FastVideo", f"PSNR {p:.3g} dB"],
                                ["|FastVideo - original|", "max 0.1", "x10: white >= 0.1"]]
    img = decode_png(data)
    top = pictures.MARGIN + 3 * (pictures.TEXT_SIZE + 5)
    ink_rows = np.nonzero((img[:top] < 128).all(axis=2).any(axis=1))[0]
    assert ink_rows.size and ink_rows.max() - ink_rows.min() >= 2 * pictures.TEXT_SIZE   # three lines of text
    assert pictures.text_width("PSNR 30.9 dB") > pictures.text_width("PSNR 30.9")


def _clip_runs():
    ref = np.random.default_rng(4).random((1, 3, 5, 8, 12)) * 0.5 + 0.25
    stock = ref.copy()
    stock[:, 1] += 0.1                        # a difference of 0.1 in one channel, every frame
    return ref, [("FastVideo stock", stock), ("FastVideo fixed", ref.copy())]


def test_the_clip_plays_every_frame_with_each_run_above_its_difference():
    ref, runs = _clip_runs()
    entry, files = pictures.frames_clip("c", ref, runs)
    assert entry["file"] == "pictures/c.clip.gif" and entry["kind"] == "clip"
    assert entry["columns"] == ["original", "FastVideo stock", "FastVideo fixed"]
    assert entry["frames"] == [0, 1, 2, 3, 4] and entry["frame_count"] == 5 and entry["amplification"] == 10.0
    frames = decode_gif(files[entry["file"]])
    assert len(frames) == 5 and all(list(f.shape[:2]) == entry["size"] for f in frames)
    zoom = min(8, pictures.CELL_HEIGHT // 8)
    area = (8 * zoom) * (12 * zoom)
    for k, f in enumerate(frames):
        # the original's first pixel shows in two cells (original and fixed), each magnified
        px = np.round(ref[0, :, k, 0, 0] * 255).astype(int)
        assert _count(f, px, tol=3) >= 2 * zoom * zoom
        assert _count(f, (255, 255, 255), tol=0) >= area          # 0.1 x 10: the stock difference is white
        assert _count(f, (0, 0, 0), tol=0) >= area                # the fixed run's difference is black
    assert not np.array_equal(frames[0], frames[1])              # it moves: each frame its own pixels
    if entry["mp4"] is None:
        assert set(files) == {entry["file"]} and "imageio" in entry["mp4_note"] and "not" in entry["mp4_note"]
    else:
        assert set(files) == {entry["file"], entry["mp4"]} and "mp4_note" not in entry


def test_the_clip_as_mp4_where_imageio_can_write_it():
    ok, why = pictures.mp4_writer()
    if not ok:
        pytest.skip(why)
    ref, runs = _clip_runs()
    entry, files = pictures.frames_clip("c", ref, runs)
    data = files[entry["mp4"]]
    assert data[4:8] == b"ftyp"                                  # an ISO media file
    import imageio.v3 as iio
    frames = iio.imread(data, extension=".mp4", index=None)
    assert len(frames) == len(entry["frames"]) and frames.shape[1] >= entry["size"][0]


# --------------------------------------------------------------------- curves

KINDS = ["dit_in", "dit_out", "noise_pred", "latents"]


def _loop_report(steps=3, cases=("c",), zero_kind="dit_in") -> dict:
    rep = R.new_report("parity", "t", mode="sampling", policy=Policy.load(), dtype="float32", device="cpu", env={})
    for case in cases:
        R.add_layer(rep, name="timesteps", metrics={"rel_l2": 0.0}, passed=True, case=case)
        for i in range(steps):
            for k, kind in enumerate(KINDS):
                v = 0.0 if kind == zero_kind and i == 0 else 10.0 ** (-7 + k) * (i + 1)
                R.add_layer(rep, name=f"step.{i}.{kind}", metrics={"rel_l2": v}, passed=v <= 1e-5, case=case)
        R.add_layer(rep, name="output.latents", metrics={"rel_l2": 1e-4}, passed=False, case=case)
    return R.finalize(rep)


def _paths(svg: str, cls: str = "kind") -> list:
    root = ET.fromstring(svg)
    return [p for p in root.iter(f"{SVG}path") if p.get("class") == cls]


def test_the_step_curves_have_one_path_per_row_kind_and_the_limit_dashed():
    rep = _loop_report(cases=("a", "b"))
    curves = pictures.step_curves(rep)
    assert [e["case"] for e, _ in curves] == ["a", "b"]
    entry, svg = curves[0]
    assert entry == {"kind": "steps", "case": "a", "file": "pictures/a.steps.svg", "metric": "rel_l2",
                     "rows": KINDS, "limit": 1e-5, "stock": False}
    paths = _paths(svg)
    assert [p.get("data-kind") for p in paths] == KINDS
    assert all(p.get("d").count("L") == 2 for p in paths)       # 3 steps: one move, two lines
    root = ET.fromstring(svg)
    dashed = [ln for ln in root.iter(f"{SVG}line") if ln.get("stroke-dasharray")]
    assert dashed and any("policy limit rel_l2 1e-05" in (t.text or "") for t in root.iter(f"{SVG}text"))
    assert any((t.text or "") == "0" for t in root.iter(f"{SVG}text"))   # the floor of exact zeros
    assert len(list(root.iter(f"{SVG}circle"))) == 3 * len(KINDS)


def test_reports_without_loop_rows_have_no_curves():
    rep = R.new_report("parity", "t", mode="e2e", policy=Policy.load(), dtype="float32", device="cpu", env={})
    R.add_layer(rep, name="blocks.0.attn", metrics={"rel_l2": 1e-7}, passed=True, case="c")
    assert pictures.step_curves(R.finalize(rep)) == []


def test_a_stock_run_is_drawn_dotted_beside_the_judged_one():
    rep = _loop_report()
    rep["frames"] = [{"case": "c", "stock": {"steps": {f"step.{i}.{k}": 0.01 * (i + 1) for i in range(3)
                                                      for k in KINDS}}}]
    entry, svg = pictures.step_curves(rep)[0]
    assert entry["stock"] is True
    assert len(_paths(svg)) == len(KINDS) and len(_paths(svg, "stock")) == len(KINDS)


# --------------------------------------------------------------------- report files

def test_the_report_folder_holds_every_picture_the_json_names(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    rep = _loop_report()
    ref = np.random.default_rng(3).random((1, 3, 2, 8, 8))
    entry, data = pictures.frames_picture("c", ref, [("FastVideo", ref * 0.9)])
    R.attach(rep, entry, data)
    paths = render.write_reports(rep, tmp_path / "r")
    out = tmp_path / "r"
    js = json.loads((out / "report.json").read_text())
    assert "attachments" not in js
    files = [p["file"] for p in js["pictures"]]
    assert files == ["pictures/c.frames.png", "pictures/c.steps.svg"]
    assert [p.name for p in paths[:3]] == ["report.json", "report.md", "report.html"]
    for f in files:
        assert (out / f).is_file() and (out / f) in paths
    assert (out / files[0]).read_bytes() == data
    assert decode_png(data).shape[:2] == tuple(js["pictures"][0]["size"])
    ET.fromstring((out / files[1]).read_text())                    # a well-formed SVG
    md = (out / "report.md").read_text()
    assert all(f"]({f})" in md for f in files)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and len(_paths(html[html.index("<svg xmlns"):].split("</svg>")[0]
                                                         + "</svg>")) == len(KINDS)
    assert "pictures/" not in summary.read_text().split("Pictures")[0] and "](pictures/" not in summary.read_text()


# --------------------------------------------------------------------- in a browser

PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const box = el => { const b = el.getBoundingClientRect(); return [Math.round(b.width), Math.round(b.height)]; };
  const out = {
    images: [...document.querySelectorAll("figure img")].map(i => ({
      kind: i.className, loaded: i.complete && i.naturalWidth > 0, natural: [i.naturalWidth, i.naturalHeight],
      box: box(i)})),
    videos: [...document.querySelectorAll("figure video")].map(v => ({ready: v.readyState, size: [v.videoWidth,
      v.videoHeight], box: box(v)})),
    plots: [...document.querySelectorAll("svg")].map(g => ({title: (g.querySelector("text") || {}).textContent,
      curves: g.querySelectorAll("path").length, box: box(g)})),
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 500));
</script>"""


def _chromium() -> str | None:
    import shutil
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _in_browser(page: Path, tmp_path: Path) -> dict:
    """What headless chromium shows of ``page``: every figure's image, video and plot,
    measured after the page loaded (the probe appended to a copy of the page)."""
    import html as html_mod
    import re
    import subprocess
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--window-size=1200,2000", "--dump-dom", probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert m, f"chromium showed no probe (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html_mod.unescape(m.group(1)))


def test_the_html_report_shows_the_grid_the_clip_and_the_plots_in_a_browser(tmp_path):
    """report.html opened in headless chromium, as a person would: the frames grid (PNG)
    and the clip (GIF, or the MP4 video where it was written) load and take room on the
    page, and every plot (error per step, error per row) is drawn with its curves."""
    if _chromium() is None:
        pytest.skip("no chromium here (apt-get install chromium): the report cannot be opened in a browser")
    rep = _loop_report()
    ref, runs = _clip_runs()
    R.attach(rep, *pictures.frames_picture("c", ref, runs))
    clip, files = pictures.frames_clip("c", ref, runs)
    R.attach(rep, clip, files)
    render.write_reports(rep, tmp_path / "r")
    seen = _in_browser(tmp_path / "r" / "report.html", tmp_path)
    images = {i["kind"]: i for i in seen["images"]}
    assert set(images) == {"frames", "clip"}, seen
    grid = json.loads((tmp_path / "r" / "report.json").read_text())["pictures"][0]
    assert images["frames"]["loaded"] and images["frames"]["natural"] == grid["size"][::-1]
    assert min(images["frames"]["box"]) > 50                      # on the page, not collapsed
    assert images["clip"]["loaded"] and images["clip"]["natural"] == clip["size"][::-1]
    if clip["mp4"]:             # the MP4 plays; its GIF is the fallback inside the video element
        (video,) = seen["videos"]
        assert video["ready"] >= 1 and min(video["box"]) > 50
        assert video["size"] == [clip["size"][1] + (-clip["size"][1]) % 16, clip["size"][0] + (-clip["size"][0]) % 16]
    else:
        assert seen["videos"] == [] and min(images["clip"]["box"]) > 50
    titles = [p["title"] for p in seen["plots"]]
    assert titles[0] == "c: relative L2 per step" and seen["plots"][0]["curves"] == len(KINDS)
    assert "rel_l2 per row, in run order (log scale)" in titles
    for p in seen["plots"]:
        assert p["curves"] >= 1 and p["box"][0] > 300 and p["box"][1] > 200, p


@pytest.mark.slow
@needs_native
def test_the_pipeline_report_shows_stock_and_fixed_frames(tmp_path):
    """--component pipeline --fixes: the fixed run is judged; stock FastVideo runs beside it
    for the frames picture (its difference visible, the fixed one's dark), a PSNR line and
    dotted curves; --no-stock-run leaves it out."""
    bundle = GOLDEN / "tiny-bundle"
    conv = tmp_path / "conv"
    assert cli("convert", bundle, conv, "--workload", "t2v", "--quiet", "--no-fsync") == 0
    rc = cli("parity", bundle, conv, "--component", "pipeline", "--case", bundle / "cases/pipeline_t2v.safetensors",
             "--fixes", "schedule-reshift,bf16-dit-input", "--report", tmp_path / "r", "--quiet")
    assert rc == 0
    rep = read_report(tmp_path / "r")
    frames = next(p for p in rep["pictures"] if p["kind"] == "frames")
    assert [r["label"] for r in frames["runs"]] == ["FastVideo stock", "FastVideo fixed"]
    stock, fixed = frames["runs"]
    assert stock["psnr_db"] < 40 < fixed["psnr_db"]                 # stock: 30.9 dB; fixed: 128 dB
    assert fixed["max_abs"] * frames["amplification"] < 1e-3        # one scale: the fixed difference is black
    st = rep["frames"][0]["stock"]
    assert st["psnr_db"] == pytest.approx(stock["psnr_db"], rel=1e-6) and st["seconds"] > 0
    assert st["steps"]["step.0.dit_in"] > 0
    img = decode_png((tmp_path / "r" / frames["file"]).read_bytes())
    assert list(img.shape[:2]) == frames["size"]
    curves = [p for p in rep["pictures"] if p["kind"] == "steps"]
    assert {c["case"] for c in curves} == {"pipeline_t2v", "pipeline_t2v:golden"}
    assert next(c for c in curves if c["case"] == "pipeline_t2v")["stock"] is True
    clip = next(p for p in rep["pictures"] if p["kind"] == "clip")
    assert clip["columns"] == ["original", "FastVideo stock", "FastVideo fixed"]
    assert len(decode_gif((tmp_path / "r" / clip["file"]).read_bytes())) == len(clip["frames"])
    assert f"]({clip['file']})" in (tmp_path / "r" / "report.md").read_text()
    for p in rep["pictures"]:
        assert (tmp_path / "r" / p["file"]).is_file()
    assert any("stock FastVideo" in n and "PSNR" in n for n in rep["notes"])
