"""The fixes for users, working as documented: docs/fixes.md's "Running FastVideo yourself"
scripts, taken from the page and run as written (the CPU script here, the VideoGenerator one
on a GPU), and parity.fastvideo_run's set-up checked on its own."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parity_support import GOLDEN, ROOT, cli, needs_native

SECTION = "## Running FastVideo yourself"


def _section_blocks(lang: str) -> list[str]:
    text = (ROOT / "docs" / "fixes.md").read_text()
    assert SECTION in text, "docs/fixes.md lost its section on running FastVideo yourself"
    section = text[text.index(SECTION):]
    nxt = section.find("\n## ", 3)
    section = section if nxt < 0 else section[:nxt]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A working folder as a user's: golden/ there and the page's shell lines run in it."""
    d = tmp_path_factory.mktemp("user")
    (d / "golden").symlink_to(GOLDEN)
    for block in _section_blocks("sh"):
        for line in block.splitlines():
            argv = line.split()
            assert argv[0] == "longcat-convert", line
            cwd = os.getcwd()
            os.chdir(d)
            try:
                assert cli(*argv[1:]) == 0, line
            finally:
                os.chdir(cwd)
    return d


def _run_as_written(code: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_section_has_the_scripts_it_promises():
    py = _section_blocks("python")
    assert len(py) == 2 and "fastvideo_run(" in py[0] and "VideoGenerator.from_pretrained" in py[1]
    assert "fixes.installed" in py[0] and "fixes.install_in_workers" in py[1]


@needs_native
@pytest.mark.slow
def test_the_docs_cpu_script_runs_as_written(scratch):
    """From the converted folder to frames on a CPU: the page's script in a fresh interpreter,
    unchanged. It prints the frames' shape and how much the fixes changed them, and writes the
    first frame as a PNG."""
    p = _run_as_written(_section_blocks("python")[0], scratch)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    m = re.search(r"frames \((\d+), (\d+), (\d+), (\d+), (\d+)\) largest change by the fixes ([0-9.e-]+)", p.stdout)
    assert m, p.stdout
    assert tuple(int(x) for x in m.groups()[:5]) == (1, 3, 9, 32, 48)
    assert float(m.group(6)) > 1e-3                 # the fixes change the frames (the schedule alone does)
    from PIL import Image
    img = Image.open(scratch / "first_frame.png")
    assert img.size == (48, 32) and len(set(img.getdata())) > 10          # a picture, not a flat fill


@needs_native
def test_fastvideo_args_are_set_for_the_device_and_refuse_what_is_not_a_folder(tmp_path):
    from longcat_convert.errors import BadInput
    from parity.fastvideo_run import fastvideo_args, generator_kwargs
    with pytest.raises(BadInput, match="no model_index.json"):
        fastvideo_args(tmp_path)
    with pytest.raises(BadInput, match="VideoGenerator needs CUDA"):
        generator_kwargs("cpu")
    with pytest.raises(BadInput, match="--dtype 'fp64'"):
        fastvideo_args(GOLDEN / "tiny-bundle", dtype="fp64")
    out = tmp_path / "bundle"
    assert cli("convert", GOLDEN / "tiny-bundle", out, "--quiet", "--no-fsync") == 0
    args = fastvideo_args(out, device="cpu", dtype="bf16", vae_tiling=False)
    pc = args.pipeline_config
    assert (pc.dit_precision, pc.vae_precision, tuple(pc.text_encoder_precisions)) == ("bf16", "bf16", ("bf16",))
    assert not (args.dit_cpu_offload or args.text_encoder_cpu_offload or args.vae_cpu_offload or args.pin_cpu_memory)
    assert pc.vae_tiling is False and type(pc).__name__.startswith("LongCat")
    import torch.distributed as dist
    assert dist.is_initialized()                    # FastVideo's one-process environment, no MASTER_ADDR
    import fastvideo.models.loader.component_loader as loader
    if not torch.cuda.is_available():                 # 0.2.1 answers "mps" here on a CPU platform
        assert str(loader.get_local_torch_device()) == "cpu"


@needs_native
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: VideoGenerator spawns a GPU worker")
def test_the_docs_video_generator_example_runs_on_a_gpu(scratch):
    p = _run_as_written(_section_blocks("python")[1], scratch)
    assert p.returncode == 0, p.stderr[-3000:]
    m = re.search(r"frames (\d+)", p.stdout)
    assert m and int(m.group(1)) == 9, p.stdout
