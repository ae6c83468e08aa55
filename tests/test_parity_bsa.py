"""Parity with block-sparse attention: our reference's BSA against FastVideo's REAL BSA
code path (its enable_bsa(), per-block self_attn.bsa_params and vendored Triton kernel,
run by Triton's interpreter on the CPU, which the tool switches on itself), on golden
cases and generated inputs; and the places where FastVideo's native model does not use
BSA while the original does, each named at its first divergent layer."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from parity_support import GOLDEN, ROOT, TINY_A, cli, needs_native, policy_limit, read_report

pytestmark = [needs_native, pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="these run FastVideo's BSA kernel on the CPU through Triton's interpreter, which a process on a "
           "CUDA machine does not switch on; use --device cuda there")]

EXTRA = GOLDEN / "extra" / "tiny-a" / "cases"
# Latent 4x32x32 -> a 4x16x16 token grid: 16 chunks of [4,4,4] (0.9375 keeps 1), 8 of [4,4,8] (0.875 keeps 1).
BIG = ("--shape", "4,32,32", "--text-len", "6")


def parity(converted, tmp_path, *args):
    rc = cli("parity", TINY_A, converted["tiny-a"], *args, "--report", tmp_path, "--quiet")
    return rc, read_report(tmp_path)


def rows(rep, case=None):
    return {r["name"]: r for r in rep["layers"] if case is None or r["case"] == case}


SWITCH = """
import os
import parity.native as nat
assert "TRITON_INTERPRET" not in os.environ, "importing parity.native set it"
nat.prepare_process("cpu")
import triton.language as tl
from reference import triton_cpu
print(os.environ["TRITON_INTERPRET"], triton_cpu.is_interpreted(tl.zeros))
"""


def test_the_tool_switched_triton_to_its_interpreter():
    """Nobody sets TRITON_INTERPRET for the user: a run's start does (``prepare_process``, which
    the commands and this test session call), not the import of a module."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", SWITCH], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["1", "True"], out.stderr[-2000:]
    from reference import triton_cpu
    assert os.environ.get("TRITON_INTERPRET") == "1"               # this session, set by tests/conftest.py
    import triton.language as tl
    assert triton_cpu.is_interpreted(tl.zeros)


@pytest.mark.parametrize("case", [GOLDEN / "tiny-a/cases/bsa_t2v", EXTRA / "bsa_cdf_topk", EXTRA / "bsa_qk_chunks",
                                  EXTRA / "bsa_kv_prefill"])
def test_bsa_golden_cases_pass_at_float32(converted, tmp_path, case):
    rc, rep = parity(converted, tmp_path, "--case", case.with_suffix(".safetensors"))
    assert rc == 0 and rep["passed"], rep["first_divergent"]
    assert max(r["rel_l2"] for r in rep["layers"]) <= policy_limit()
    assert any("FastVideo's own path" in n and "Triton's interpreter" in n for n in rep["notes"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bsa_b2", "bsa_cdf", "bsa_lora"])
def test_more_bsa_golden_cases_pass_in_layer_mode(converted, tmp_path, name):
    rc, rep = parity(converted, tmp_path, "--case", EXTRA / f"{name}.safetensors", "--mode", "layer")
    assert rc == 0 and rep["passed"], rep["first_divergent"]


def test_bsa_really_runs_on_the_native_side(converted, monkeypatch):
    """A planted fault: BSA left off on the native side alone must break parity at the
    first self-attention, so the passing runs above compare two sparse attentions."""
    from parity import native as nat
    from parity.cases import load_dit
    from parity.modes import forward_parity
    from parity.setup import Setup

    real = nat.set_bsa
    monkeypatch.setattr(nat, "set_bsa", lambda model, params, device=None: real(model, None, device))
    rep = forward_parity(Setup(source=TINY_A, converted=converted["tiny-a"]),
                         [load_dit(GOLDEN / "tiny-a/cases/bsa_t2v.safetensors")])
    assert rep["first_divergent"] == "blocks.0.attn" and rows(rep)["blocks.0.attn"]["rel_l2"] > 0.1


@pytest.mark.parametrize("label,sparsity,chunk", [
    ("released dit/config.json", "0.9375", "4,4,4"),
    ("FastVideo refinement settings", "0.875", "4,4,8"),
])
def test_generated_inputs_with_the_refinement_settings(converted, tmp_path, label, sparsity, chunk):
    rc, rep = parity(converted, tmp_path, *BIG, "--bsa-sparsity", sparsity, "--bsa-chunk-q", chunk,
                     "--bsa-chunk-k", chunk)
    assert rc == 0 and rep["passed"], (label, rep["first_divergent"])
    want = {"sparsity": float(sparsity), "cdf_threshold": None, "chunk_3d_shape_q": [int(c) for c in chunk.split(",")],
            "chunk_3d_shape_k": [int(c) for c in chunk.split(",")]}
    assert any(str(want) in n for n in rep["notes"])


def test_generated_cdf_only_and_mixed_chunks(converted, tmp_path):
    rc, rep = parity(converted, tmp_path, "--shape", "2,8,16", "--text-len", "6", "--batch", "2",
                     "--bsa-sparsity", "none", "--bsa-cdf", "0.6", "--bsa-chunk-q", "1,2,8", "--bsa-chunk-k", "2,2,4")
    assert rc == 0 and rep["passed"], rep["first_divergent"]


# ---- known differences: FastVideo's native model skips BSA where the original uses it ----------

def test_known_difference_condition_split_is_dense_natively(converted, tmp_path):
    """The original makes both halves of the i2v condition split block-sparse; FastVideo's
    native model computes the split with dense attention."""
    rc, rep = parity(converted, tmp_path, "--case", EXTRA / "bsa_i2v.safetensors")
    assert rc == 1 and rep["first_divergent"] == "blocks.0.attn"
    r = rows(rep)
    assert r["blocks.0.attn"]["rel_l2"] > 0.1 and r["output"]["rel_l2"] > 1e-2
    assert all(r[n]["passed"] for n in ("x_embedder", "t_embedder", "y_embedder"))
    assert any("condition split" in n for n in rep["notes"])


def test_known_difference_kv_cache_continuation_is_dense_natively(converted, tmp_path):
    """The original's KV-cache continuation attends block-sparsely (queries on the new
    frames, keys on cache + new); FastVideo's forward_with_kv_cache uses dense SDPA."""
    rc, rep = parity(converted, tmp_path, "--case", EXTRA / "bsa_kv_continue.safetensors")
    assert rc == 1 and rep["first_divergent"] == "blocks.0.attn"
    assert rows(rep)["blocks.0.attn"]["rel_l2"] > 0.1
    assert any("forward_with_kv_cache" in n for n in rep["notes"])


@pytest.mark.slow
def test_known_difference_generated_continuation(converted, tmp_path):
    """--kv-cache-frames with BSA: the prefill (plain BSA on both sides, caches too)
    passes; the continuation diverges at the first self-attention."""
    rc, rep = parity(converted, tmp_path, "--shape", "4,8,16", "--text-len", "6", "--kv-cache-frames", "2",
                     "--bsa-sparsity", "0.5", "--bsa-chunk-q", "1,2,8", "--bsa-chunk-k", "1,2,8")
    assert rc == 1 and rep["first_divergent"] == "blocks.0.attn"
    assert all(r["passed"] for r in rows(rep, "generated:cache").values())
    assert not rows(rep, "generated:continue")["blocks.0.attn"]["passed"]


def test_single_frame_forward_stays_dense_on_both_sides(converted, tmp_path):
    """T = 1 (an image): neither side uses BSA, so the kernel shape rules do not apply."""
    rc, rep = parity(converted, tmp_path, "--shape", "1,4,6", "--bsa-sparsity", "0.5", "--bsa-chunk-q", "1,2,2",
                     "--bsa-chunk-k", "1,2,2")
    # dense on both sides: within the policy (two implementations; BSA on either side would miss it by > 0.1)
    assert rc == 0 and rep["passed"] and max(r["rel_l2"] for r in rep["layers"]) <= policy_limit()


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (("--case", EXTRA / "bsa_b2.safetensors", "--bsa-sparsity", "0.5"), "--bsa-* flags are for generated inputs"),
    (("--bsa-sparsity", "lots"), "--bsa-sparsity 'lots'"),
    (("--bsa-chunk-q", "4,4"), "bsa_params.chunk_3d_shape_q"),
    (("--bsa-chunk-q", "4,x,4"), "--bsa-chunk-q '4,x,4'"),
    (("--bsa-chunk-k", "3,2,2"), "covers 12 tokens"),
    (("--bsa-sparsity", "1.5"), "bsa_params.sparsity is 1.5"),
    (("--shape", "2,8,12", "--bsa-sparsity", "0.5", "--bsa-chunk-q", "1,2,4", "--bsa-chunk-k", "1,2,4"),
     "token grid (T, H, W) = (2, 4, 6) is not divisible by bsa_params.chunk_3d_shape_q [1, 2, 4]"),
])
def test_bad_bsa_input_exits_2_with_one_line(converted, tmp_path, capsys, args, needle):
    rc = cli("parity", TINY_A, converted["tiny-a"], *args, "--quiet")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err, err


def test_a_kernel_built_for_the_gpu_is_refused_on_the_cpu():
    from longcat_convert.errors import BadInput
    from reference import triton_cpu

    def compiled_kernel():       # stands for a kernel triton.jit built without the interpreter
        pass
    with pytest.raises(BadInput, match="fresh process"):
        triton_cpu.check(compiled_kernel, "FastVideo's block-sparse attention", "cpu")


@pytest.mark.slow
def test_cli_in_a_fresh_process_without_the_variable(converted, tmp_path):
    """What a user runs: no TRITON_INTERPRET in the environment, BSA through the CLI."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "longcat_convert.cli", "parity", str(TINY_A), str(converted["tiny-a"]),
                          "--case", str(EXTRA / "bsa_qk_chunks.safetensors"), "--report", str(tmp_path), "--quiet"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "report.json").read_text())["passed"]


def test_golden_check_applies_each_cases_bsa(tmp_path):
    """golden-check honours a case's enable_bsa/bsa_params: every BSA case passes, and the
    same case judged with BSA forced off (the model dense) misses the upstream data."""
    cases = [GOLDEN / "tiny-a/cases/bsa_t2v.safetensors", *sorted(EXTRA.glob("bsa_*.safetensors"))]
    assert cli("golden-check", TINY_A, *cases, "--report", tmp_path / "on", "--quiet") == 0
    from parity.golden_check import OursSubject, golden_check
    from reference import load_reference

    class Dense(OursSubject):
        def set_bsa(self, params):
            super().set_bsa(None)
    rep = golden_check(TINY_A, cases[:1], subject=Dense(load_reference(TINY_A)))
    assert not rep["passed"] and rep["first_divergent"] == "blocks.0.attn"


def test_blocks_mode_applies_the_cases_bsa(converted, tmp_path):
    rc, rep = parity(converted, tmp_path / "t2v", "--mode", "blocks", "--case", GOLDEN / "tiny-a/cases/bsa_t2v.safetensors")
    assert rc == 0 and any("block-sparse attention on both sides" in n for n in rep["notes"])
    rc, rep = parity(converted, tmp_path / "i2v", "--mode", "blocks", "--case", EXTRA / "bsa_i2v.safetensors")
    assert rc == 1 and rep["first_divergent"] == "blocks.0.attn"


def test_low_precision_bsa_on_the_cpu_is_refused(converted, capsys):
    """Triton's interpreter computes the bf16 BSA kernel wrongly (the original's as well as
    FastVideo's): such a run would measure the interpreter, so it is a one-line exit 2."""
    rc = cli("parity", TINY_A, converted["tiny-a"], *BIG, "--bsa-sparsity", "0.875", "--bsa-chunk-q", "4,4,8",
             "--bsa-chunk-k", "4,4,8", "--dtype", "bf16")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Triton's interpreter" in err and len(err.splitlines()) == 1
