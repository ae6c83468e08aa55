"""Config translation, both directions."""
from __future__ import annotations

import json

import pytest

from convert_support import TINY_A, TINY_B
from longcat_convert import config_map
from longcat_convert.errors import BadInput


@pytest.mark.parametrize("model", [TINY_A, TINY_B], ids=["tiny-a", "tiny-b"])
def test_round_trip_is_identity(model):
    orig = json.loads((model / "dit/config.json").read_text())
    native, _, _ = config_map.to_native(orig)
    back, _ = config_map.to_original(native)
    assert back == orig
    assert list(back) == list(orig)  # key order kept too


def test_native_fields():
    orig = json.loads((TINY_A / "dit/config.json").read_text())
    native, warnings, notes = config_map.to_native(orig)
    assert native["_class_name"] == "LongCatTransformer3DModel"
    assert native["num_attention_heads"] == orig["num_heads"] and "num_heads" not in native
    for key in ("hidden_size", "depth", "text_tokens_zero_pad", "enable_bsa", "bsa_params", "patch_size",
                "caption_channels", "adaln_tembed_dim", "frequency_embedding_size", "in_channels", "out_channels"):
        assert native[key] == orig[key]
    assert warnings == []
    assert any("enable_flashattn2" in n for n in notes)


def test_varlen_text_is_warned():
    orig = json.loads((TINY_B / "dit/config.json").read_text())
    _, warnings, _ = config_map.to_native(orig)
    assert len(warnings) == 1 and "text_tokens_zero_pad=false" in warnings[0]


def test_native_only_keys_dropped_on_the_way_back():
    native = {"_class_name": "LongCatTransformer3DModel", "num_attention_heads": 2, "hidden_size": 8,
              "attention_head_dim": 4}
    back, notes = config_map.to_original(native)
    assert back == {"_class_name": "LongCatVideoTransformer3DModel", "num_heads": 2, "hidden_size": 8}
    assert any("attention_head_dim" in n for n in notes)


def test_wrong_class_names_are_refused():
    with pytest.raises(BadInput, match="_class_name"):
        config_map.to_native({"_class_name": "WanTransformer3DModel"})
    with pytest.raises(BadInput, match="_class_name"):
        config_map.to_original({"_class_name": "LongCatVideoTransformer3DModel", "num_attention_heads": 1})


def test_bad_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        config_map.load(p)
