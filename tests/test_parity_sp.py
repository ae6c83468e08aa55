"""Sequence-parallel parity (``parity --sp N``): FastVideo's real sequence parallelism
(its DistributedAttention over torch.distributed gloo) in 2 CPU processes against the
reference, the work each rank does, and what happens to the processes when a rank
fails, hangs, or the parent is stopped."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from parity_support import ROOT, TINY_A, cli, needs_native, policy_limit, read_report

pytestmark = needs_native

CASES = TINY_A / "cases"


def _procs() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process on the machine."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                rest = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d)] = (int(rest[1]), rest[0])
    return out


def descendants(pid: int | None = None) -> set[int]:
    """Every live or zombie descendant of ``pid`` (default: this process)."""
    procs, found, todo = _procs(), set(), [pid or os.getpid()]
    while todo:
        p = todo.pop()
        for c, (pp, _) in procs.items():
            if pp == p and c not in found:
                found.add(c)
                todo.append(c)
    return found


def _leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def alive(pid: int) -> bool:
    st = _procs().get(pid)
    return st is not None and st[1] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def no_leftovers():
    """The test must leave no process behind: every descendant it made is gone (and reaped);
    the multiprocessing resource tracker this process starts once (importing FastVideo
    does) is this process's own, not a rank."""
    before = descendants()
    yield
    left = {p for p in descendants() - before if "multiprocessing.resource_tracker" not in _cmdline(p)}
    assert not left, f"processes left behind: {sorted(left)}: {[_cmdline(p)[:80] for p in left]}"


def sp(converted, tmp_path, *args, n=2):
    rc = cli("parity", TINY_A, converted["tiny-a"], *args, "--sp", n, "--report", tmp_path, "--quiet")
    return rc, read_report(tmp_path)


def test_t2v_every_rank_matches_and_the_whole_sequence_finding(converted, tmp_path, no_leftovers):
    rc, rep = sp(converted, tmp_path, "--case", CASES / "t2v.safetensors")
    assert rc == 0 and rep["passed"]
    assert [c["case"] for c in rep["cases"]] == ["t2v:1proc", "t2v:rank0", "t2v:rank1"]
    by_case = {}
    for r in rep["layers"]:
        by_case.setdefault(r["case"], []).append(r)
    names = [r["name"] for r in by_case["t2v:1proc"]]
    assert len(names) == 3 + 4 * 3 + 2 and names[-1] == "output"
    # every run within the policy (FastVideo's model against the reference: two implementations, so
    # not bit equality, even in one process); the ranks' softmax runs over every key twice (see below)
    lim = policy_limit()
    for case in ("t2v:1proc", "t2v:rank0", "t2v:rank1"):
        assert [r["name"] for r in by_case[case]] == names
        assert max(r["rel_l2"] for r in by_case[case]) <= lim
    s = rep["sp"]
    assert s["world_size"] == 2 and s["backend"] == "gloo" and s["start"] == "fork"
    assert s["threads"] == {"baseline": s["cores"], "rank": max(1, s["cores"] // 2)}
    base = s["baseline"]["attention"]["self_attn.distributed"]
    assert base["tokens_in"] == [18] and base["q_len"] == [18] and base["heads"] == [2]
    for r in s["ranks"]:
        d = r["attention"]["self_attn.distributed"]
        # the whole 18-token sequence goes in on every rank; the all-to-all hands back 36
        # tokens (each twice) with one of the two heads
        assert d["tokens_in"] == [18] and d["q_len"] == [36] and d["k_len"] == [36] and d["heads"] == [1]
        assert r["attention"]["cross_attn"]["q_len"] == [18] and r["attention"]["cross_attn"]["heads"] == [2]
        assert r["forward_ms"] > 0 and r["peak_memory_mib"] > 0
    assert s["attention_work_ratio_by_kind"] == {"cross_attn": 1.0, "self_attn.distributed": 2.0}
    assert s["attention_work_ratio"] == pytest.approx(1.6)
    assert s["every_rank_whole_sequence"] is True and s["speedup"] > 0
    assert "does not shard the sequence" in s["finding"] and s["finding"] in rep["notes"]
    md = (tmp_path / "report.md").read_text()
    assert "Sequence parallelism: 2 ranks" in md and "| rank 1 |" in md
    assert "Sequence parallelism" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("args, kinds", [
    (["--case", CASES / "i2v.safetensors", "--mode", "layer"],
     {"self_attn.distributed": 2.0, "self_attn.sdpa": 1.0, "cross_attn": 1.0}),
    (["--shape", "3,4,6", "--kv-cache-frames", "1"],
     {"self_attn.distributed": 2.0, "self_attn.kv_cache": 1.0, "cross_attn": 1.0}),
    (["--case", CASES / "t2v_lora.safetensors"], {"self_attn.distributed": 2.0, "cross_attn": 1.0}),
], ids=["i2v-layer", "kv-continuation", "lora"])
def test_every_path_matches_under_sp(converted, tmp_path, args, kinds):
    """i2v's split attention (condition half through DistributedAttention, noise half plain
    SDPA), the K/V-cache continuation (plain SDPA in forward_with_kv_cache), a LoRA."""
    rc, rep = sp(converted, tmp_path, *args)
    assert rc == 0, rep["first_divergent"]
    assert all(c["passed"] for c in rep["cases"]) and len(rep["cases"]) % 3 == 0
    assert rep["sp"]["attention_work_ratio_by_kind"] == kinds
    assert rep["sp"]["every_rank_whole_sequence"] is True


def test_block_sparse_attention_under_sp_crashes_in_the_first_self_attention(converted, tmp_path, no_leftovers):
    """FastVideo divides H and W of the latent shape by cp_split_hw for its BSA kernel, while
    each rank's q/k/v hold the whole sequence: the kernel's own shape check fails."""
    rc, rep = sp(converted, tmp_path, "--case", CASES / "bsa_t2v.safetensors")
    assert rc == 1 and rep["first_divergent"] == "blocks.0.attn"
    cases = {c["case"]: c for c in rep["cases"]}
    assert cases["bsa_t2v:1proc"]["passed"]
    for r in (0, 1):
        row = next(x for x in rep["layers"] if x["case"] == f"bsa_t2v:rank{r}")
        assert row["name"] == "blocks.0.attn" and row["native_name"] == "blocks.0.self_attn"
        assert "AssertionError" in row["failures"][0] and "Tq * Hq * Wq == Sq" in row["failures"][0]
        seen = rep["sp"]["ranks"][r]["attention_before_failure"]["self_attn.bsa"]
        assert seen["q_len"] == [128] and seen["latent_shape_q"] == [[4, 4, 4]]    # 64 tokens' worth
    assert rep["sp"]["baseline"]["attention"]["self_attn.bsa"]["latent_shape_q"] == [[4, 4, 8]]
    assert rep["sp"]["speedup"] is None and rep["sp"]["every_rank_whole_sequence"] is None
    assert any("cp_split_hw (1x2 at SP 2)" in n for n in rep["notes"])


def test_a_rank_that_raises_is_a_failing_row_and_no_process_stays(converted, tmp_path, monkeypatch, no_leftovers):
    monkeypatch.setenv("LCC_SP_TEST_FAULT", "raise:1")
    t0 = time.monotonic()
    rc, rep = sp(converted, tmp_path, "--case", CASES / "t2v.safetensors")
    assert rc == 1 and time.monotonic() - t0 < 60
    assert rep["first_divergent"] == "blocks.0.cross_attn"
    # the rank that failed first comes first (rank 0 then fails too: its peer is gone)
    assert [c["case"] for c in rep["cases"]] == ["t2v:1proc", "t2v:rank1", "t2v:rank0"]
    row = next(r for r in rep["layers"] if r["case"] == "t2v:rank1")
    assert row["name"] == "blocks.0.cross_attn" and not row["passed"]
    assert row["failures"][0].startswith("rank1 raised RuntimeError: planted fault on rank 1")
    assert rep["sp"]["ranks"][1]["ok"] is False and rep["sp"]["speedup"] is None


def test_a_hanging_rank_is_killed_at_the_timeout(converted, tmp_path, monkeypatch, no_leftovers):
    monkeypatch.setenv("LCC_SP_TEST_FAULT", "hang:0")
    t0 = time.monotonic()
    rc, rep = sp(converted, tmp_path, "--case", CASES / "t2v.safetensors", "--sp-timeout", "3")
    took = time.monotonic() - t0
    assert rc == 1 and 3 <= took < 30
    fails = [r for r in rep["layers"] if not r["passed"]]
    assert {r["case"] for r in fails} == {"t2v:rank0", "t2v:rank1"}
    assert all("did not finish within 3 s" in r["failures"][0] for r in fails)
    # Said as a timeout, not as a numerical divergence or an unexplained difference.
    assert {t["case"] for t in rep["timeouts"]} == {"t2v:rank0", "t2v:rank1"}
    assert rep["unexplained"] == [] and not rep["known_differences"]


def test_stopping_the_parent_stops_every_rank(converted, tmp_path):
    """SIGTERM to `longcat-convert parity --sp 2` (a separate process, its ranks
    hanging): it exits, and every rank it started is gone."""
    env = dict(os.environ, LCC_SP_TEST_FAULT="hang:1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-m", "longcat_convert.cli", "parity", str(TINY_A),
                          str(converted["tiny-a"]), "--case", str(CASES / "t2v.safetensors"), "--sp", "2",
                          "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, ranks = time.monotonic() + 60, set()
        while time.monotonic() < deadline and len(ranks) < 2:
            # the ranks: children of the launcher, each leading its own process group
            ranks = {c for c in descendants(p.pid) if _leader(c)} if p.poll() is None else set()
            time.sleep(0.1)
        assert len(ranks) == 2, "the ranks never started"
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=20)
        err = p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 130, err          # interrupted, the way a Ctrl-C ends a command
    time.sleep(0.2)
    assert not [r for r in ranks if alive(r)]


def test_bad_sp_settings_are_one_line_errors(converted, tmp_path):
    from convert_support import run
    for args, text in ((["--sp", "1"], "at least 2"), (["--sp", "2", "--mode", "blocks"], "e2e, layer or sampling"),
                       (["--sp", "4"], "2 attention heads"), (["--sp", "2", "--sp-timeout", "0"], "positive")):
        rc, _, err = run("parity", TINY_A, converted["tiny-a"], "--case", CASES / "t2v.safetensors", *args)
        assert rc == 2 and text in err and len(err.strip().splitlines()) == 1, err


def test_spawned_ranks_run_the_worker_module(converted, tmp_path, no_leftovers):
    """`--sp-start spawn` (what CUDA always uses): each rank is `python -m parity.sp_worker`."""
    rc, rep = sp(converted, tmp_path, "--case", CASES / "i2v.safetensors", "--sp-start", "spawn")
    assert rc == 0 and rep["sp"]["start"] == "spawn" and len(rep["cases"]) == 3
    assert rep["sp"]["attention_work_ratio_by_kind"]["self_attn.distributed"] == 2.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: SP over NCCL needs GPUs")
def test_sp2_over_nccl(converted, tmp_path):
    n = torch.cuda.device_count()
    if n < 2:
        from convert_support import run
        rc, _, err = run("parity", TINY_A, converted["tiny-a"], "--case", CASES / "t2v.safetensors",
                         "--device", "cuda", "--sp", "2")
        assert rc == 2 and "NCCL needs 2 GPUs" in err
        pytest.skip(f"NCCL needs 2 GPUs, one per rank; this machine has {n} (the refusal above is tested)")
    rc, rep = sp(converted, tmp_path, "--case", CASES / "t2v.safetensors", "--device", "cuda")
    assert rc == 0 and rep["sp"]["backend"] == "nccl" and rep["sp"]["start"] == "spawn"
    assert rep["sp"]["ranks"][0]["memory_kind"] == "cuda max_memory_allocated"


def test_gate_checks_the_recorded_sp_expectations(tmp_path):
    """A manifest's expect_sp must hold in the report's sp section: the measured one passes,
    a stale one (as if FastVideo had started sharding the sequence) fails the step."""
    import shutil
    import xml.etree.ElementTree as ET
    g = tmp_path / "golden"
    shutil.copytree(TINY_A, g / "tiny-a")
    measured = {"every_rank_whole_sequence": True, "attention_work_ratio": 1.6,
                "attention_work_ratio_by_kind": {"self_attn.distributed": 2.0, "cross_attn": 1.0}}
    stale = {"every_rank_whole_sequence": False, "attention_work_ratio": 0.8}
    case = {"case": "tiny-a/cases/t2v", "parity": [
        {"mode": "e2e", "args": ["--sp", "2"], "tag": "sp-measured", "expect_sp": measured},
        {"mode": "e2e", "args": ["--sp", "2"], "tag": "sp-stale", "expect_sp": stale}]}
    (g / "gate.json").write_text(json.dumps({"models": [{"model": "tiny-a", "cases": [case]}]}))
    assert cli("gate", "--golden", g, "--report", tmp_path / "rep") == 1
    ok = {tc.get("name"): tc.find("failure") is None for tc in ET.parse(tmp_path / "rep/junit.xml").getroot().iter("testcase")}
    assert ok["parity sp-measured t2v"] and not ok["parity sp-stale t2v"]
    summary = (tmp_path / "rep/summary.md").read_text()
    assert "SP expectations differ: every_rank_whole_sequence True (expected False), attention_work_ratio 1.6" in summary


def test_ctrl_c_in_the_parent_stops_every_rank(converted, tmp_path, monkeypatch, no_leftovers):
    """Ctrl-C (SIGINT to this process, while its ranks hang): the command ends as interrupted
    (exit 130) within moments, and no rank is left."""
    import threading
    monkeypatch.setenv("LCC_SP_TEST_FAULT", "hang:1")
    seen: set[int] = set()

    def interrupt_once_ranks_run():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ranks = {c for c in descendants() if _leader(c)}
            if len(ranks) >= 2:
                seen.update(ranks)
                time.sleep(0.3)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)
    t = threading.Thread(target=interrupt_once_ranks_run)
    t.start()
    t0 = time.monotonic()
    rc = cli("parity", TINY_A, converted["tiny-a"], "--case", CASES / "t2v.safetensors", "--sp", "2", "--quiet")
    t.join()
    assert rc == 130 and len(seen) >= 2 and time.monotonic() - t0 < 60
    assert not [r for r in seen if alive(r)]


def _by_case(rep: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rep["layers"]:
        out.setdefault(r["case"], []).append(r)
    return out


def test_sampling_under_sp_every_rank_diverges_where_one_process_does(converted, tmp_path, no_leftovers):
    """--mode sampling --sp 2: FastVideo's LongCat stages drive each rank's native model
    through the whole loop; every rank's first divergent row is one process's
    (FastVideo's bfloat16 input cast), the rows before it within the policy."""
    rc, rep = sp(converted, tmp_path, "--mode", "sampling", "--case", CASES / "traj_t2v_cfg.safetensors",
                 "--sigmas", "original")
    assert rc == 1 and rep["mode"] == "sampling" and rep["first_divergent"] == "step.0.dit_in"
    runs = ["traj_t2v_cfg:1proc", "traj_t2v_cfg:rank0", "traj_t2v_cfg:rank1"]
    assert [c["case"] for c in rep["cases"]] == runs
    assert all(c["first_divergent"] == "step.0.dit_in" for c in rep["cases"])
    rows = _by_case(rep)
    names = [r["name"] for r in rows[runs[0]]]
    assert names[:4] == ["timesteps", "sigmas", "step.0.timestep", "step.0.dit_in"] and names[-1] == "output.latents"
    for run in runs:
        assert [r["name"] for r in rows[run]] == names
        assert all(r["passed"] and r["rel_l2"] <= policy_limit() for r in rows[run][:3])
        first = rows[run][3]
        assert not first["passed"] and first["rel_l2"] == pytest.approx(0.001662, rel=0.02)
    s = rep["sp"]
    assert s["world_size"] == 2 and s["every_rank_whole_sequence"] is True
    assert s["attention_work_ratio_by_kind"] == {"cross_attn": 1.0, "self_attn.distributed": 2.0}
    assert s["baseline"]["attention_calls"] == s["ranks"][0]["attention_calls"] > 0
    assert all(r["forward_ms"] > 0 for r in s["ranks"]) and s["speedup"] > 0
    assert "does not shard the sequence" in s["finding"] and s["finding"] in rep["notes"]


def test_sampling_under_sp_a_rank_that_raises_is_a_failing_row(converted, tmp_path, monkeypatch, no_leftovers):
    monkeypatch.setenv("LCC_SP_TEST_FAULT", "raise:1")
    rc, rep = sp(converted, tmp_path, "--mode", "sampling", "--case", CASES / "traj_t2v_cfg.safetensors",
                 "--sigmas", "original")
    assert rc == 1
    row = next(r for r in rep["layers"] if r["case"] == "traj_t2v_cfg:rank1")
    assert not row["passed"] and row["failures"][0].startswith("rank1 raised RuntimeError: planted fault on rank 1")
    assert rep["sp"]["ranks"][1]["ok"] is False and rep["sp"]["speedup"] is None

