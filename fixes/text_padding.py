"""``text-embeds-padding``: the prompt embeddings at padded positions.

FastVideo: ``fastvideo/configs/pipelines/longcat.py``, ``umt5_postprocess_text`` (the
LongCat pipeline config's ``postprocess_text_funcs``, called by
``TextEncodingStage.encode_text`` in ``fastvideo/pipelines/stages/text_encoding.py``)
keeps the encoder output at the first ``sum(mask)`` positions of each prompt and
zero-fills the rest up to 512. The original hands the DiT UMT5's
``last_hidden_state`` as it is at all 512 positions, padding included, with the mask
beside it. ``prompt_embeds`` therefore differ at every padded position (relative L2
0.9925 on the tiny bundle's text case) while the valid positions agree.

Downstream this changes nothing the DiT computes: with ``text_tokens_zero_pad=true``
both DiTs multiply the projected text by the mask, so padded positions are zero
whatever went in; with ``text_tokens_zero_pad=false`` the original never attends to
padded positions (varlen), and FastVideo does not either once ``varlen-text`` is
installed. The fix makes the embeddings FastVideo hands out (``batch.prompt_embeds``,
what a user of ``encode_text`` sees) the original's.

Fix: while ``TextEncodingStage.encode_text`` runs with a pipeline config whose
``postprocess_text_funcs`` holds ``umt5_postprocess_text``, that entry answers with
the encoder's ``last_hidden_state`` as it is, when it already has the 512 positions
FastVideo's contract asks for (LongCat's tokenizer settings pad to that length);
otherwise, and for every other config, FastVideo's function runs unchanged.
Upstream: return ``outputs.last_hidden_state`` from ``umt5_postprocess_text`` when
the tokenizer padded to the full length (pad with zeros only beyond it).

Proven by the gate step ``parity component-fixed tiny-bundle/cases/text_encoder``
(every row within the float32 policy, ``prompt_embeds`` included), and the full run
``parity pipeline-fixed tiny-bundle/cases/pipeline_t2v`` still passing.
"""
from __future__ import annotations

import functools
import inspect

from .base import Fix, wrap_method
from .series import Edit, NewFile, Patch

LENGTH = 512            # FastVideo's fixed text length for LongCat (and the original's default)


def _keep_encoder_output(stock):
    def postprocess(outputs):
        hidden = outputs.last_hidden_state
        if hidden.dim() != 3 or hidden.shape[1] != LENGTH:
            return stock(outputs)
        return hidden
    return postprocess


def _make(original, stock):
    signature = inspect.signature(original)
    replacement = _keep_encoder_output(stock)

    @functools.wraps(original)             # other wrappers read the signature through it
    def encode_text(self, *args, **kwargs):
        try:
            fastvideo_args = signature.bind(self, *args, **kwargs).arguments.get("fastvideo_args")
        except TypeError:
            return original(self, *args, **kwargs)
        pc = getattr(fastvideo_args, "pipeline_config", None)
        funcs = getattr(pc, "postprocess_text_funcs", None)
        if not isinstance(funcs, (tuple, list)) or not any(f is stock for f in funcs):
            return original(self, *args, **kwargs)
        pc.postprocess_text_funcs = type(funcs)(replacement if f is stock else f for f in funcs)
        try:
            return original(self, *args, **kwargs)
        finally:
            pc.postprocess_text_funcs = funcs
    return encode_text


def _install():
    from fastvideo.configs.pipelines.longcat import umt5_postprocess_text
    from fastvideo.pipelines.stages.text_encoding import TextEncodingStage
    return wrap_method(TextEncodingStage, "encode_text", lambda original: _make(original, umt5_postprocess_text),
                       key="text-embeds-padding")


FIX = Fix("text-embeds-padding", "LongCat's text encoding keeps UMT5's output at padded positions (the original's "
                                 "prompt embeddings), where umt5_postprocess_text zero-fills them", _install)


PATCH = Patch(
    name="text-embeds-padding",
    title="LongCat: keep UMT5's output at padded positions (the prompt embeddings LongCat-Video hands its DiT)",
    description="""\
        What: `umt5_postprocess_text` (configs/pipelines/longcat.py) returns the encoder's
        `last_hidden_state` as it is when it already has the 512 positions LongCat's DiT takes
        (the tokenizer padded to that length); otherwise it pads with zeros, as before.

        Why: the function keeps the first `sum(mask)` positions of each prompt and zero-fills the
        rest; LongCat-Video hands its DiT UMT5's output at all 512 positions, padding included,
        with the mask beside it. `prompt_embeds` differ at every padded position (relative L2
        0.9925 on longcat-convert's tiny text case) while the valid ones agree. The DiT's output
        does not change (with `text_tokens_zero_pad` it zeroes padded text; without it, padded
        positions are not attended once the varlen-text patch is in), but what `encode_text`
        hands a user does.

        Evidence: longcat-convert's gate, `parity component-fixed` of
        tiny-bundle/cases/text_encoder: every row within the float32 policy, `prompt_embeds`
        included (stock: known difference `text-embeds-padding`); the prompt-to-frames run
        (`pipeline-fixed`) still passes.

        Leaves alone: outputs shorter than 512 positions, every other encoder's postprocessing.""",
    edits=(Edit("fastvideo/configs/pipelines/longcat.py", "umt5_postprocess_text",
                "hidden_state: torch.Tensor = outputs.last_hidden_state", '''\
                    if hidden_state.dim() == 3 and hidden_state.shape[1] == 512:
                        # Already the full length: the encoder's output as it is, padded positions included
                        # (LongCat-Video's prompt embeddings; the attention mask marks the padding).
                        return hidden_state''', where="after"),),
    new_files=(NewFile("fastvideo/tests/encoders/test_longcat_umt5_postprocess.py", '''\
        # SPDX-License-Identifier: Apache-2.0
        """LongCat's UMT5 postprocessing keeps the encoder output at padded positions (CPU, no download)."""
        from types import SimpleNamespace

        import torch

        from fastvideo.configs.pipelines.longcat import umt5_postprocess_text


        def test_padded_positions_keep_the_encoder_output():
            hidden = torch.randn(2, 512, 8)
            mask = torch.zeros(2, 512, dtype=torch.long)
            mask[0, :5], mask[1, :9] = 1, 1
            out = umt5_postprocess_text(SimpleNamespace(last_hidden_state=hidden, attention_mask=mask))
            torch.testing.assert_close(out, hidden, rtol=0, atol=0)
        '''),),
    test="fastvideo/tests/encoders/test_longcat_umt5_postprocess.py",
)
FIX = Fix(FIX.finding, FIX.summary, FIX.install, PATCH)
