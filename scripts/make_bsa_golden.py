"""Produce the block-sparse attention (BSA) golden cases with the REAL upstream code.

    .venv/bin/python -m scripts.make_bsa_golden /path/to/LongCat-Video-checkout [golden/extra]

(from the repository root: scripts/ is not installed; shared code in scripts/common.py)

Runs the original LongCat-Video DiT through parity/upstream.py with its REAL
``block_sparse_attention`` module (``real_bsa=True``): the chunk gating in torch
(``torch.compile``d, which needs a C compiler) and the attention in its Triton
kernel, on the CPU through Triton's interpreter (upstream.py sets
``TRITON_INTERPRET=1`` before triton is first imported). Float32, exact dense
attention elsewhere (``math``), the bundled ``golden/tiny-a`` checkpoint (head dim
128), BSA switched on at run time per case as the original pipeline does
(``dit.enable_bsa()`` with the case's ``bsa_params`` set on every block's
attention). Cases go to ``<out>/tiny-a/cases/bsa_*``; same format as the other
golden cases, with ``enable_bsa`` and ``bsa_params`` in each JSON.

Each case covers a setting the bundled ``bsa_t2v`` does not: batch 2, a CDF
threshold alone, CDF + sparsity, different q and k chunk shapes (and chunk sizes),
image-to-video (the condition split: both halves are block-sparse in the
original), a KV-cache prefill and a continuation on that cache (queries and keys
on grids of different lengths), BSA with a LoRA. Latent grids of 2x4x8 tokens
keep every file near 1 MB. Deterministic: fixed seed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from longcat_convert.table import Dims
from scripts.common import (GOLDEN, TINY_A, cache_inputs, generator_main, record_dit_case,
                            text_inputs)
from parity.upstream import load_upstream


def bsa(sparsity, cdf, chunk_q, chunk_k) -> dict:
    return {"sparsity": sparsity, "cdf_threshold": cdf, "chunk_3d_shape_q": list(chunk_q),
            "chunk_3d_shape_k": list(chunk_k)}


def generate(upstream: Path, out: Path) -> None:
    cases = out / "tiny-a" / "cases"
    gen = torch.Generator().manual_seed(20250917)
    sub = load_upstream(TINY_A, upstream, attention="math", real_bsa=True)
    dims = Dims.from_original_config(json.loads((TINY_A / "dit" / "config.json").read_text()))
    cin, cap, depth = dims.cin, dims.caption, dims.depth

    def run(name, description, params, inputs, extra=None, loras=()):
        sub.set_bsa(params)
        meta = {"description": description, **(extra or {}), "enable_bsa": True, "bsa_params": params}
        got = record_dit_case(sub, cases, name, meta, inputs, depth, loras=loras)
        sub.set_bsa(None)
        return got

    # Latent [C, 2, 8, 16] -> a (2, 4, 8) token grid (patch 1x2x2): 64 tokens.
    def latent(B, T=2):
        return torch.randn(B, cin, T, 8, 16, generator=gen)

    y, mask = text_inputs(gen, 2, 12, cap, [5, 12])
    run("bsa_b2", "BSA at B=2: sparsity 0.5, chunks [1,2,8] (4 key chunks, 2 kept), token grid 2x4x8, "
        "per-sample timesteps, zero-pad text 5 and 12 of 12",
        bsa(0.5, None, (1, 2, 8), (1, 2, 8)), {
            "input.hidden_states": latent(2), "input.timestep": torch.tensor([850.0, 125.5]),
            "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask})

    y, mask = text_inputs(gen, 1, 8, cap, [6])
    # Thresholds sit between the cumulative masses this data produces (chunk weights are near
    # uniform here), at least 5e-4 from any of them, so each query chunk's count is robust.
    run("bsa_cdf", "BSA with a CDF threshold alone (0.527, sparsity null): each query chunk keeps the key chunks "
        "whose cumulative softmax mass stays <= 0.527 (1 or 2 of 4 here), chunks [1,2,8], token grid 2x4x8",
        bsa(None, 0.527, (1, 2, 8), (1, 2, 8)), {
            "input.hidden_states": latent(1), "input.timestep": torch.tensor([500.0]),
            "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask})

    y, mask = text_inputs(gen, 1, 8, cap, [8])
    run("bsa_cdf_topk", "BSA with CDF threshold 0.5325 AND sparsity 0.75: the larger of the two counts "
        "(top-k keeps 1 of 4 key chunks, the CDF 1 or 2 here), chunks [2,2,4], token grid 2x4x8",
        bsa(0.75, 0.5325, (2, 2, 4), (2, 2, 4)), {
            "input.hidden_states": latent(1), "input.timestep": torch.tensor([300.0]),
            "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask})

    y, mask = text_inputs(gen, 1, 8, cap, [4])
    run("bsa_qk_chunks", "BSA with different q and k chunks: q [1,4,4] (16 tokens, 4 chunks), k [2,2,8] "
        "(32 tokens, 2 chunks), sparsity 0.5, token grid 2x4x8",
        bsa(0.5, None, (1, 4, 4), (2, 2, 8)), {
            "input.hidden_states": latent(1), "input.timestep": torch.tensor([640.0]),
            "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask})

    y, mask = text_inputs(gen, 1, 8, cap, [7])
    run("bsa_i2v", "BSA with image-to-video (num_cond_latents=1): the original makes both halves of the "
        "condition split block-sparse (condition frame on itself: 2 q/k chunks; noise frame on both frames: "
        "2 q chunks, 4 k chunks), sparsity 0.5, chunks [1,2,8], token grid 2x4x8, per-frame timesteps",
        bsa(0.5, None, (1, 2, 8), (1, 2, 8)), {
            "input.hidden_states": latent(1), "input.timestep": torch.tensor([[0.0, 720.0]]),
            "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask}, {"num_cond_latents": 1})

    params = bsa(0.75, None, (1, 2, 8), (1, 2, 8))
    y, _ = text_inputs(gen, 1, 6, cap, [6])
    pre = run("bsa_kv_prefill", "BSA KV-cache prefill: B=1, 2 clean frames (token grid 2x4x8), timestep 0, "
              "return_kv, skip_crs_attn, no text mask; sparsity 0.75, chunks [1,2,8] (1 of 4 key chunks kept)",
              params, {"input.hidden_states": latent(1), "input.timestep": torch.zeros(1, 2),
                       "input.encoder_hidden_states": y * 0}, {"return_kv": True, "skip_crs_attn": True})
    y, mask = text_inputs(gen, 2, 8, cap, [3, 8])
    inputs = {"input.hidden_states": latent(2), "input.timestep": torch.tensor([[900.0, 910.0], [40.0, 60.5]]),
              "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask}
    inputs.update(cache_inputs(pre, depth))
    run("bsa_kv_continue", "BSA KV-cache continuation: B=2 on the B=1 cache of bsa_kv_prefill, 2 new frames, "
        "num_cond_latents=2; queries on a 2x4x8 grid, keys on 4x4x8 (cache + new): 4 query chunks, 8 key "
        "chunks, 2 kept (sparsity 0.75, chunks [1,2,8]); per-frame timesteps, zero-pad text 3 and 8 of 8",
        params, inputs, {"num_cond_latents": 2})

    y, mask = text_inputs(gen, 1, 8, cap, [5])
    run("bsa_lora", "BSA with lora/tiny_lora.safetensors at multiplier 1.0: sparsity 0.5, chunks [2,2,4], "
        "token grid 2x4x8",
        bsa(0.5, None, (2, 2, 4), (2, 2, 4)), {
            "input.hidden_states": latent(1), "input.timestep": torch.tensor([999.0]),
            "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask},
        {"lora": "lora/tiny_lora.safetensors", "lora_multiplier": 1.0},
        loras=[(TINY_A / "lora" / "tiny_lora.safetensors", 1.0)])


def main(argv=None) -> int:
    return generator_main(__doc__, GOLDEN / "extra", generate, argv)


if __name__ == "__main__":
    sys.exit(main())
