"""LoRA in the original file format: maths, several at once, multiplier, enable/disable, bad files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from longcat_convert.errors import BadInput
from reference import load_reference

ROOT = Path(__file__).resolve().parent.parent
C = ROOT / "golden/extra/tiny-c"
R2, R3 = C / "lora/rank2.safetensors", C / "lora/rank3.safetensors"


@pytest.fixture
def m():
    return load_reference(C, attention="math")


def run(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = m.config.dims
    x = torch.randn(1, d.cin, 2, 4, 4, generator=g)
    y = torch.randn(1, 1, 5, d.caption, generator=g)
    return m(x, torch.tensor([321.0]), y, torch.tensor([[1, 1, 1, 0, 0]]))


def test_up_blocks_are_block_diagonal(m):
    """n up blocks == one block-diagonal up matrix over the n chunks of the down output."""
    m.load_lora(R2, "a", 0.7)
    m.enable_loras(["a"])
    qkv = m.get_submodule("blocks.0.attn.qkv")
    (adapter,) = qkv.lora_adapters
    assert len(adapter.ups) == 3 and adapter.rank == 2
    x = torch.randn(5, qkv.in_features, dtype=torch.float64)
    up = torch.block_diag(*[u.double() for u in adapter.ups])
    expect = 0.7 * float(adapter.alpha_scale) * (x @ adapter.down.double().T @ up.T)
    got = adapter.delta(x.float()).double()
    assert torch.allclose(got, expect, atol=1e-5)
    base = torch.nn.functional.linear(x.float(), qkv.weight, qkv.bias)
    assert torch.allclose(qkv(x.float()), base + adapter.delta(x.float()), atol=1e-6)


def test_multiplier_enable_disable_and_two_loras(m):
    base = run(m)
    m.load_lora(R2, "a", 1.0)
    m.load_lora(R3, "b", 1.0)
    m.enable_loras(["a"])
    with_a = run(m)
    assert (with_a - base).norm() / base.norm() > 1e-3
    m.loras["a"].set_multiplier(0.0)
    assert torch.equal(run(m), base)
    m.loras["a"].set_multiplier(1.0)
    m.loras["a"].set_enabled(False)
    assert torch.equal(run(m), base)
    m.loras["a"].set_enabled(True)
    assert torch.equal(run(m), with_a)
    m.enable_loras(["a", "b"])                       # both: deltas sum on shared modules
    both = run(m)
    qkv = m.get_submodule("blocks.1.attn.qkv")
    assert len(qkv.lora_adapters) == 2
    x = torch.randn(3, qkv.in_features)
    lin = torch.nn.functional.linear(x, qkv.weight, qkv.bias)
    assert torch.allclose(qkv(x), lin + qkv.lora_adapters[0].delta(x) + qkv.lora_adapters[1].delta(x), atol=1e-6)
    m.enable_loras(["b"])                            # re-enabling replaces the active set
    assert m.active_loras == ["b"] and len(qkv.lora_adapters) == 1
    assert not torch.equal(run(m), both)
    m.disable_all_loras()
    assert torch.equal(run(m), base) and m.active_loras == []
    assert list(m.state_dict()) == list(load_reference(C).state_dict())   # adapters never enter the state dict


def test_multiplier_scales_the_delta_linearly_at_module_level(m):
    m.load_lora(R3, "b", 1.0)
    m.enable_loras(["b"])
    lin = m.get_submodule("final_layer.adaLN_modulation.1")       # fp32 island, 2 up blocks
    x = torch.randn(4, lin.in_features)
    d1 = lin(x) - torch.nn.functional.linear(x, lin.weight, lin.bias)
    m.loras["b"].set_multiplier(-2.5)
    d2 = lin(x) - torch.nn.functional.linear(x, lin.weight, lin.bias)
    assert torch.allclose(d2, -2.5 * d1, atol=1e-5)


def test_unknown_lora_key_is_refused(m):
    with pytest.raises(BadInput, match="no LoRA loaded"):
        m.enable_loras(["nope"])


def _mutate(tmp_path, fn):
    t = load_file(str(R2))
    fn(t)
    p = tmp_path / "bad.safetensors"
    save_file(t, str(p))
    return p


@pytest.mark.parametrize("fn,msg", [
    (lambda t: t.__setitem__("lora___lorahyphen___blocks___lorahyphen___9___lorahyphen___ffn___lorahyphen___w2.lora_down.weight",
                             torch.zeros(2, 256)), "no module 'blocks.9.ffn.w2'"),
    (lambda t: t.__setitem__("lora___lorahyphen___x_embedder___lorahyphen___proj.lora_down.weight",
                             torch.zeros(2, 4)), "not a Linear"),
    (lambda t: t.pop("lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___ffn___lorahyphen___w2.alpha_scale"),
     "missing 'alpha_scale'"),
    (lambda t: t.__setitem__("lora___lorahyphen___blocks___lorahyphen___0___lorahyphen___ffn___lorahyphen___w2.lora_up.weight",
                             torch.zeros(48, 5)), "do not fit"),
    (lambda t: t.__setitem__("something_else.weight", torch.zeros(1)), "not an original-format LoRA key"),
])
def test_bad_lora_files(m, tmp_path, fn, msg):
    with pytest.raises(BadInput, match=msg):
        m.load_lora(_mutate(tmp_path, fn), "bad")
