"""The fix layer (fixes/): each fix closes its known difference, alone and together,
installs on FastVideo's real classes for a scope and leaves them as they were."""
import json

import pytest

from parity_support import GOLDEN, TINY_A, cli, needs_native, read_report

T2V = GOLDEN / "tiny-a/cases/traj_t2v_cfg.safetensors"
NOCACHE = GOLDEN / "extra/tiny-a/cases/traj_vc_nocache.safetensors"


def _run(converted, tmp_path, *args):
    rc = cli("parity", TINY_A, converted["tiny-a"], "--mode", "sampling", *args, "--report", tmp_path, "--quiet")
    return rc, read_report(tmp_path)


@needs_native
def test_each_fix_moves_the_first_divergence_past_its_finding(converted, tmp_path):
    # Stock: the schedule. The schedule fixed: the stages' bf16 input. Both fixed: every row passes.
    rc, rep = _run(converted, tmp_path / "stock", "--case", T2V)
    assert rc == 1 and rep["cases"][0]["known_difference"] == "schedule-reshift"
    rc, rep = _run(converted, tmp_path / "one", "--case", T2V, "--fixes", "schedule-reshift")
    assert rc == 1 and rep["first_divergent"] == "step.0.dit_in"
    assert rep["cases"][0]["known_difference"] == "bf16-dit-input"
    assert [f["name"] for f in rep["fixes"]] == ["schedule-reshift"] and "with fixes" in rep["title"]
    rc, rep = _run(converted, tmp_path / "both", "--case", T2V, "--fixes", "schedule-reshift,bf16-dit-input")
    assert rc == 0 and rep["passed"] and all(r["passed"] for r in rep["layers"])


@needs_native
def test_the_kv_cache_flag_fix_turns_the_cache_off(converted, tmp_path):
    rc, rep = _run(converted, tmp_path / "stock", "--case", NOCACHE, "--sigmas", "original")
    assert rc == 1 and rep["cases"][0]["known_difference"] == "kv-cache-flag-unread"
    rc, rep = _run(converted, tmp_path / "fixed", "--case", NOCACHE, "--sigmas", "original", "--fixes",
                   "kv-cache-flag-unread,bf16-dit-input")
    assert rc == 0 and not any(r["name"].startswith("kv_cache.") for r in rep["layers"])


@needs_native
def test_fixes_are_scoped_and_fastvideo_is_left_as_it_was():
    import fixes
    from parity import native as nat
    nat.ensure_runtime("cpu")
    import fastvideo.pipelines.stages.longcat_denoising as ld
    import fastvideo.pipelines.stages.longcat_kv_cache_init as kv
    import fastvideo.pipelines.stages.timestep_preparation as tp
    before = (ld.LongCatDenoisingStage.forward, ld.torch, kv.LongCatKVCacheInitStage.forward,
              tp.TimestepPreparationStage.forward)
    with fixes.installed("all") as names:
        assert names == list(fixes.FIXES) and fixes.active() == names
        assert ld.LongCatDenoisingStage.forward is not before[0] and ld.torch is not before[1]
        assert ld.torch.float32 is before[1].float32                     # torch, but for bfloat16
        with fixes.installed("bf16-dit-input"):                         # already installed: left alone
            pass
        assert fixes.active() == names
    assert (ld.LongCatDenoisingStage.forward, ld.torch, kv.LongCatKVCacheInitStage.forward,
            tp.TimestepPreparationStage.forward) == before
    assert fixes.active() == []


def test_a_bad_fix_name_is_bad_input_before_any_model_work(converted, capsys):
    assert cli("parity", TINY_A, converted["tiny-a"], "--fixes", "schedule,nope") == 2
    err = capsys.readouterr().err
    assert "--fixes schedule" in err and "schedule-reshift" in err


def test_every_fix_names_a_catalogue_finding_that_points_back_at_it():
    import fixes
    from parity.known import Catalogue
    cat = Catalogue.load()
    for name, fix in fixes.FIXES.items():
        entry = cat.get(fix.finding)
        assert entry is not None and name == fix.finding and f"--fixes {name}" in entry["fix"]


@needs_native
def test_fixes_install_in_a_fresh_worker_through_fastvideos_rpc_call():
    """VideoGenerator's workers are spawned processes reached by collective_rpc, which pickles
    the callable and runs it through fastvideo.utils.run_method with the worker object. The same
    here in a fresh interpreter: the callable survives pickling and installs the fixes there."""
    import subprocess
    import sys
    code = (
        "import pickle\n"
        "from parity import native as nat\n"
        "nat.ensure_runtime('cpu')\n"
        "import fixes, fixes.workers as w\n"
        "from fastvideo.utils import run_method\n"
        "import fastvideo.pipelines.stages.timestep_preparation as tp\n"
        "before = tp.TimestepPreparationStage.forward\n"
        "fn = pickle.loads(pickle.dumps(w.install_here))\n"
        "print(run_method(object(), fn, ('all',), {}))\n"
        "print(tp.TimestepPreparationStage.forward is not before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    import fixes
    assert lines[-2] == str(list(fixes.FIXES)) and lines[-1] == "True"
