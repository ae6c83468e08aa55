"""The ``sp-whole-sequence`` fix (fixes/sp_shard.py): under FastVideo's sequence parallelism
(2 CPU processes over gloo) each rank holds half of the tokens through the blocks, every row
of every rank still matches the reference, the attention work per rank halves, block-sparse
attention runs, and once the fix's scope ends FastVideo's own behaviour is back."""
import pytest

from parity_support import TINY_A, cli, needs_native, policy_limit, read_report

CASES = TINY_A / "cases"


def _sp(converted, tmp_path, *args):
    rc = cli("parity", TINY_A, converted["tiny-a"], *args, "--sp", 2, "--report", tmp_path, "--quiet")
    return rc, read_report(tmp_path)


def test_the_layout_keeps_a_run_of_every_frame_and_puts_the_ranks_back_in_order():
    import torch
    from fixes.sp_shard import Layout, holds_local_tokens, layout_for
    grid = (3, 2, 3)                                    # 3 frames of 6 tokens, 2 ranks: 3 tokens of each frame
    r0, r1 = Layout(grid, 2, 0), Layout(grid, 2, 1)
    assert r0.index.tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]
    assert r1.index.tolist() == [3, 4, 5, 9, 10, 11, 15, 16, 17]
    assert r0.tokens == 18 and r0.local_tokens == 9
    x = torch.arange(18.0)[None, :, None]
    gathered = torch.cat([r0.local(x), r1.local(x)], dim=1)     # what an all-gather hands every rank
    assert torch.equal(gathered.index_select(1, r0.global_order), x)
    assert torch.equal(x.index_select(1, r0.rank_order), gathered)
    assert [holds_local_tokens(n, output=o) for n, o in (("patch_embed", True), ("patch_embed", False),
            ("blocks.0", True), ("blocks.1.self_attn.to_out", False), ("final_layer", False),
            ("final_layer", True), ("output", True), ("t_embedder", True))] == \
        [True, False, True, True, True, False, False, False]
    assert layout_for(None, torch.zeros(1, 16, 3, 4, 6)) is None          # not installed: stock


def _fastvideo_as_it_is():
    """What the fix replaces: the LongCat module's names and the methods it wraps."""
    from parity import native as nat
    nat.ensure_runtime("cpu")
    import fastvideo.models.dits.longcat as lc
    from fastvideo.layers.rotary_embedding_3d import RotaryPositionalEmbedding3D
    return (lc.torch, lc.flash_attn_bsa_3d) + tuple(
        cls.__dict__["forward"] for cls in (lc.LongCatTransformer3DModel, lc.PatchEmbed3D, lc.FinalLayer,
                                            RotaryPositionalEmbedding3D))


@needs_native
def test_each_rank_holds_half_the_tokens_and_stock_is_back_after_the_scope(converted, tmp_path):
    import fixes
    stock = _fastvideo_as_it_is()
    rc, rep = _sp(converted, tmp_path / "fixed", "--case", CASES / "t2v.safetensors", "--fixes", "sp-whole-sequence")
    assert rc == 0 and rep["passed"] and all(r["passed"] for r in rep["layers"])
    assert [f["name"] for f in rep["fixes"]] == ["sp-whole-sequence"]
    assert [c["case"] for c in rep["cases"]] == ["t2v:1proc", "t2v:rank0", "t2v:rank1"]
    assert max(r["rel_l2"] for r in rep["layers"]) <= policy_limit()
    s = rep["sp"]
    for r in s["ranks"]:
        d = r["attention"]["self_attn.distributed"]
        # 9 of the 18 tokens go in; the all-to-all hands back every token once, with 1 of 2 heads
        assert d["tokens_in"] == [9] and d["q_len"] == [18] and d["k_len"] == [18] and d["heads"] == [1]
        assert r["attention"]["cross_attn"]["q_len"] == [9] and r["attention"]["cross_attn"]["k_len"] == [12]
    assert s["attention_work_ratio"] == pytest.approx(0.5)
    assert s["attention_work_ratio_by_kind"] == {"cross_attn": 0.5, "self_attn.distributed": 0.5}
    assert s["every_rank_whole_sequence"] is False and s["finding"] is None
    assert not any(c.get("known_difference") for c in rep["cases"])

    # The scope is over: FastVideo's own LongCat DiT again, in the same process.
    assert fixes.active() == [] and _fastvideo_as_it_is() == stock
    rc, rep = _sp(converted, tmp_path / "stock", "--case", CASES / "t2v.safetensors")
    assert rc == 0 and rep["sp"]["every_rank_whole_sequence"] is True
    assert rep["sp"]["attention_work_ratio"] == pytest.approx(1.6)


@needs_native
@pytest.mark.parametrize("args, kinds", [
    (["--case", CASES / "bsa_t2v.safetensors"], {"self_attn.bsa": 0.5, "cross_attn": 0.5}),
    (["--case", CASES / "i2v.safetensors"], {"self_attn.distributed": 0.5, "self_attn.sdpa": 0.5, "cross_attn": 0.5}),
    (["--case", CASES / "t2v.safetensors", "--kv-cache-frames", "1", "--mode", "layer"],
     {"self_attn.distributed": 0.5, "self_attn.kv_cache": 0.5, "cross_attn": 0.5}),
], ids=["bsa", "i2v-split", "kv-cache-layer"])
def test_every_path_is_sharded_and_matches(converted, tmp_path, args, kinds):
    """Block-sparse attention (stock: every rank raises sp-bsa-assert), the i2v split (the noise
    half attends to every rank's keys), a K/V-cache prefill and its continuation in layer mode
    (the cache is gathered when returned and sharded when given)."""
    rc, rep = _sp(converted, tmp_path, *args, "--fixes", "sp-whole-sequence")
    assert rc == 0, rep["first_divergent"]
    assert all(c["passed"] for c in rep["cases"]) and len(rep["cases"]) % 3 == 0
    assert rep["sp"]["attention_work_ratio_by_kind"] == pytest.approx(kinds)
    assert rep["sp"]["every_rank_whole_sequence"] is False


@needs_native
def test_the_upstream_patch_keeps_the_run_time_fixs_layout_with_its_own_edges():
    """fixes/sp_shard_code.py (what patch 0011 inserts into FastVideo) puts the ranks' shares in
    the same token order as the run-time fix's Layout, so the SP runner reassembles either the same
    way; only where the sequence is sharded and gathered differs (after the patch embedding,
    after the final layer)."""
    import torch
    from fixes.sp_shard import Layout, holds_local_tokens
    from fixes.sp_shard_code import longcat_sp_rank_order, longcat_sp_token_order
    grid = (3, 2, 4)
    shares = [Layout(grid, 2, r) for r in (0, 1)]
    x = torch.arange(24.0)[None, :, None]
    gathered = torch.cat([s.local(x) for s in shares], dim=1)
    assert torch.equal(longcat_sp_token_order(gathered, 3, 2), x)
    assert torch.equal(longcat_sp_rank_order(x, 3, 2), gathered)
    frames = x.reshape(1, 3, -1, 1)                    # longcat_sp_shard: the r-th chunk of every frame
    assert all(torch.equal(frames.chunk(2, dim=2)[r].reshape(1, -1, 1), shares[r].local(x)) for r in (0, 1))
    assert [holds_local_tokens(n, output=o, patched=True) for n, o in (("patch_embed", True), ("blocks.0", False),
            ("final_layer", False), ("final_layer", True), ("output", True))] == [False, True, True, True, False]
