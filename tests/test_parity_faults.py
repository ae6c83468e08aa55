"""The gate must be able to fail: faults planted in converted weights are
caught by parity and located at the layer they live in."""
import pytest

from parity_support import TINY_A, cli, copy_converted, needs_native, plant, read_report

pytestmark = needs_native


def _swap(a, b):
    def fault(t):
        keys = []
        for sfx in ("weight", "bias"):
            ka, kb = f"{a}.{sfx}", f"{b}.{sfx}"
            t[ka], t[kb] = t[kb].clone(), t[ka].clone()
            keys += [ka, kb]
        return keys
    return fault


def _scale(key, factor):
    def fault(t):
        t[key] = t[key] * factor
        return [key]
    return fault


def _lora_strength(factor):
    def fault(t):
        keys = [k for k in t if k.endswith(".lora_B.weight")]
        for k in keys:
            t[k] = t[k] * factor
        return keys
    return fault


@pytest.mark.parametrize("fault, where, case, first", [
    (_swap("blocks.1.self_attn.to_q", "blocks.1.self_attn.to_k"), "transformer", "t2v", "blocks.1.attn"),
    (_swap("blocks.0.cross_attn.to_k", "blocks.0.cross_attn.to_v"), "transformer", "t2v", "blocks.0.cross_attn"),
    (_scale("caption_embedder.linear_2.weight", 1.01), "transformer", "t2v", "y_embedder"),
    (_lora_strength(1.1), "lora", "t2v_lora", "blocks.0.attn"),
], ids=["qk-swapped", "kv-swapped", "caption-mlp-1pct", "lora-strength"])
def test_planted_fault_is_located(converted, tmp_path, fault, where, case, first):
    bad = copy_converted(converted["tiny-a"], tmp_path / "bad")
    plant(bad / where, fault)
    rc = cli("parity", TINY_A, bad, "--case", TINY_A / "cases" / f"{case}.safetensors",
             "--report", tmp_path / "r", "--quiet")
    rep = read_report(tmp_path / "r")
    assert rc == 1 and rep["passed"] is False
    assert rep["first_divergent"] == first
    # the layers before the fault still pass: the report points at the fault, not past it
    rows = rep["layers"]
    idx = [r["name"] for r in rows].index(first)
    assert all(r["passed"] for r in rows[:idx])
