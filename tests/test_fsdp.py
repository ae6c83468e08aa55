"""FastVideo as its users run it, on a CPU (parity/fsdp.py): use_fsdp_inference over 2 gloo
processes, text_encoder_cpu_offload and FastVideo's defaults in one process, each with the one
named adjustment (parity/native.py fsdp_mesh_on_cpu); the FSDP precision finding stock and
fixed (fixes/fsdp_precision.py); and what happens to the ranks when one raises, hangs or the
parent is stopped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from parity_support import GOLDEN, ROOT, cli, needs_native
from test_parity_sp import alive, descendants

pytestmark = needs_native

BUNDLE = GOLDEN / "tiny-bundle"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "bundle"
    assert cli("convert", BUNDLE, out, "--quiet", "--no-fsync") == 0
    from parity.components import pipeline_root
    return pipeline_root(out)


@pytest.fixture(scope="module")
def meta():
    from parity.fsdp import matrix_meta
    return matrix_meta()


@pytest.fixture(scope="module")
def plain(root, meta):
    """One process, no FSDP, float32: the baseline the FSDP rows are judged against."""
    from parity.fsdp import run_single
    run = run_single(root, meta, kwargs={}, dtype=torch.float32)
    assert run.error is None and run.rows
    return run


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        return ""


def _leads_its_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


@pytest.fixture
def no_leftovers():
    """Every process the test made is gone (the resource tracker FastVideo's import starts is
    this process's own, not a rank)."""
    before = descendants()
    yield
    time.sleep(0.2)
    left = {p for p in descendants() - before if alive(p) and "resource_tracker" not in _cmdline(p)}
    assert not left, f"processes left behind: {sorted(left)}"


def _judge(rows, base):
    from parity.fsdp import judge_rows
    from parity.policy import Policy
    return judge_rows(rows, base, policy=Policy.load(None), dtype=torch.float32, device="cpu")


# ----------------------------------------------------------------------------- the adjustment

def test_the_mesh_adjustment_holds_for_its_scope_only():
    from parity import native as nat
    nat.ensure_runtime("cpu")
    import fastvideo.models.loader.component_loader as cl
    import fastvideo.models.loader.fsdp_load as fl
    before = (fl.init_device_mesh, cl.init_device_mesh)
    with nat.fsdp_mesh_on_cpu("cpu") as on:
        assert on and fl.init_device_mesh is not before[0] and cl.init_device_mesh is not before[1]
        assert fl.init_device_mesh.lcc_adjustment == nat.FSDP_MESH_ON_CPU
        mesh = fl.init_device_mesh("cuda", mesh_shape=(1,), mesh_dim_names=("shard",))
        assert mesh.device_type == "cpu" and tuple(mesh.shape) == (1,)
    assert (fl.init_device_mesh, cl.init_device_mesh) == before
    with pytest.raises(KeyError):
        with nat.fsdp_mesh_on_cpu("cpu"):
            raise KeyError("inside")
    assert (fl.init_device_mesh, cl.init_device_mesh) == before
    with nat.fsdp_mesh_on_cpu("cuda") as on:            # FastVideo's own mesh is right on CUDA
        assert on is False and (fl.init_device_mesh, cl.init_device_mesh) == before


# ----------------------------------------------------------------------------- one process

def test_text_encoder_offload_needs_the_adjustment_and_then_matches_the_plain_run(root, meta, plain):
    from parity.features import run_fastvideo
    from parity.fsdp import run_single
    stock = run_fastvideo(root, meta, kwargs={"text_encoder_cpu_offload": True}, dtype=torch.float32)
    assert stock.error is not None and stock.error["phase"] == "build"
    assert "fsdp_load.py" in stock.error["where"]                      # FastVideo's "cuda" mesh
    run = run_single(root, meta, kwargs={"text_encoder_cpu_offload": True}, dtype=torch.float32)
    assert run.error is None, run.error
    te = run.built["fsdp"]["text_encoder"]
    assert te["fsdp_modules"] > 0 and te["mesh_device_type"] == "cpu" and te["offload_policy"] == "CPUOffloadPolicy"
    assert te["param_dtype"] is None                                   # no mixed precision: float32 kept
    assert "transformer" not in run.built["fsdp"]
    assert run.built_extra == {"run_time_adjustment": "fsdp-mesh-on-cpu"}
    assert _judge(run.rows, plain.rows)["verdict"] in ("exact", "within_tolerance")


def test_fastvideo_defaults_are_read_from_fastvideo_and_run_in_one_process(root, meta, plain):
    import dataclasses
    from fastvideo.fastvideo_args import FastVideoArgs
    from parity.fsdp import OFFLOAD_FLAGS, fastvideo_defaults, run_single
    defaults = fastvideo_defaults(root)
    declared = {f.name: f.default for f in dataclasses.fields(FastVideoArgs)}
    assert set(defaults) == set(OFFLOAD_FLAGS) and defaults == {k: declared[k] for k in OFFLOAD_FLAGS}
    run = run_single(root, meta, kwargs=defaults, dtype=torch.float32)
    assert run.error is None, run.error
    # FastVideo's own CPU behaviour, logged: layerwise offload off without CUDA
    assert any("Layerwise offloading is disabled" in w for w in run.warnings)
    assert run.built["fsdp"]["text_encoder"]["mesh_device_type"] == "cpu"
    assert _judge(run.rows, plain.rows)["verdict"] in ("exact", "within_tolerance")


# ----------------------------------------------------------------------------- FSDP over 2 ranks

def test_stock_fsdp_computes_in_bf16_where_fp32_was_asked(root, meta, no_leftovers):
    from parity.fsdp import findings, first_error, run_fsdp
    res = run_fsdp(root, meta, world_size=2, dtype=torch.float32, timeout=300)
    assert res.fault is not None and res.fault["kind"] == "raised"
    err = first_error(res)
    assert err["type"] == "RuntimeError" and "bias type (c10::BFloat16)" in err["message"]
    assert err["where"].startswith("fastvideo/models/dits/longcat.py")
    rank = next(r for r in res.ranks if r.get("fsdp"))
    w = rank["fsdp"]["transformer"]
    assert w["param_dtype"] == "bfloat16" and w["reduce_dtype"] == "float32"
    assert w["mesh_shape"] == [1, 2] and w["mesh_device_type"] == "cpu" and w["fsdp_modules"] >= 2
    assert rank["fastvideo_args"]["hsdp_replicate_dim"] == 1 and rank["fastvideo_args"]["hsdp_shard_dim"] == 2
    assert findings(res, torch.float32)["fsdp_computes_in_bf16"] is True
    assert res.as_run().error == err


def test_fixed_fsdp_keeps_float32_and_every_rank_matches_one_process(root, meta, plain, no_leftovers):
    import fixes
    from parity.fsdp import findings, run_fsdp
    with fixes.installed("fsdp-bf16-params"):
        res = run_fsdp(root, meta, world_size=2, dtype=torch.float32, timeout=300)
    assert res.ok, res.fault
    for r in res.ranks:
        w = r["fsdp"]["transformer"]
        assert w["param_dtype"] == "float32" and w["local_share_of_sharded_params"] == 0.5
        block = r["weights_in_fsdp_blocks"]["FSDPLongCatTransformerBlock"]
        assert block["between_calls"]["local_elements"] * 2 == block["between_calls"]["elements"]
        assert block["while_computing"]["dtypes"] == {"float32": block["between_calls"]["elements"]}
        assert r["wall_s"] > 0 and r["peak_mib"] > 0
        assert _judge(r["rows"], plain.rows)["verdict"] in ("exact", "within_tolerance")
    assert findings(res, torch.float32)["fsdp_computes_in_bf16"] is False


def test_spawned_ranks_run_the_fsdp_work_with_the_run_fixes(root, meta, plain, no_leftovers):
    """``start="spawn"`` (what CUDA always uses): each rank a fresh ``python -m parity.sp_worker``
    that installs the run's fixes itself."""
    import fixes
    from parity.fsdp import run_fsdp
    with fixes.installed("fsdp-bf16-params"):
        res = run_fsdp(root, meta, world_size=2, dtype=torch.float32, timeout=300, start="spawn")
    assert res.start == "spawn" and res.ok, res.fault
    assert {r["fsdp"]["transformer"]["param_dtype"] for r in res.ranks} == {"float32"}
    assert len({r["pid"] for r in res.ranks}) == 2
    assert _judge(res.ranks[1]["rows"], plain.rows)["verdict"] in ("exact", "within_tolerance")


# ----------------------------------------------------------------------------- faults

# The faults are planted in the first FSDP-wrapped block, which the fixed run reaches (stock stops
# before it on a CPU, above).

def test_a_rank_that_raises_ends_every_rank(root, meta, monkeypatch, no_leftovers):
    import fixes
    from parity.fsdp import run_fsdp
    monkeypatch.setenv("LCC_FSDP_TEST_FAULT", "raise:1")
    t0 = time.monotonic()
    with fixes.installed("fsdp-bf16-params"):
        res = run_fsdp(root, meta, world_size=2, dtype=torch.float32, timeout=300)
    assert time.monotonic() - t0 < 90
    assert res.fault["kind"] == "raised" and res.fault["rank"] == 1
    assert "planted fault on rank 1" in res.fault["message"]
    assert not any(r["ok"] for r in res.ranks)


def test_a_hanging_rank_is_killed_at_the_timeout(root, meta, monkeypatch, no_leftovers):
    import fixes
    from parity.fsdp import run_fsdp
    monkeypatch.setenv("LCC_FSDP_TEST_FAULT", "hang:0")
    t0 = time.monotonic()
    with fixes.installed("fsdp-bf16-params"):
        res = run_fsdp(root, meta, world_size=2, dtype=torch.float32, timeout=20)
    assert 20 <= time.monotonic() - t0 < 90
    assert res.fault["kind"] == "timeout" and sorted(res.fault["ranks"]) == [0, 1]
    assert all("did not finish within 20 s" in r["launcher_error"]["message"] for r in res.ranks)


def _command(root, report, *extra, env=None):
    env = dict(os.environ, **(env or {}),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "parity.fsdp", str(root), "--report", str(report),
                             "--fixes", "fsdp-bf16-params", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_stopping_the_command_stops_every_rank_and_writes_no_report(root, tmp_path):
    report = tmp_path / "fsdp.json"
    p = _command(root, report, env={"LCC_FSDP_TEST_FAULT": "hang:1"})
    try:
        deadline, ranks = time.monotonic() + 120, set()
        while time.monotonic() < deadline and len(ranks) < 2:
            ranks = {c for c in descendants(p.pid) if _leads_its_group(c)} if p.poll() is None else set()
            time.sleep(0.1)
        assert len(ranks) == 2, "the ranks never started"
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
        err = p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 130, err
    time.sleep(0.2)
    assert not [r for r in ranks if alive(r)]
    assert not list(tmp_path.iterdir())                     # no report, not even a partial one


def test_the_command_exits_1_when_a_rank_raises_and_writes_the_whole_outcome(root, tmp_path, no_leftovers):
    report = tmp_path / "fsdp.json"
    p = _command(root, report, env={"LCC_FSDP_TEST_FAULT": "raise:0"})
    rc = p.wait(timeout=300)
    assert rc == 1, p.stderr.read().decode()[-2000:]
    out = json.loads(report.read_text())
    assert out["fault"]["kind"] == "raised" and out["fault"]["rank"] == 0 and len(out["ranks"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["fsdp.json"]


def test_bad_settings_are_one_line_errors_before_any_rank_starts(root, meta, no_leftovers):
    from longcat_convert.errors import BadInput
    from parity.fsdp import run_fsdp
    for kw, text in (({"world_size": 1}, "at least 2 processes"), ({"timeout": 0}, "positive number of seconds"),
                     ({"start": "thread"}, "one of auto, fork, spawn")):
        with pytest.raises(BadInput, match=text) as e:
            run_fsdp(root, meta, **{"world_size": 2, **kw})
        assert "\n" not in str(e.value)

