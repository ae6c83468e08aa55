"""Numerics: the bfloat16 decision (float32 islands on every device), RoPE, attention backends.

Decision under test: the original computes the timestep MLP, adaLN modulations, gated
residuals and the final layer under autocast('cuda', float32). The reference computes
them in float32 on EVERY device (weights upcast), i.e. the original's GPU semantics,
so a bfloat16 model also runs on the CPU (where the original itself fails)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longcat_convert.errors import BadInput
from reference import load_reference
from reference.backends import get_backend
from reference.embedders import sinusoid
from reference.golden import load_case
from reference.numerics import linear_fp32
from reference.rope import Rope3D, axis_splits, grid_angles

from parity_support import policy_limit

ROOT = Path(__file__).resolve().parent.parent
A = ROOT / "golden/tiny-a"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def m16():
    return load_reference(A, dtype="bfloat16")


def test_bf16_on_cpu_runs_with_float32_islands(m16):
    case = load_case(A / "cases/t2v.safetensors")
    dtypes, seen_t = {}, []
    hooks = [m16.get_submodule(n).register_forward_hook(lambda mod, a, o, n=n: dtypes.__setitem__(n, o.dtype))
             for n in ("t_embedder", "blocks.0.adaLN_modulation.1", "blocks.0.attn", "blocks.0", "final_layer")]
    hooks.append(m16.t_embedder.register_forward_pre_hook(lambda mod, a: seen_t.append(a[0].clone())))
    ts = torch.tensor([937.5])
    out = m16(case.inputs["input.hidden_states"], ts, case.inputs["input.encoder_hidden_states"],
              case.inputs["input.encoder_attention_mask"])
    for h in hooks:
        h.remove()
    assert dtypes == {"t_embedder": torch.float32, "blocks.0.adaLN_modulation.1": torch.float32,
                      "blocks.0.attn": torch.bfloat16, "blocks.0": torch.bfloat16, "final_layer": torch.float32}
    assert out.dtype == torch.float32
    # the timestep is rounded to the model dtype first (937.5 -> 936 in bfloat16), then embedded in float32
    assert seen_t[0].tolist() == [936.0, 936.0, 936.0]


def test_bf16_timestep_mlp_is_float32_math_on_bf16_weights(m16):
    t = torch.tensor([0.0, 412.5, 999.0]).to(torch.bfloat16).float()
    l0, l2 = m16.t_embedder.mlp[0], m16.t_embedder.mlp[2]
    expect = F.linear(F.silu(F.linear(sinusoid(t, 256), l0.weight.float(), l0.bias.float())),
                      l2.weight.float(), l2.bias.float())
    assert torch.equal(m16.t_embedder(t), expect)
    # a bfloat16 matmul would NOT give that: the islands matter
    lowp = F.linear(F.silu(F.linear(sinusoid(t, 256).bfloat16(), l0.weight, l0.bias)), l2.weight, l2.bias)
    assert not torch.equal(lowp.float(), expect)


def test_bf16_output_close_to_float32_golden(m16):
    for name in ("t2v", "i2v"):
        case = load_case(A / f"cases/{name}.safetensors")
        with torch.no_grad():
            out = m16(**case.forward_kwargs())
        # the float32 golden data, recorded in another run: the policy's bfloat16 ceiling
        assert rel(out, case.acts["act.output"]) <= policy_limit("rel_l2", "bfloat16")


@CUDA
def test_cuda_float32_islands_equal_autocast():
    """Our explicit upcasts compute what autocast('cuda', float32) computes."""
    lin = torch.nn.Linear(64, 96).cuda().bfloat16()
    x = torch.randn(7, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.float32):
        auto = lin(x)
    assert auto.dtype == torch.float32
    assert torch.equal(linear_fp32(x, lin.weight, lin.bias), auto)


@CUDA
def test_cuda_bf16_reference_matches_cpu_bf16_and_offloads(m16):
    gpu = load_reference(A, dtype="bfloat16", device="cuda")
    case = load_case(A / "cases/i2v.safetensors")
    kw = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in case.forward_kwargs().items()}
    with torch.no_grad():
        out, cache = gpu(**dict(kw, return_kv=True, offload_kv_cache=True))
        cpu = m16(**case.forward_kwargs())
    assert out.dtype == torch.float32 and rel(out.cpu(), cpu) < 0.02
    assert all(k.device.type == "cpu" for k, _ in cache.values())


# ------------------------------------------------------------------ RoPE

def test_rope_split_of_the_released_head_dim():
    assert axis_splits(128) == (44, 42, 42)
    assert axis_splits(64) == (24, 20, 20)
    assert axis_splits(16) == (8, 4, 4)


def test_rope_against_complex_rotation():
    """Independent statement: channel pair j of an axis part of size d at position p is
    rotated by p * 10000**(-2j/d) (as a complex number x[2j] + i x[2j+1])."""
    hd, grid = 24, (3, 2, 4)
    x = torch.randn(1, 1, 24, hd, dtype=torch.float64)
    cos, sin = Rope3D(hd).tables(grid, "cpu")
    got = Rope3D.rotate(x.float(), cos, sin).double()
    dt, dh, dw = axis_splits(hd)
    T, H, W = grid
    for n in (0, 5, 23):
        pos = (n // (H * W), (n // W) % H, n % W)
        angles = []
        for p, d in zip(pos, (dt, dh, dw)):
            angles += [p * 10000 ** (-2 * j / d) for j in range(d // 2)]
        z = torch.complex(x[0, 0, n, 0::2], x[0, 0, n, 1::2]) * torch.exp(1j * torch.tensor(angles, dtype=torch.float64))
        expect = torch.stack([z.real, z.imag], dim=-1).flatten()
        assert torch.allclose(got[0, 0, n], expect, atol=1e-5)
    assert torch.equal(grid_angles(grid, hd)[0], torch.zeros(hd))


# ------------------------------------------------------------------ backends

def test_backends_agree_dense_and_varlen():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g) for n in (10, 7, 7))
    sd, ma = get_backend("sdpa"), get_backend("math")
    assert torch.allclose(sd.dense(q, k, v), ma.dense(q, k, v), atol=1e-5)
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(16), -1) @ v.double()
    assert torch.allclose(ma.dense(q, k, v).double(), exact, atol=1e-6)
    qp, kp, vp = torch.randn(9, 3, 16), torch.randn(8, 3, 16), torch.randn(8, 3, 16)
    for be in (sd, ma):
        out = be.varlen(qp, kp, vp, [4, 5], [6, 2])
        first = be.dense(qp[None, :4].transpose(1, 2), kp[None, :6].transpose(1, 2), vp[None, :6].transpose(1, 2))
        assert torch.allclose(out[:4], first[0].transpose(0, 1), atol=1e-6)
        second = be.dense(qp[None, 4:].transpose(1, 2), kp[None, 6:].transpose(1, 2), vp[None, 6:].transpose(1, 2))
        assert torch.allclose(out[4:], second[0].transpose(0, 1), atol=1e-6)


@pytest.mark.parametrize("name,pkg", [("flash2", "flash_attn"), ("flash3", "flash_attn_interface")])
def test_missing_flash_backend_is_a_clear_error(monkeypatch, name, pkg):
    monkeypatch.setitem(__import__("sys").modules, pkg, None)      # make it unimportable
    with pytest.raises(BadInput, match=f"needs the '{pkg}' package"):
        get_backend(name)
    with pytest.raises(BadInput, match=f"needs the '{pkg}' package"):
        load_reference(A, attention=name)


def test_unknown_backend():
    with pytest.raises(BadInput, match="unknown attention backend"):
        get_backend("xformers")


@CUDA
@pytest.mark.parametrize("name", ["flash2", "flash3"])
def test_cuda_flash_backend_matches_sdpa(name):
    try:
        be = get_backend(name)
    except BadInput as e:
        pytest.skip(str(e))
    q, k, v = (torch.randn(2, 3, n, 64, device="cuda", dtype=torch.bfloat16) for n in (10, 7, 7))
    assert rel(be.dense(q, k, v).float(), get_backend("sdpa").dense(q, k, v).float()) < 1e-2
