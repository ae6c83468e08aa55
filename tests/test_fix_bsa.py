"""The BSA fixes (fixes/bsa.py): with them FastVideo's condition split and K/V-cache
continuation are block-sparse as in the original, and each golden case of its finding
passes every row; without them the findings still show at the first self-attention;
off their paths (BSA off, one frame) the stock methods run unchanged; and they are
removed with their scope."""
from __future__ import annotations

import pytest
import torch

from parity_support import GOLDEN, TINY_A, cli, needs_native, policy_limit, read_report

pytestmark = [needs_native, pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="FastVideo's BSA kernel on the CPU runs through Triton's interpreter, which a process on a CUDA machine "
           "does not switch on")]

EXTRA = GOLDEN / "extra" / "tiny-a" / "cases"
PARAMS = {"sparsity": 0.5, "cdf_threshold": None, "chunk_3d_shape_q": [1, 2, 8], "chunk_3d_shape_k": [1, 2, 8]}


def parity(converted, tmp_path, *args):
    rc = cli("parity", TINY_A, converted["tiny-a"], *args, "--report", tmp_path, "--quiet")
    return rc, read_report(tmp_path)


@pytest.mark.parametrize("case,fix", [("bsa_i2v", "bsa-cond-split-dense"), ("bsa_kv_continue", "bsa-kv-cache-dense")])
def test_the_fix_closes_its_finding_and_stock_still_shows_it(converted, tmp_path, case, fix):
    path = EXTRA / f"{case}.safetensors"
    rc, rep = parity(converted, tmp_path / "stock", "--case", path)
    assert rc == 1 and rep["first_divergent"] == "blocks.0.attn" and rep["cases"][0]["known_difference"] == fix
    assert next(r for r in rep["layers"] if r["name"] == "blocks.0.attn")["rel_l2"] > 0.1
    rc, rep = parity(converted, tmp_path / "fixed", "--case", path, "--fixes", fix)
    assert rc == 0 and rep["passed"] and all(r["passed"] for r in rep["layers"]), rep["first_divergent"]
    assert max(r["rel_l2"] for r in rep["layers"]) <= policy_limit()
    assert [f["name"] for f in rep["fixes"]] == [fix]
    assert any(fix in n and "block-sparse" in n for n in rep["notes"])


def _attention(converted):
    """One FastVideo LongCatSelfAttention of tiny-a's shape (256 wide, 2 heads of 128), seeded weights."""
    from parity import native as nat
    cfg = nat.read_native_config(nat.transformer_dir(converted["tiny-a"]))
    attn = nat.build_native_model(dict(cfg, depth=1)).blocks[0].self_attn
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if p.ndim == 1 and p.numel() == 128 else 0.0))
    attn.bsa_params = dict(PARAMS)
    return attn


def _outputs(attn):
    """Every path the fixes touch, on a 2x4x8 token grid (T > 1) and a 1x4x8 one."""
    from parity import native as nat
    gen = torch.Generator().manual_seed(1)
    x2, x1 = torch.randn(2, 64, 256, generator=gen), torch.randn(2, 32, 256, generator=gen)
    cache = tuple(torch.randn(1, 2, 64, 128, generator=gen) for _ in range(2))       # 2 cached frames, batch 1
    with torch.no_grad(), nat.forward_context():
        split, split_kv = attn(x2, (2, 4, 8), num_cond_latents=1, return_kv=True)
        return {"split": split, "split_cache_k": split_kv[0], "split_cache_v": split_kv[1],
                "plain": attn(x2, (2, 4, 8)),
                "one_frame": attn(x1, (1, 4, 8)),
                "continue": attn.forward_with_kv_cache(x2, latent_shape=(2, 4, 8), num_cond_latents=2, kv_cache=cache),
                "continue_one_frame": attn.forward_with_kv_cache(x1, latent_shape=(1, 4, 8), num_cond_latents=2,
                                                                 kv_cache=cache)}


def test_off_their_paths_the_stock_methods_run_and_the_scope_restores_them(converted):
    import fixes
    from fastvideo.models.dits.longcat import LongCatSelfAttention
    attn = _attention(converted)
    before = (LongCatSelfAttention.forward, LongCatSelfAttention.forward_with_kv_cache)

    def run(bsa: bool) -> dict:
        attn.enable_bsa = bsa
        return _outputs(attn)
    stock = {bsa: run(bsa) for bsa in (False, True)}
    with fixes.installed("bsa-cond-split-dense,bsa-kv-cache-dense"):
        assert (LongCatSelfAttention.forward, LongCatSelfAttention.forward_with_kv_cache) != before
        fixed = {bsa: run(bsa) for bsa in (False, True)}
    assert (LongCatSelfAttention.forward, LongCatSelfAttention.forward_with_kv_cache) == before
    assert fixes.active() == []
    # BSA off: every path bit for bit stock. BSA on: the plain path (FastVideo's own BSA),
    # one-frame forwards (dense in the original too) and the K/V cache a forward returns unchanged.
    for name in stock[False]:
        assert torch.equal(fixed[False][name], stock[False][name]), name
    for name in ("plain", "one_frame", "continue_one_frame", "split_cache_k", "split_cache_v"):
        assert torch.equal(fixed[True][name], stock[True][name]), name
    # The two fixed paths: block-sparse now (stock stays dense whether BSA is on or off).
    assert torch.equal(stock[True]["split"], stock[False]["split"])
    assert torch.equal(stock[True]["continue"], stock[False]["continue"])
    for name in ("split", "continue"):
        change = (fixed[True][name] - stock[True][name]).norm() / stock[True][name].norm()
        assert change > 0.05, (name, float(change))
    # Scope over: the stock methods again.
    again = run(True)
    assert all(torch.equal(again[n], stock[True][n]) for n in again)


def test_the_fixed_paths_match_the_reference_bsa(converted):
    """The fixed split and continuation against reference/bsa.py's BSA on the same q, k, v
    (the module's own projections and RoPE), one forward each."""
    import fixes
    from reference.bsa import BsaParams, bsa_attention
    attn = _attention(converted)
    attn.enable_bsa = True
    params = BsaParams.from_dict(PARAMS)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 64, 256, generator=gen)
    cache = tuple(torch.randn(1, 2, 64, 128, generator=gen) for _ in range(2))

    def heads(t):
        return t.view(2, -1, 2, 128).transpose(1, 2)
    with torch.no_grad():
        q, k, v = (heads(p(x)[0]) for p in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.q_norm(q.transpose(1, 2)).transpose(1, 2), attn.k_norm(k.transpose(1, 2)).transpose(1, 2)
        k_pre, v_pre = k, v

        def out(o):
            return attn.to_out(o.transpose(1, 2).reshape(2, -1, 256))[0]
        qr, kr = attn.rope_3d(q, k, grid_size=(2, 4, 8))
        want_split = out(torch.cat([bsa_attention(qr[:, :, :32], kr[:, :, :32], v[:, :, :32], (1, 4, 8), (1, 4, 8),
                                                  params),
                                    bsa_attention(qr[:, :, 32:], kr, v, (1, 4, 8), (2, 4, 8), params)], dim=2))
        k_all = torch.cat([cache[0].expand(2, -1, -1, -1), k_pre], dim=2)
        v_all = torch.cat([cache[1].expand(2, -1, -1, -1), v_pre], dim=2)
        q_all, k_all = attn.rope_3d(torch.cat([torch.zeros_like(k_all[:, :, :64]), q], dim=2), k_all,
                                    grid_size=(4, 4, 8))
        want_continue = out(bsa_attention(q_all[:, :, 64:], k_all, v_all, (2, 4, 8), (4, 4, 8), params))
        from parity import native as nat
        with fixes.installed("bsa-cond-split-dense,bsa-kv-cache-dense"), nat.forward_context():
            got_split = attn(x, (2, 4, 8), num_cond_latents=1)
            got_continue = attn.forward_with_kv_cache(x, latent_shape=(2, 4, 8), num_cond_latents=2, kv_cache=cache)
    for got, want in ((got_split, want_split), (got_continue, want_continue)):
        assert ((got - want).norm() / want.norm()) <= policy_limit()
