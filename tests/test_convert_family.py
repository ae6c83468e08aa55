"""A family of generated checkpoints (widths, depths, head counts, shard counts, LoRA
ranks, dtypes): convert -> verify -> FastVideo loads strictly -> export -> bitwise round trip."""
from __future__ import annotations

import json

import pytest
import torch

from convert_support import needs_native, read_all, run
from longcat_convert.shards import ShardedReader
from scripts.synth import build_checkpoint
from longcat_convert.table import Dims, native_shapes

FAMILY = [
    # hidden, heads, depth, shards, lora rank, dtype, max shard size
    (64, 1, 1, 1, 1, "fp32", "5GB"),
    (128, 2, 2, 3, 8, "bf16", "200KB"),
    (192, 3, 3, 4, 3, "fp16", "5GB"),
    (96, 4, 2, 2, 16, "fp32", "1MB"),
    (256, 8, 1, 5, 2, "bf16", "5GB"),
]


def _dims(hidden, heads, depth):
    return Dims(hidden=hidden, heads=heads, depth=depth, cin=8, cout=8 if depth % 2 else 4,
                caption=hidden // 2 + 8, adaln=32, freq=64, mlp_ratio=4.0, patch=(1, 2, 2))


@pytest.mark.parametrize("hidden,heads,depth,shards,rank,dtype,max_shard", FAMILY,
                         ids=[f"h{f[0]}-n{f[1]}-d{f[2]}-s{f[3]}-r{f[4]}-{f[5]}" for f in FAMILY])
def test_family(tmp_path, hidden, heads, depth, shards, rank, dtype, max_shard):
    dims = _dims(hidden, heads, depth)
    src = build_checkpoint(tmp_path / "orig", dims, dtype, shards, seed=hidden + depth,
                           lora_ranks=(rank, rank + 1), lora_alpha_scales=(0.5, 0.3), components=True)
    assert len(ShardedReader(src / "dit").files) == min(shards, len(ShardedReader(src / "dit").keys()))
    native = tmp_path / "native"
    rc, _, err = run("convert", src, native, "--quiet", "--max-shard-size", max_shard)
    assert rc == 0, err
    rc, _, err = run("verify", src, native, "--quiet")
    assert rc == 0, err

    out = ShardedReader(native / "transformer")
    assert {k: out.info(k).shape for k in out.keys()} == native_shapes(dims)
    if max_shard != "5GB":
        assert len(out.files) > 1
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert (native / name).is_dir()
    assert len(list((native / "lora").glob("*/*.safetensors"))) == 2

    # original -> native -> original, bitwise per tensor (bytes, dtype, shape)
    back = tmp_path / "back"
    rc, _, err = run("export", native, back, "--quiet")
    assert rc == 0, err
    rc, _, err = run("verify", native, back, "--quiet")
    assert rc == 0, err
    a, b = ShardedReader(src / "dit"), ShardedReader(back / "dit")
    assert set(a.keys()) == set(b.keys())
    for k in a.keys():
        assert a.info(k).dtype == b.info(k).dtype and a.info(k).shape == b.info(k).shape, k
        assert a.read_bytes(k) == b.read_bytes(k), k
    assert json.loads((back / "dit/config.json").read_text()) == json.loads((src / "dit/config.json").read_text())


@needs_native
@pytest.mark.parametrize("hidden,heads,depth,shards,rank,dtype,max_shard", FAMILY[:3],
                         ids=[f"h{f[0]}-n{f[1]}-d{f[2]}" for f in FAMILY[:3]])
def test_family_loads_in_fastvideo(tmp_path, hidden, heads, depth, shards, rank, dtype, max_shard):
    from parity.native import build_native_model
    dims = _dims(hidden, heads, depth)
    src = build_checkpoint(tmp_path / "orig", dims, dtype, shards, seed=1)
    rc, _, err = run("convert", src, tmp_path / "native", "--quiet", "--max-shard-size", max_shard)
    assert rc == 0, err
    cfg = json.loads((tmp_path / "native/transformer/config.json").read_text())
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model = build_native_model(cfg, dtype=torch_dtype)
    tensors = read_all(tmp_path / "native/transformer")
    result = model.load_state_dict(tensors, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in tensors.items())


@needs_native
@pytest.mark.parametrize("hidden,heads,depth,shards,rank,dtype,max_shard", FAMILY[:3],
                         ids=[f"h{f[0]}-n{f[1]}-d{f[2]}-r{f[4]}-{f[5]}" for f in FAMILY[:3]])
def test_family_loras_land_on_fastvideo_modules(tmp_path, hidden, heads, depth, shards, rank, dtype, max_shard):
    """Every converted LoRA key names a real LoRA-able module of FastVideo's model, and
    FastVideo's set_lora_weights adds exactly the original delta to that module's weight."""
    from fastvideo.layers.lora.linear import get_lora_layer
    from parity.native import build_native_model
    from longcat_convert.lora import encode_module
    from longcat_convert.table import lora_targets
    dims = _dims(hidden, heads, depth)
    src = build_checkpoint(tmp_path / "orig", dims, dtype, shards, seed=2, lora_ranks=(rank,),
                           lora_alpha_scales=(0.3,))
    rc, _, err = run("convert", src, tmp_path / "native", "--quiet")
    assert rc == 0, err
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model = build_native_model(json.loads((tmp_path / "native/transformer/config.json").read_text()),
                               dtype=torch_dtype)
    model.load_state_dict(read_all(tmp_path / "native/transformer"), strict=True)
    (lora_file,) = (tmp_path / "native/lora").glob("*/*.safetensors")
    lora = read_all(lora_file)
    orig_lora = ShardedReader(next((src / "lora").glob("*.safetensors")))
    eps = torch.finfo(torch_dtype).eps
    seen = set()
    for module, leaf in lora_targets(dims).items():
        base = encode_module(module)
        if f"{base}.lora_down.weight" not in orig_lora:
            continue
        n = leaf.param.lora_blocks
        down = orig_lora.get(f"{base}.lora_down.weight").double()
        ups = [orig_lora.get(f"{base}.lora_up.weight").double()] if n == 1 else \
            [orig_lora.get(f"{base}.lora_up.blocks.{j}.weight").double() for j in range(n)]
        alpha = orig_lora.get(f"{base}.alpha_scale").double().item()
        r = down.shape[0] // n
        delta = alpha * torch.cat([u @ down[j * r:(j + 1) * r] for j, u in enumerate(ups)], dim=0)
        rows = delta.shape[0] // len(leaf.native)
        for j, native in enumerate(leaf.native):
            layer = get_lora_layer(model.get_submodule(native))
            assert layer is not None, f"{native} is not LoRA-able in FastVideo"
            before = layer.base_layer.weight.detach().double().clone()
            layer.set_lora_weights(lora[f"{native}.lora_A.weight"], lora[f"{native}.lora_B.weight"],
                                   lora_alpha=lora[f"{native}.lora_alpha"].item(), strength=1.0)
            got = layer.base_layer.weight.detach().double() - before
            want = delta[j * rows:(j + 1) * rows]
            tol = 4 * eps * (before.abs().max() + want.abs().max()).item()
            assert (got - want).abs().max().item() <= tol, native
            seen.add(native)
    assert {k.rsplit(".lora_", 1)[0] for k in lora} == seen
