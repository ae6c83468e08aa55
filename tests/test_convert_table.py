"""The mapping table: exact coverage both ways, and FastVideo's real model agrees with it."""
from __future__ import annotations

import json

import pytest

from convert_support import TINY_A, TINY_B, needs_native
from longcat_convert import config_map
from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader
from scripts.synth import REAL_DIMS, original_config
from longcat_convert.table import (Dims, check_coverage, expand, leaf_modules, lora_targets, native_shapes,
                                   original_shapes, reverse_ops, table_hash)

DIMS = {
    "tiny-a": Dims.from_original_config(json.loads((TINY_A / "dit/config.json").read_text())),
    "tiny-b": Dims.from_original_config(json.loads((TINY_B / "dit/config.json").read_text())),
    "odd": Dims(hidden=96, heads=3, depth=1, cin=4, cout=12, caption=40, adaln=24, freq=64,
                mlp_ratio=4.0, patch=(1, 2, 2)),
    "deep": Dims(hidden=64, heads=1, depth=5, cin=16, cout=16, caption=32, adaln=16, freq=256,
                 mlp_ratio=4.0, patch=(1, 2, 2)),
    "ratio": Dims(hidden=384, heads=3, depth=1, cin=16, cout=16, caption=32, adaln=16, freq=256,
                  mlp_ratio=2.5, patch=(1, 2, 2)),
    "released": REAL_DIMS,
}


@pytest.mark.parametrize("name", sorted(DIMS))
def test_every_key_consumed_and_produced_exactly_once(name):
    dims = DIMS[name]
    ops = expand(dims)
    sources = [s for op in ops for s in op.sources]
    targets = [t for op in ops for t in op.targets]
    assert len(sources) == len(set(sources))
    assert len(targets) == len(set(targets))
    assert set(sources) == set(original_shapes(dims))
    assert set(targets) == set(native_shapes(dims))
    # splits preserve bytes: the target rows add up to the source rows
    for op in ops:
        assert sum(s[0] for s in op.target_shapes) == op.source_shapes[0][0]
        assert all(s[1:] == op.source_shapes[0][1:] for s in op.target_shapes)
    # the reverse plan is the same plan read backwards
    back = reverse_ops(dims)
    assert [(o.targets, o.sources) for o in back] == [(o.sources, o.targets) for o in ops]


def test_released_model_size():
    # 13.6B parameters in the released config (48 blocks of 4096)
    n = sum(int(__import__("math").prod(s)) for s in original_shapes(REAL_DIMS).values())
    assert 13.5e9 < n < 13.7e9


@pytest.mark.parametrize("model", [TINY_A, TINY_B], ids=["tiny-a", "tiny-b"])
def test_golden_checkpoints_match_the_table(model):
    cfg = json.loads((model / "dit/config.json").read_text())
    dims = Dims.from_original_config(cfg)
    reader = ShardedReader(model / "dit")
    assert {k: reader.info(k).shape for k in reader.keys()} == original_shapes(dims)


def test_coverage_errors_list_the_keys():
    with pytest.raises(BadInput, match=r"1 missing key\(s\): a; 1 unknown key\(s\): c"):
        check_coverage({"b", "c"}, {"a", "b"}, "where")


def test_lora_targets_come_from_the_table():
    leaves = {leaf.orig: leaf for leaf in leaf_modules(DIMS["tiny-a"])}
    assert leaves["blocks.0.attn.qkv"].native == ("blocks.0.self_attn.to_q", "blocks.0.self_attn.to_k",
                                                  "blocks.0.self_attn.to_v")
    assert leaves["blocks.0.attn.qkv"].param.lora_blocks == 3
    assert leaves["blocks.0.cross_attn.proj"].native == ("blocks.0.cross_attn.to_out",)
    assert leaves["blocks.0.adaLN_modulation.1"].param.lora_blocks == 6
    assert leaves["final_layer.adaLN_modulation.1"].param.lora_blocks == 2
    assert not leaves["x_embedder.proj"].param.linear
    targets = lora_targets(DIMS["tiny-a"])
    assert "x_embedder.proj" not in targets and "blocks.0.attn.q_norm" not in targets
    assert set(targets) == {k for k, v in leaves.items() if v.param.linear}


def test_table_hash_is_stable():
    assert table_hash() == table_hash() and len(table_hash()) == 16


@needs_native
@pytest.mark.parametrize("name", ["tiny-a", "tiny-b", "odd", "deep", "ratio"])
def test_fastvideo_model_has_exactly_the_tables_keys_and_shapes(name):
    """FastVideo's own LongCatTransformer3DModel, built from the translated config."""
    from parity.native import build_native_model
    dims = DIMS[name]
    native_cfg, _, _ = config_map.to_native(original_config(dims))
    model = build_native_model(native_cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == native_shapes(dims)
