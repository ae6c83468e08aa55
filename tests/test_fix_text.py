"""The text fixes (fixes/varlen_text.py, fixes/text_padding.py): with them every golden case of
``varlen-text`` passes every row and the tiny bundle's text encoding hands out the original's
prompt embeddings; without them each finding still shows at its row; off their paths (zero
padding on, every token valid, another postprocess function) FastVideo runs unchanged; and
they are removed with their scope."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parity_support import GOLDEN, TINY_B, cli, needs_native, policy_limit, read_report

pytestmark = needs_native

TINY_C = GOLDEN / "extra" / "tiny-c"
BUNDLE = GOLDEN / "tiny-bundle"
TEXT = BUNDLE / "cases" / "text_encoder.safetensors"


@pytest.fixture(scope="module")
def more_converted(tmp_path_factory) -> dict[str, Path]:
    """tiny-c and the tiny bundle, converted by the real converter (tiny-b is the session's)."""
    base = tmp_path_factory.mktemp("text_fixes")
    out = {}
    for name, src in (("tiny-c", TINY_C), ("tiny-bundle", BUNDLE)):
        assert cli("convert", src, base / name, "--quiet", "--no-fsync") == 0
        out[name] = base / name
    return out


def _parity(src, conv, tmp_path, *args):
    rc = cli("parity", src, conv, *args, "--report", tmp_path, "--quiet")
    return rc, read_report(tmp_path)


def _row(rep, name, case=None):
    return next(r for r in rep["layers"] if r["name"] == name and (case is None or r["case"] == case))


# ----------------------------------------------------------------------------- varlen-text, end to end

@pytest.mark.parametrize("model,case,stock_too", [("tiny-b", "varlen", True), ("tiny-c", "i2v_b2", True),
                                                  ("tiny-c", "kv_continue", False), ("tiny-c", "two_loras", False)])
def test_varlen_fix_closes_its_finding_and_stock_still_shows_it(converted, more_converted, tmp_path, model, case,
                                                                stock_too):
    src = TINY_B if model == "tiny-b" else TINY_C
    conv = converted["tiny-b"] if model == "tiny-b" else more_converted["tiny-c"]
    path = src / "cases" / f"{case}.safetensors"
    if stock_too:
        rc, rep = _parity(src, conv, tmp_path / "stock", "--case", path)
        assert rc == 1 and rep["first_divergent"] == "blocks.0.cross_attn"
        assert rep["cases"][0]["known_difference"] == "varlen-text"
        assert _row(rep, "blocks.0.cross_attn")["rel_l2"] > 0.1
    rc, rep = _parity(src, conv, tmp_path / "fixed", "--case", path, "--fixes", "varlen-text")
    assert rc == 0 and rep["passed"] and all(r["passed"] for r in rep["layers"]), rep["first_divergent"]
    assert max(r["rel_l2"] for r in rep["layers"]) <= policy_limit()
    assert [f["name"] for f in rep["fixes"]] == ["varlen-text"]


# ----------------------------------------------------------------------------- varlen-text, in process

def _native_tiny_b(converted, zero_pad: bool):
    from parity import native as nat
    from parity.setup import Setup
    from parity.sides import load_sides
    sides = load_sides(Setup(TINY_B, converted["tiny-b"]))
    sides.native.caption_embedder.text_tokens_zero_pad = zero_pad
    return nat, sides.native


def _forward(nat, model, inp, text=None):
    from dataclasses import replace
    if text is not None:
        inp = replace(inp, encoder_hidden_states=text)
    return nat.run(model, inp, torch.float32, "cpu")[0]


def test_fixed_attention_ignores_what_padded_positions_hold(converted):
    # The original's varlen semantics, stated without the reference: whatever the padded text
    # positions hold, the output does not move. Stock FastVideo attends to them.
    import fixes
    from parity.cases import load_dit
    nat, model = _native_tiny_b(converted, zero_pad=False)
    inp = load_dit(TINY_B / "cases" / "varlen.safetensors")
    mask = inp.encoder_attention_mask.bool()
    assert not mask.all() and len({int(n) for n in mask.sum(1)}) > 1           # two lengths: per-sample calls
    ehs = inp.encoder_hidden_states                                          # [B, 1, N_text, C]
    other = torch.where(mask[:, None, :, None], ehs, torch.full_like(ehs, 3.0))
    assert not torch.equal(_forward(nat, model, inp), _forward(nat, model, inp, other))
    with fixes.installed("varlen-text"):
        a, b = _forward(nat, model, inp), _forward(nat, model, inp, other)
    assert torch.equal(a, b)


def test_padded_embeddings_reach_the_dit_only_without_both_zero_pad_and_varlen(converted):
    # Why text-embeds-padding changes nothing downstream once varlen-text is in: with zero padding
    # the DiT zeroes padded positions after its caption MLP (stock, bit for bit whatever they
    # held); without it the varlen fix never attends them. Only stock FastVideo without zero
    # padding reads them (and there the original reads none of them).
    import fixes
    from parity.cases import load_dit
    inp = load_dit(TINY_B / "cases" / "varlen.safetensors")
    mask = inp.encoder_attention_mask.bool()
    ehs = inp.encoder_hidden_states
    zeroed = torch.where(mask[:, None, :, None], ehs, torch.zeros_like(ehs))   # FastVideo's stock embeddings
    nat, model = _native_tiny_b(converted, zero_pad=True)
    assert torch.equal(_forward(nat, model, inp), _forward(nat, model, inp, zeroed))
    model.caption_embedder.text_tokens_zero_pad = False
    assert not torch.equal(_forward(nat, model, inp), _forward(nat, model, inp, zeroed))
    with fixes.installed("varlen-text"):
        assert torch.equal(_forward(nat, model, inp), _forward(nat, model, inp, zeroed))


def test_varlen_fix_leaves_fastvideo_alone_off_its_path(converted):
    # Zero padding on (the released config), or every text token valid: the stock computation,
    # bit for bit.
    import fixes
    from dataclasses import replace
    from parity.cases import load_dit
    inp = load_dit(TINY_B / "cases" / "varlen.safetensors")
    nat, model = _native_tiny_b(converted, zero_pad=True)
    stock = _forward(nat, model, inp)
    with fixes.installed("varlen-text"):
        assert torch.equal(_forward(nat, model, inp), stock)
    model.caption_embedder.text_tokens_zero_pad = False
    full = replace(inp, encoder_attention_mask=torch.ones_like(inp.encoder_attention_mask))
    stock = _forward(nat, model, full)
    with fixes.installed("varlen-text"):
        assert torch.equal(_forward(nat, model, full), stock)


def test_valid_text_reads_the_masks_fastvideo_takes():
    from fixes.varlen_text import valid_text
    m = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    want = m.bool()
    assert torch.equal(valid_text(m, 2, 4), want)
    assert torch.equal(valid_text(m[:, None, None], 2, 4), want)             # [B, 1, 1, L]
    assert torch.equal(valid_text(m[:, None], 2, 4), want)                   # [B, 1, L]
    assert torch.equal(valid_text(m[:, :3], 2, 4), want)                     # short: the rest is padding
    assert torch.equal(valid_text(m, 2, 3), want[:, :3])                     # long: cut to the text
    assert valid_text(None, 2, 4) is None and valid_text(torch.ones(2, 4), 2, 4) is None
    assert valid_text(torch.tensor([[1, 0], [0, 0]]), 2, 2) is None          # a sample with no valid token
    assert valid_text(m, 3, 4) is None                                       # not this batch


# ----------------------------------------------------------------------------- text-embeds-padding

def test_text_fix_closes_its_finding_and_stock_still_shows_it(more_converted, tmp_path):
    conv = more_converted["tiny-bundle"]
    rc, rep = _parity(BUNDLE, conv, tmp_path / "stock", "--component", "text_encoder", "--case", TEXT)
    assert rc == 1 and rep["first_divergent"] == "prompt_embeds"
    assert next(c for c in rep["cases"] if c["case"] == "text_encoder")["known_difference"] == "text-embeds-padding"
    assert _row(rep, "prompt_embeds", "text_encoder")["rel_l2"] == pytest.approx(0.9925, rel=0.02)
    rc, rep = _parity(BUNDLE, conv, tmp_path / "fixed", "--component", "text_encoder", "--case", TEXT,
                      "--fixes", "text-embeds-padding")
    assert rc == 0 and rep["passed"] and all(r["passed"] for r in rep["layers"]), rep["first_divergent"]
    assert _row(rep, "prompt_embeds", "text_encoder")["rel_l2"] <= policy_limit()


def test_text_fix_answers_only_for_longcats_postprocess_and_puts_it_back():
    import fixes
    from parity import native as nat
    nat.ensure_runtime("cpu")
    from fastvideo.configs.pipelines.longcat import umt5_postprocess_text
    from fastvideo.pipelines.stages.text_encoding import TextEncodingStage

    class Outputs:
        attention_mask = torch.tensor([[1, 1, 0] + [0] * 509])
        last_hidden_state = torch.randn(1, 512, 4)

    class Config:
        def __init__(self, funcs):
            self.postprocess_text_funcs = funcs

    class Args:
        def __init__(self, funcs):
            self.pipeline_config = Config(funcs)

    seen = []

    def fake_encode_text(self, text, fastvideo_args, **kw):      # stands in for the stage's body
        seen.append(fastvideo_args.pipeline_config.postprocess_text_funcs[0](Outputs))
        return seen[-1]

    original = TextEncodingStage.__dict__["encode_text"]
    TextEncodingStage.encode_text = fake_encode_text
    try:
        stock = umt5_postprocess_text(Outputs)
        assert torch.equal(stock[0, :2], Outputs.last_hidden_state[0, :2]) and not stock[0, 2:].any()
        mine, other = Args((umt5_postprocess_text,)), Args((lambda o: "other",))
        with fixes.installed("text-embeds-padding"):
            assert TextEncodingStage.encode_text is not fake_encode_text
            assert torch.equal(TextEncodingStage.encode_text(None, "p", mine), Outputs.last_hidden_state)
            assert TextEncodingStage.encode_text(None, "p", fastvideo_args=other) == "other"
        assert mine.pipeline_config.postprocess_text_funcs == (umt5_postprocess_text,)
        assert TextEncodingStage.encode_text is fake_encode_text
    finally:
        TextEncodingStage.encode_text = original


# ----------------------------------------------------------------------------- scope

def test_text_fixes_are_scoped_and_fastvideo_is_left_as_it_was():
    import fixes
    from parity import native as nat
    nat.ensure_runtime("cpu")
    from fastvideo.models.dits.longcat import LongCatCrossAttention, LongCatTransformer3DModel
    from fastvideo.pipelines.stages.text_encoding import TextEncodingStage
    before = (LongCatTransformer3DModel.forward, LongCatCrossAttention.forward, TextEncodingStage.encode_text)
    with fixes.installed("varlen-text,text-embeds-padding") as names:
        assert names == ["varlen-text", "text-embeds-padding"] and fixes.active() == names
        now = (LongCatTransformer3DModel.forward, LongCatCrossAttention.forward, TextEncodingStage.encode_text)
        assert all(a is not b for a, b in zip(now, before))
    assert (LongCatTransformer3DModel.forward, LongCatCrossAttention.forward, TextEncodingStage.encode_text) == before
    assert fixes.active() == []
