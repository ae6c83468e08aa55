"""The converter's mapping table and the clean-room reference, set against each other.

Neither derives from the other: the table declares the original layout as data
(longcat_convert/table.py), the reference builds the original model from its own
reading of config.json (reference/config.py) and its own modules. On every config here
they must agree on the sizes, on every original key and its shape, and on the module
names the table hands to LoRA and to parity's hooks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longcat_convert import table
from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader
from reference.config import ModelDims, ReferenceConfig
from reference.layers import Linear
from reference.loading import open_checkpoint, original_shapes
from reference.model import ReferenceDiT

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = {"tiny-a": ROOT / "golden/tiny-a", "tiny-b": ROOT / "golden/tiny-b",
               "tiny-c": ROOT / "golden/extra/tiny-c"}


def _config(hidden, heads, depth, **extra) -> dict:
    cfg = {"_class_name": "LongCatVideoTransformer3DModel", "in_channels": 8, "hidden_size": hidden,
           "depth": depth, "num_heads": heads, "caption_channels": hidden // 2 + 8, "mlp_ratio": 4,
           "adaln_tembed_dim": 32, "frequency_embedding_size": 64, "patch_size": [1, 2, 2],
           "text_tokens_zero_pad": True, "enable_bsa": False, "bsa_params": None}
    cfg.update(extra)
    return cfg


CONFIGS = {name: json.loads((path / "dit/config.json").read_text()) for name, path in CHECKPOINTS.items()}
CONFIGS.update({
    # generated widths: head counts, odd widths, other ratios and patches, defaults left out
    "h64-n1-d1": _config(64, 1, 1),
    "h96-n3-d2-cout12": _config(96, 3, 2, out_channels=12),
    "h192-n3-d3-ratio2.5": _config(192, 3, 3, mlp_ratio=2.5),
    "h256-n8-d1-patch142": _config(256, 8, 1, patch_size=[1, 4, 2]),
    "h384-n4-d2-defaults": {k: v for k, v in _config(384, 4, 2).items()
                            if k not in ("mlp_ratio", "frequency_embedding_size", "patch_size")},
    "h640-n10-d1-ratio3": _config(640, 10, 1, mlp_ratio=3, adaln_tembed_dim=48),
    "released": _config(4096, 32, 48, in_channels=16, caption_channels=4096, adaln_tembed_dim=512,
                        frequency_embedding_size=256),
})


def _both(cfg):
    return table.Dims.from_original_config(cfg, "config.json"), ReferenceConfig.from_original(cfg, "config.json")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_sizes(name):
    dims, ref = _both(CONFIGS[name])
    assert isinstance(ref.dims, ModelDims) and not isinstance(ref.dims, table.Dims)
    for field in ("hidden", "heads", "depth", "cin", "cout", "caption", "adaln", "freq", "mlp_ratio", "patch",
                  "head_dim", "ffn", "patch_volume"):
        assert getattr(ref.dims, field) == getattr(dims, field), field


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_keys_and_shapes(name):
    dims, ref = _both(CONFIGS[name])
    theirs, ours = table.original_shapes(dims), original_shapes(ref)
    assert set(ours) - set(theirs) == set() and set(theirs) - set(ours) == set()
    assert {k: ours[k] for k in sorted(ours) if ours[k] != theirs[k]} == {}
    assert len(ours) == 2 + 4 + 4 + 21 * dims.depth + 4      # embedders, blocks, final layer


@pytest.mark.parametrize("name", ["tiny-a", "h96-n3-d2-cout12", "h256-n8-d1-patch142"])
def test_table_names_are_the_reference_modules(name):
    """Every module the table names (leaf modules, LoRA targets, parity's compared layers,
    the parameterless norms) is a module of the reference under that name, of the right kind."""
    dims, ref = _both(CONFIGS[name])
    with torch.device("meta"):
        modules = dict(ReferenceDiT(ref).named_modules())
    for leaf in table.leaf_modules(dims):
        assert leaf.orig in modules, leaf.orig
        assert tuple(modules[leaf.orig].weight.shape) == leaf.weight_shape
    for orig in table.lora_targets(dims):
        assert isinstance(modules[orig], Linear), orig
    for orig, _ in table.layer_pairs(dims):
        assert orig in modules, orig
    for line in table.PARAMETERLESS:
        orig = line.split(" -> ")[0]
        for i in range(dims.depth):
            m = modules[orig.format(i=i)]
            assert list(m.parameters()) == [], orig


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_bundled_checkpoints_are_what_both_expect(name):
    dims, _ = _both(CONFIGS[name])
    reader = ShardedReader(CHECKPOINTS[name] / "dit")
    present = {k: tuple(reader.info(k).shape) for k in reader.keys()}
    config, _, _ = open_checkpoint(CHECKPOINTS[name])      # the reference's own strict check
    assert present == original_shapes(config) == table.original_shapes(dims)


@pytest.mark.parametrize("edit", [
    {"hidden_size": 100, "num_heads": 3}, {"depth": 0}, {"depth": 1.0}, {"in_channels": "8"},
    {"mlp_ratio": 0}, {"mlp_ratio": True}, {"patch_size": [1, 2]}, {"num_heads": None},
    {"adaln_tembed_dim": 2**40},
])
def test_both_refuse_the_same_bad_sizes(edit):
    cfg = dict(CONFIGS["tiny-a"], **edit)
    with pytest.raises(BadInput):
        table.Dims.from_original_config(cfg)
    with pytest.raises(BadInput):
        ReferenceConfig.from_original(cfg)
