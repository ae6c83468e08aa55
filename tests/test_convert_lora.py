"""LoRA conversion: every module lands, and FastVideo's own LoRA layer applies exactly
the original delta (multiplier * alpha_scale * up(down(x)), chunked over up blocks)."""
from __future__ import annotations

import struct

import pytest
import torch

from convert_support import TINY_A, needs_native, run, write_raw
from parity.metrics import rel_l2
from parity_support import policy_limit
from longcat_convert.errors import BadInput
from longcat_convert.lora import encode_module, plan_lora
from longcat_convert.shards import ShardedReader
from scripts.synth import build_lora
from longcat_convert.table import Dims, leaf_modules

DIMS = Dims(hidden=32, heads=2, depth=1, cin=4, cout=4, caption=24, adaln=16, freq=32, mlp_ratio=4.0,
            patch=(1, 2, 2))
LINEAR = [leaf for leaf in leaf_modules(DIMS) if leaf.param.linear]


def _tensors(plan) -> dict[str, torch.Tensor]:
    out = {}
    for t in plan.tensors:
        data = bytearray(t.make())
        dt = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[t.dtype]
        out[t.key] = torch.frombuffer(data, dtype=dt).reshape(t.shape) if data else torch.empty(t.shape, dtype=dt)
    return out


def _original_delta(reader: ShardedReader, module: str, n: int, x: torch.Tensor, multiplier: float):
    """The original LoRA formula, in float64."""
    base = encode_module(module)
    down = reader.get(f"{base}.lora_down.weight").double()
    alpha = reader.get(f"{base}.alpha_scale").double().item()
    ups = [reader.get(f"{base}.lora_up.weight").double()] if n == 1 else \
        [reader.get(f"{base}.lora_up.blocks.{j}.weight").double() for j in range(n)]
    d = x.double() @ down.T
    chunks = d.chunk(n, dim=-1)
    return multiplier * alpha * torch.cat([c @ u.T for c, u in zip(chunks, ups)], dim=-1)


def _fastvideo_outputs(leaf, tensors, weight, bias, x, strength):
    """FastVideo's ReplicatedLinear + get_lora_layer + set_lora_weights for each native target."""
    from fastvideo.layers.linear import ReplicatedLinear
    from fastvideo.layers.lora.linear import get_lora_layer
    outs = []
    rows = weight.shape[0] // len(leaf.native)
    for j, native in enumerate(leaf.native):
        layer = ReplicatedLinear(weight.shape[1], rows, bias=True, params_dtype=torch.float32)
        layer.weight.data.copy_(weight[j * rows:(j + 1) * rows])
        layer.bias.data.copy_(bias[j * rows:(j + 1) * rows])
        lora = get_lora_layer(layer)
        lora.set_lora_weights(tensors[f"{native}.lora_A.weight"], tensors[f"{native}.lora_B.weight"],
                              lora_alpha=tensors[f"{native}.lora_alpha"].item(), strength=strength)
        out, _ = lora(x)
        outs.append(out)
    return torch.cat(outs, dim=-1)


@needs_native
@pytest.mark.parametrize("rank", [1, 4, 6])
@pytest.mark.parametrize("alpha_scale", [0.5, 2.0, 0.3, 1 / 3, -0.75, 0.0])
def test_fastvideo_applies_the_original_delta(tmp_path, rank, alpha_scale):
    from parity.native import ensure_runtime
    ensure_runtime()
    torch.manual_seed(rank)
    path = build_lora(tmp_path / "l.safetensors", DIMS, rank, alpha_scale, "fp32", seed=rank,
                      modules=[leaf.orig for leaf in LINEAR])
    plan = plan_lora(path, DIMS)
    tensors = _tensors(plan)
    reader = ShardedReader(path)
    strength = 0.8
    for leaf in LINEAR:
        out_f, in_f = leaf.weight_shape
        weight, bias = torch.randn(out_f, in_f) * 0.1, torch.randn(out_f) * 0.1
        x = torch.randn(5, in_f)
        want = (x.double() @ weight.double().T + bias.double()
                + _original_delta(reader, leaf.orig, leaf.param.lora_blocks, x, strength))
        got = _fastvideo_outputs(leaf, tensors, weight, bias, x, strength).double()
        # float32 against the float64 formula: within the policy's float32 limit (not a number
        # measured on one CPU); losing 1/6 of the delta (test below) misses it by orders of magnitude
        err = rel_l2(got, want)
        assert err <= policy_limit(), f"{leaf.orig}: relative L2 {err:.2e}"
    # the decision recorded per target: B kept bitwise exactly when alpha_scale * rank is a non-zero integer
    for d in plan.decisions:
        exact = d["alpha_scale"] * d["rank"]
        assert d["alpha_folded_into_B"] == (exact == 0 or not float(exact).is_integer())


@needs_native
def test_truncated_alpha_would_be_wrong(tmp_path):
    """Why the fold exists: writing alpha_scale*rank = 1.2 as lora_alpha loses 1/6 of the delta."""
    from parity.native import ensure_runtime
    from fastvideo.layers.linear import ReplicatedLinear
    from fastvideo.layers.lora.linear import get_lora_layer
    ensure_runtime()
    a, b = torch.randn(2, 8), torch.randn(8, 2)
    layer = ReplicatedLinear(8, 8, bias=False, params_dtype=torch.float32)
    layer.weight.data.zero_()
    lora = get_lora_layer(layer)
    lora.set_lora_weights(a, b, lora_alpha=0.6 * 2, strength=1.0)
    merged = lora.base_layer.weight.data
    assert torch.allclose(merged, 0.5 * (b @ a))          # int(1.2) / 2
    assert not torch.allclose(merged, 0.6 * (b @ a))


def test_integer_alpha_keeps_b_bitwise(tmp_path):
    path = build_lora(tmp_path / "l.safetensors", DIMS, 4, 0.5, "bf16", seed=1,
                      modules=["blocks.0.attn.qkv", "blocks.0.ffn.w1"])
    reader = ShardedReader(path)
    tensors = {t.key: t for t in plan_lora(path, DIMS).tensors}
    qkv = encode_module("blocks.0.attn.qkv")
    assert tensors["blocks.0.self_attn.to_k.lora_B.weight"].make() == reader.read_bytes(f"{qkv}.lora_up.blocks.1.weight")
    down = reader.read_bytes(f"{qkv}.lora_down.weight")
    assert tensors["blocks.0.self_attn.to_k.lora_A.weight"].make() == down[len(down) // 3: 2 * len(down) // 3]
    assert struct.unpack("<f", tensors["blocks.0.self_attn.to_k.lora_alpha"].make())[0] == 2.0


def test_block_diagonal_adaln(tmp_path):
    path = build_lora(tmp_path / "l.safetensors", DIMS, 3, 1.0, "fp32", seed=2,
                      modules=["blocks.0.adaLN_modulation.1"])
    t = _tensors(plan_lora(path, DIMS))
    reader = ShardedReader(path)
    base = encode_module("blocks.0.adaLN_modulation.1")
    a, b = t["blocks.0.adaln_linear_1.lora_A.weight"], t["blocks.0.adaln_linear_1.lora_B.weight"]
    assert a.shape == (18, DIMS.adaln) and b.shape == (6 * DIMS.hidden, 18)
    assert torch.equal(a, reader.get(f"{base}.lora_down.weight"))
    for j in range(6):
        blk = b[j * DIMS.hidden:(j + 1) * DIMS.hidden]
        assert torch.equal(blk[:, j * 3:(j + 1) * 3], reader.get(f"{base}.lora_up.blocks.{j}.weight"))
        blk = blk.clone()
        blk[:, j * 3:(j + 1) * 3] = 0
        assert not blk.any()
    assert t["blocks.0.adaln_linear_1.lora_alpha"].item() == 18.0


def test_golden_lora_every_module_lands(tmp_path):
    """Including cross_attn.proj (which FastVideo's own conversion script drops)."""
    rc, _, err = run("convert", TINY_A, tmp_path / "out", "--quiet")
    assert rc == 0, err
    out = ShardedReader(tmp_path / "out/lora/tiny_lora/tiny_lora.safetensors")
    src = ShardedReader(TINY_A / "lora/tiny_lora.safetensors")
    modules = {k.split(".")[0] for k in src.keys()}
    assert len(modules) == 29
    assert "blocks.2.cross_attn.to_out.lora_A.weight" in out.keys()
    # 3 targets for qkv, 2 for kv, 1 for the rest: 3*(3+2+7) + 2 targets, three keys each
    assert len(out.keys()) == 3 * (3 * (3 + 2 + 7) + 2)


def _lora_entries(module, n, rank, in_f, out_f):
    base = encode_module(module)
    t = {f"{base}.lora_down.weight": ("F32", (n * rank, in_f), bytes(4 * n * rank * in_f)),
         f"{base}.alpha_scale": ("F32", (), struct.pack("<f", 1.0))}
    if n == 1:
        t[f"{base}.lora_up.weight"] = ("F32", (out_f, rank), bytes(4 * out_f * rank))
    else:
        for j in range(n):
            t[f"{base}.lora_up.blocks.{j}.weight"] = ("F32", (out_f // n, rank), bytes(4 * out_f // n * rank))
    return t


@pytest.mark.parametrize("case,match", [
    ("beyond_depth", "no place in the model"),
    ("conv", "not a linear layer"),
    ("missing_block", "must have lora_up.blocks.0..2"),
    ("bad_shape", "expected"),
    ("missing_alpha", "no alpha_scale"),
    ("foreign_key", "not in the original LongCat LoRA format"),
])
def test_unmappable_or_malformed_lora_is_an_error(tmp_path, case, match):
    h = DIMS.hidden
    t = _lora_entries("blocks.0.attn.proj", 1, 2, h, h)
    if case == "beyond_depth":
        t.update(_lora_entries("blocks.1.attn.proj", 1, 2, h, h))
    elif case == "conv":
        t.update(_lora_entries("x_embedder.proj", 1, 2, h, h))
    elif case == "missing_block":
        t.update(_lora_entries("blocks.0.attn.qkv", 3, 2, h, 3 * h))
        del t[encode_module("blocks.0.attn.qkv") + ".lora_up.blocks.2.weight"]
    elif case == "bad_shape":
        t[encode_module("blocks.0.attn.proj") + ".lora_down.weight"] = ("F32", (2, h + 1), bytes(8 * (h + 1)))
    elif case == "missing_alpha":
        del t[encode_module("blocks.0.attn.proj") + ".alpha_scale"]
    elif case == "foreign_key":
        t["transformer.blocks.0.attn.proj.lora_A.weight"] = ("F32", (2, h), bytes(8 * h))
    p = tmp_path / "bad.safetensors"
    write_raw(p, t)
    with pytest.raises(BadInput, match=match) as e:
        plan_lora(p, DIMS)
    assert str(p) in str(e.value)
