"""Block-sparse attention in the reference: every BSA golden case (recorded from the
original's real BSA module) at float32, the chunk selection on hand-computable
inputs, the model switches, and the errors for what the original rejects."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from longcat_convert.errors import BadInput
from reference import load_reference
from reference.bsa import BsaParams, bsa_attention, chunk_ids, chunk_means, kept_counts, select_chunks
from reference.config import ReferenceConfig
from reference.golden import load_case, run_with_hooks

from parity_support import policy_failures

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
TINY_A = GOLDEN / "tiny-a"
CASES = ["tiny-a/cases/bsa_t2v"] + [f"extra/tiny-a/cases/bsa_{n}" for n in
                                    ("b2", "cdf", "cdf_topk", "qk_chunks", "i2v", "kv_prefill", "kv_continue", "lora")]


def rel_l2(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def params(sparsity=0.5, cdf=None, q=(1, 2, 2), k=None):
    return BsaParams.from_dict({"sparsity": sparsity, "cdf_threshold": cdf, "chunk_3d_shape_q": list(q),
                                "chunk_3d_shape_k": list(k or q)})


def dense(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


@pytest.fixture(scope="module")
def model():
    return load_reference(TINY_A)


def run_case(model, case):
    model.disable_all_loras()
    model.loras.clear()
    for i, (rel, mult) in enumerate(case.loras()):
        model.load_lora(TINY_A / rel, f"l{i}", mult)
        model.enable_loras([f"l{i}"])
    bsa = case.bsa()
    if bsa is None:
        model.disable_bsa()
    else:
        model.enable_bsa(bsa)
    try:
        return run_with_hooks(model, case)[1]
    finally:
        model.disable_bsa()
        model.disable_all_loras()


# ---- golden: the original's real BSA module --------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_bsa_golden_case_float32(model, name):
    case = load_case(GOLDEN / f"{name}.safetensors")
    assert case.bsa() is not None, "a BSA golden case says enable_bsa in its JSON"
    got = run_case(model, case)
    assert set(got) == set(case.acts)
    bad = policy_failures(got, case.acts)         # recorded in another run: the policy, not bit equality
    assert not bad, f"{name}: {bad}"


@pytest.mark.parametrize("name", CASES)
def test_bsa_golden_case_needs_bsa(model, name):
    """Dense attention cannot pass these cases: they measure BSA, not rounding."""
    case = load_case(GOLDEN / f"{name}.safetensors")
    case.meta = {k: v for k, v in case.meta.items() if k not in ("enable_bsa", "bsa_params")}
    got = run_case(model, case)
    assert rel_l2(got["act.output"], case.acts["act.output"]) > 1e-2


def test_case_bsa_accessor(tmp_path):
    src = GOLDEN / "tiny-a/cases/bsa_t2v"
    assert load_case(src.with_suffix(".safetensors")).bsa() == {
        "sparsity": 0.5, "cdf_threshold": None, "chunk_3d_shape_q": [2, 2, 4], "chunk_3d_shape_k": [2, 2, 4]}
    assert load_case(GOLDEN / "tiny-a/cases/t2v.safetensors").bsa() is None
    meta = json.loads(src.with_suffix(".json").read_text())
    for edit, want in ((lambda m: m.pop("bsa_params"), {}), (lambda m: m.update(enable_bsa=False), None)):
        m = dict(meta)
        edit(m)
        shutil.copy(src.with_suffix(".safetensors"), tmp_path / "c.safetensors")
        (tmp_path / "c.json").write_text(json.dumps(m))
        assert load_case(tmp_path / "c.safetensors").bsa() == want


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.update(enable_bsa="yes"), "enable_bsa is 'yes'"),
    (lambda m: m["bsa_params"].update(sparsity=1.5), "bsa_params.sparsity is 1.5"),
    (lambda m: m["bsa_params"].update(chunk_3d_shape_q=[2, 2]), "bsa_params.chunk_3d_shape_q"),
    (lambda m: m["bsa_params"].update(chunk_size=4), "unknown bsa_params key(s) ['chunk_size']"),
])
def test_case_bsa_bad_json(tmp_path, edit, needle):
    src = GOLDEN / "tiny-a/cases/bsa_t2v"
    meta = json.loads(src.with_suffix(".json").read_text())
    edit(meta)
    shutil.copy(src.with_suffix(".safetensors"), tmp_path / "c.safetensors")
    (tmp_path / "c.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput) as e:
        load_case(tmp_path / "c.safetensors").bsa()
    assert needle in str(e.value) and str(tmp_path / "c.json") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LONGCAT_UPSTREAM"), reason="set LONGCAT_UPSTREAM to a LongCat-Video checkout")
def test_upstream_real_bsa_reproduces_a_case():
    """The real upstream BSA module (Triton interpreter on the CPU) through the adapter."""
    from parity.upstream import load_upstream
    sub = load_upstream(TINY_A, os.environ["LONGCAT_UPSTREAM"], attention="math")
    case = load_case(GOLDEN / "extra/tiny-a/cases/bsa_qk_chunks.safetensors")
    sub.set_bsa(case.bsa())
    got = run_with_hooks(sub, case)[1]
    assert not policy_failures(got, case.acts)


# ---- chunk selection, by hand --------------------------------------------------------------

def test_chunk_numbering_is_tile_major():
    # grid (T, H, W) = (2, 2, 4), chunk (1, 2, 2): 2 x 1 x 2 tiles, numbered t-tile, h-tile, w-tile.
    ids = chunk_ids((2, 2, 4), (1, 2, 2)).view(2, 2, 4)
    assert ids.tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1]], [[2, 2, 3, 3], [2, 2, 3, 3]]]
    ids = chunk_ids((4, 2, 2), (2, 1, 2)).view(4, 2, 2)
    assert ids[:, :, 0].tolist() == [[0, 1], [0, 1], [2, 3], [2, 3]]


def test_chunk_means():
    x = torch.arange(16.0).view(1, 1, 16, 1)                  # grid (1, 4, 4): token value = its index
    m = chunk_means(x, (1, 4, 4), (1, 2, 2))[0, 0, :, 0]
    assert m.tolist() == [(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]


def _scores_for(weights, head_dim):
    """Chunk scores whose softmax at scale head_dim**-0.5 is ``weights``."""
    return (torch.tensor(weights, dtype=torch.float64).log() * math.sqrt(head_dim)).float().view(1, 1, 1, -1)


@pytest.mark.parametrize("sparsity,cdf,want", [
    (0.5, None, 2), (0.75, None, 1), (0.0, None, 4), (1.0, None, 0), (0.6, None, 1),   # int((1 - s) * 4)
    (None, 0.4, 0),      # the top chunk alone (0.5) crosses 0.4: nothing kept
    (None, 0.7, 1), (None, 0.8, 2), (None, 0.9, 3),   # cumulative 0.5, 0.75, 0.875, 1
    (0.5, 0.4, 2),       # both: the larger count (top-k wins)
    (0.75, 0.9, 3),      # both: the larger count (CDF wins)
])
def test_kept_counts(sparsity, cdf, want):
    scores = _scores_for([0.125, 0.5, 0.125, 0.25], 16)
    p = BsaParams.from_dict({"sparsity": sparsity, "cdf_threshold": cdf})
    assert kept_counts(scores, p, 16).item() == want


def test_select_chunks_keeps_the_highest_scores():
    scores = torch.tensor([[3.0, -1.0, 7.0, 0.5], [0.0, 2.0, 1.0, 5.0]]).view(1, 1, 2, 4)
    # Means such that q_mean @ k_mean^T == scores: q = rows of scores, k = identity.
    kept = select_chunks(scores[0, 0][None, None], torch.eye(4)[None, None], params(0.5))
    assert kept[0, 0].tolist() == [[True, False, True, False], [False, True, False, True]]


def test_bsa_attention_by_hand():
    """Two query chunks, two key chunks, one kept each: every query attends only to its
    chunk's kept key chunk, exactly as a dense attention over those keys."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 8, 16, generator=g)                # grid (1, 2, 4), chunks (1, 2, 2): 4 tokens each
    k = torch.randn(1, 1, 8, 16, generator=g)
    v = torch.randn(1, 1, 8, 16, generator=g)
    p = params(0.5, q=(1, 2, 2))
    out = bsa_attention(q, k, v, (1, 2, 4), (1, 2, 4), p)
    ids = chunk_ids((1, 2, 4), (1, 2, 2))
    qm, km = chunk_means(q, (1, 2, 4), (1, 2, 2)), chunk_means(k, (1, 2, 4), (1, 2, 2))
    best = (qm @ km.transpose(-1, -2))[0, 0].argmax(dim=-1)
    for i in range(8):
        keys = (ids == best[ids[i]]).nonzero().flatten()
        want = dense(q[:, :, i:i + 1], k[:, :, keys], v[:, :, keys])
        torch.testing.assert_close(out[:, :, i:i + 1], want, rtol=1e-6, atol=1e-6)


def test_bsa_keeping_everything_is_dense_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 32, 32, generator=g) for _ in range(3))
    out = bsa_attention(q, k, v, (2, 4, 4), (2, 4, 4), params(0.0, q=(1, 2, 4), k=(2, 2, 2)))
    torch.testing.assert_close(out, dense(q, k, v), rtol=1e-5, atol=1e-6)


def test_bsa_nothing_kept_is_zero():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 16, 16, generator=g) for _ in range(3))
    out = bsa_attention(q, k, v, (1, 4, 4), (1, 4, 4), params(None, cdf=0.0, q=(1, 2, 2)))
    assert out.abs().max().item() == 0.0


def test_bsa_queries_and_keys_on_grids_of_different_lengths():
    """The KV-cache shape: 2 query frames against 4 key frames (cache + new)."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 32, 16, generator=g)
    k, v = torch.randn(1, 2, 64, 16, generator=g), torch.randn(1, 2, 64, 16, generator=g)
    p = params(0.5, q=(1, 2, 4), k=(2, 2, 2))
    out = bsa_attention(q, k, v, (2, 4, 4), (4, 4, 4), p)
    kept = select_chunks(chunk_means(q, (2, 4, 4), p.chunk_q), chunk_means(k, (4, 4, 4), p.chunk_k), p)
    assert kept.shape == (1, 2, 4, 8) and kept.sum(-1).eq(4).all()
    mask = kept[:, :, chunk_ids((2, 4, 4), p.chunk_q)][:, :, :, chunk_ids((4, 4, 4), p.chunk_k)]
    s = (q @ k.transpose(-1, -2) / 4).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v, rtol=1e-6, atol=1e-6)


# ---- the model's switches ----------------------------------------------------------------

def _inputs(model, T, H=8, W=8, B=1):
    d = model.config.dims
    g = torch.Generator().manual_seed(4)
    return dict(hidden_states=torch.randn(B, d.cin, T, H, W, generator=g), timestep=torch.full((B,), 500.0),
                encoder_hidden_states=torch.randn(B, 1, 4, d.caption, generator=g))


def test_enable_disable_and_config_params(model):
    x = _inputs(model, 2)
    with torch.no_grad():
        off = model(**x)
        model.enable_bsa()                           # tiny-a's config: sparsity 0.9375, chunks [4,4,4]
        assert model.bsa_params == model.config.bsa_params
        with pytest.raises(BadInput, match=r"token grid \(T, H, W\) = \(2, 4, 4\) is not divisible"):
            model(**x)
        model.enable_bsa({"sparsity": 0.5, "chunk_3d_shape_q": [1, 2, 2], "chunk_3d_shape_k": [2, 2, 2]})
        on = model(**x)
        model.disable_bsa()
        assert model.bsa_params is None
        again = model(**x)
    assert torch.equal(off, again)
    assert rel_l2(on, off) > 1e-3


def test_single_frame_stays_dense(model):
    """The original uses BSA only for T > 1 (an image is dense)."""
    x = _inputs(model, 1)
    with torch.no_grad():
        off = model(**x)
        model.enable_bsa({"sparsity": 0.5, "chunk_3d_shape_q": [1, 2, 2], "chunk_3d_shape_k": [1, 2, 2]})
        on = model(**x)
        model.disable_bsa()
    assert torch.equal(on, off)


def _config(**edits):
    cfg = json.loads((TINY_A / "dit/config.json").read_text())
    cfg.update(edits)
    return cfg


def test_config_enable_bsa_builds_with_bsa_on(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(TINY_A, dst)
    (dst / "dit/config.json").write_text(json.dumps(_config(enable_bsa=True)))
    m = load_reference(dst)
    assert all(b.attn.enable_bsa for b in m.blocks) and m.bsa_params.sparsity == 0.9375
    # the per-run switch golden-check and parity use: a case's params, then back to the config's
    m.set_bsa({"sparsity": 0.5})
    assert m.bsa_params.sparsity == 0.5 and m.bsa_params.chunk_q == (4, 4, 8)   # the original's defaults
    m.set_bsa(None)
    assert m.bsa_params == m.config.bsa_params
    plain = load_reference(TINY_A)
    plain.set_bsa({})
    assert plain.bsa_params == plain.config.bsa_params
    plain.set_bsa(None)
    assert plain.bsa_params is None


@pytest.mark.parametrize("edits,needle", [
    (dict(enable_bsa=True, bsa_params=None), "enable_bsa is true but bsa_params is null"),
    (dict(enable_bsa=True, hidden_size=192, num_heads=4), "needs a head dim in {16, 32, 64, 128, 256}"),
    (dict(enable_bsa=1), "enable_bsa is 1; expected true or false"),
    (dict(bsa_params={"sparsity": None, "cdf_threshold": None}), "needs sparsity or cdf_threshold"),
    (dict(bsa_params={"sparsity": 0.5, "chunk_3d_shape_q": [3, 2, 2]}), "covers 12 tokens"),
    (dict(bsa_params={"sparsity": -0.1}), "bsa_params.sparsity is -0.1"),
    (dict(bsa_params={"sparsity": "high"}), "bsa_params.sparsity is 'high'"),
    (dict(bsa_params=[0.5]), "expected an object"),
])
def test_config_errors(edits, needle):
    with pytest.raises(BadInput) as e:
        ReferenceConfig.from_original(_config(**edits), "dit/config.json")
    assert needle in str(e.value) and str(e.value).startswith("dit/config.json: ") and "\n" not in str(e.value)


def test_runtime_errors(model):
    with pytest.raises(BadInput, match="config.json has no bsa_params"):
        cfg = ReferenceConfig.from_original(_config(bsa_params=None))
        type(model)(cfg, depth=1).enable_bsa()
    q = torch.zeros(1, 1, 16, 48)
    with pytest.raises(BadInput, match="head dim in {16, 32, 64, 128, 256}.*this model's is 48"):
        bsa_attention(q, q, q, (1, 4, 4), (1, 4, 4), params(q=(1, 2, 2)))
    q = torch.zeros(1, 1, 24, 16)
    with pytest.raises(BadInput, match=r"key token grid .* \(1, 4, 6\) is not divisible by bsa_params.chunk_3d_shape_k \[1, 2, 4\]"):
        bsa_attention(q[:, :, :16], q, q, (1, 4, 4), (1, 4, 6), params(q=(1, 2, 2), k=(1, 2, 4)))
    x = _inputs(model, 2, H=8, W=12)
    model.enable_bsa({"sparsity": 0.5, "chunk_3d_shape_q": [1, 2, 4], "chunk_3d_shape_k": [1, 2, 4]})
    try:
        with pytest.raises(BadInput, match=r"query token grid \(T, H, W\) = \(2, 4, 6\) is not divisible"):
            model(**x)
    finally:
        model.disable_bsa()
