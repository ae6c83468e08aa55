"""Produce golden/extra/: more golden cases, computed by the REAL upstream code.

    .venv/bin/python -m scripts.make_extra_golden /path/to/LongCat-Video-checkout [golden/extra]

(from the repository root: scripts/ is not installed; shared code in scripts/common.py)

Runs the original LongCat-Video DiT through parity/upstream.py (CPU,
float32, exact attention) and records the same ``act.*`` the bundled golden
data has. Paths the bundled data does not cover: another width / head count
(head_dim 16), in != out channels, bfloat16-stored weights, KV-cache prefill and
continuation (batch-1 cache broadcast to batch 2, and a batch-2 cache), a
prefill with cross-attention and offload, i2v at batch 2 with varlen text,
two LoRAs of other ranks and multipliers at once (one module targeted by both).
Deterministic: fixed seeds.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from longcat_convert.table import Dims, original_shapes
from reference.lora import HYPHEN, PREFIX
from scripts.common import (GOLDEN, TINY_A, cache_inputs, generator_main, record_dit_case,
                            text_inputs)
from parity.upstream import load_upstream

TINY_C = {
    "_class_name": "LongCatVideoTransformer3DModel", "_diffusers_version": "0.35.1",
    "in_channels": 4, "out_channels": 6, "hidden_size": 48, "depth": 2, "num_heads": 3,
    "caption_channels": 24, "mlp_ratio": 4, "adaln_tembed_dim": 16, "frequency_embedding_size": 256,
    "patch_size": [1, 2, 2], "text_tokens_zero_pad": False, "enable_flashattn3": False,
    "enable_flashattn2": True, "enable_xformers": False, "enable_bsa": False, "bsa_params": None,
    "cp_split_hw": None,
}


def random_weights(dims: Dims, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in original_shapes(dims).items():
        if key.endswith("norm.weight") or "norm" in key.split(".")[-2]:
            t = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(".bias"):
            t = 0.05 * torch.randn(shape, generator=gen)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=gen) / fan_in ** 0.5
            if "adaLN_modulation" in key:
                t = 0.5 * t
        out[key] = t
    return out


def write_checkpoint(folder: Path, cfg: dict, tensors: dict, dtype=torch.bfloat16) -> None:
    dit = folder / "dit"
    dit.mkdir(parents=True, exist_ok=True)
    (dit / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(dit / "diffusion_pytorch_model.safetensors"))


def lora_file(path: Path, targets: dict[str, tuple[int, int, int]], rank: int, alpha_scale: float,
              gen: torch.Generator) -> None:
    """targets: module -> (in, out, n up blocks)."""
    t = {}
    for module, (fin, fout, n) in targets.items():
        name = PREFIX + module.replace(".", HYPHEN)
        t[f"{name}.lora_down.weight"] = torch.randn(n * rank, fin, generator=gen) / fin ** 0.5
        if n == 1:
            t[f"{name}.lora_up.weight"] = 0.5 * torch.randn(fout, rank, generator=gen) / rank ** 0.5
        else:
            for j in range(n):
                t[f"{name}.lora_up.blocks.{j}.weight"] = 0.5 * torch.randn(fout // n, rank, generator=gen) / rank ** 0.5
        t[f"{name}.alpha_scale"] = torch.tensor(alpha_scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path))


def generate(upstream: Path, out: Path) -> None:
    gen = torch.Generator().manual_seed(20250301)

    # ---- tiny-c: another width/head count, varlen text, bf16-stored weights --------------------
    c_dir = out / "tiny-c"
    dims = Dims.from_original_config(TINY_C)
    write_checkpoint(c_dir, TINY_C, random_weights(dims, gen))
    H = dims.hidden
    lora_file(c_dir / "lora" / "rank2.safetensors", {
        "blocks.0.attn.qkv": (H, 3 * H, 3), "blocks.1.attn.qkv": (H, 3 * H, 3),
        "blocks.0.cross_attn.kv_linear": (H, 2 * H, 2), "blocks.1.adaLN_modulation.1": (dims.adaln, 6 * H, 6),
        "blocks.0.ffn.w2": (dims.ffn, H, 1), "t_embedder.mlp.0": (dims.freq, dims.adaln, 1),
        "y_embedder.y_proj.2": (H, H, 1), "final_layer.linear": (H, dims.patch_volume * dims.cout, 1),
    }, rank=2, alpha_scale=0.75, gen=gen)
    lora_file(c_dir / "lora" / "rank3.safetensors", {
        "blocks.1.attn.qkv": (H, 3 * H, 3), "blocks.0.attn.proj": (H, H, 1),
        "blocks.1.cross_attn.q_linear": (H, H, 1), "blocks.1.ffn.w1": (H, dims.ffn, 1),
        "final_layer.adaLN_modulation.1": (dims.adaln, 2 * H, 2),
    }, rank=3, alpha_scale=1.5, gen=gen)
    sub = load_upstream(c_dir, upstream, attention="math")
    cases = c_dir / "cases"
    cin, cap = dims.cin, dims.caption

    # prefill: 2 clean frames, no text (skip_crs_attn, no mask), return their K/V
    y, _ = text_inputs(gen, 1, 6, cap, [6])
    pre = record_dit_case(sub, cases, "kv_prefill", {
        "description": "KV-cache prefill: B=1, 2 clean latent frames (2x2 tokens each), timestep 0, "
                       "return_kv, skip_crs_attn, no text mask",
        "return_kv": True, "skip_crs_attn": True}, {
        "input.hidden_states": torch.randn(1, cin, 2, 4, 4, generator=gen),
        "input.timestep": torch.zeros(1, 2), "input.encoder_hidden_states": y * 0}, dims.depth)
    # continuation: 2 new frames at batch 2 on the batch-1 cache, per-frame t, varlen text
    y, mask = text_inputs(gen, 2, 6, cap, [5, 2])
    inputs = {"input.hidden_states": torch.randn(2, cin, 2, 4, 4, generator=gen),
              "input.timestep": torch.tensor([[900.0, 937.5], [250.0, 12.5]]),
              "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask}
    inputs.update(cache_inputs(pre, dims.depth))
    record_dit_case(sub, cases, "kv_continue", {
        "description": "KV-cache continuation: B=2 new frames on the B=1 cache of kv_prefill (broadcast), "
                       "num_cond_latents=2 cached frames, per-frame timesteps, varlen text 5 and 2 of 6",
        "num_cond_latents": 2}, inputs, dims.depth)
    y, mask = text_inputs(gen, 2, 7, cap, [7, 1])
    record_dit_case(sub, cases, "i2v_b2", {
        "description": "i2v at B=2: first latent frame clean (num_cond_latents=1), per-frame timesteps, "
                       "varlen text 7 and 1 of 7, 3x2x3 token grid",
        "num_cond_latents": 1}, {
        "input.hidden_states": torch.randn(2, cin, 3, 4, 6, generator=gen),
        "input.timestep": torch.tensor([[0.0, 999.0, 999.0], [0.0, 500.5, 500.5]]),
        "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask}, dims.depth)
    y, mask = text_inputs(gen, 1, 5, cap, [4])
    record_dit_case(sub, cases, "two_loras", {
        "description": "two LoRAs at once: rank 2 at multiplier 0.7 and rank 3 at -0.4 (both on blocks.1.attn.qkv)",
        "loras": [{"path": "lora/rank2.safetensors", "multiplier": 0.7},
                  {"path": "lora/rank3.safetensors", "multiplier": -0.4}]}, {
        "input.hidden_states": torch.randn(1, cin, 2, 4, 4, generator=gen),
        "input.timestep": torch.tensor([640.0]),
        "input.encoder_hidden_states": y, "input.encoder_attention_mask": mask}, dims.depth,
        loras=[(c_dir / "lora/rank2.safetensors", 0.7), (c_dir / "lora/rank3.safetensors", -0.4)])

    # ---- tiny-a (bundled checkpoint, zero-pad text): KV cache at batch 2, LoRA at 0.5 ---------
    a_src = TINY_A
    sub = load_upstream(a_src, upstream, attention="math")
    da = Dims.from_original_config(json.loads((a_src / "dit" / "config.json").read_text()))
    cases = out / "tiny-a" / "cases"
    y, mask = text_inputs(gen, 2, 5, da.caption, [3, 5])
    pre = record_dit_case(sub, cases, "kv_prefill_xattn", {
        "description": "KV-cache prefill at B=2 WITH cross-attention (zero-pad text 3 and 5 of 5), "
                       "1 clean frame of 1x2 tokens, offload_kv_cache",
        "return_kv": True, "offload_kv_cache": True}, {
        "input.hidden_states": torch.randn(2, da.cin, 1, 2, 4, generator=gen),
        "input.timestep": torch.zeros(2), "input.encoder_hidden_states": y,
        "input.encoder_attention_mask": mask}, da.depth)
    inputs = {"input.hidden_states": torch.randn(2, da.cin, 2, 2, 4, generator=gen),
              "input.timestep": torch.tensor([333.0, 781.25]), "input.encoder_hidden_states": y,
              "input.encoder_attention_mask": mask}
    inputs.update(cache_inputs(pre, da.depth))
    record_dit_case(sub, cases, "kv_continue_b2", {
        "description": "KV-cache continuation at B=2 on a B=2 cache (kv_prefill_xattn), 2 new frames, "
                       "num_cond_latents=1, scalar timesteps, zero-pad text",
        "num_cond_latents": 1}, inputs, da.depth)
    y, mask = text_inputs(gen, 1, 4, da.caption, [2])
    record_dit_case(sub, cases, "lora_half", {
        "description": "lora/tiny_lora.safetensors at multiplier 0.5, 1 frame of 1x2 tokens",
        "lora": "lora/tiny_lora.safetensors", "lora_multiplier": 0.5}, {
        "input.hidden_states": torch.randn(1, da.cin, 1, 2, 4, generator=gen),
        "input.timestep": torch.tensor([1000.0]), "input.encoder_hidden_states": y,
        "input.encoder_attention_mask": mask}, da.depth, loras=[(a_src / "lora/tiny_lora.safetensors", 0.5)])


def main(argv=None) -> int:
    return generator_main(__doc__, GOLDEN / "extra", generate, argv)


if __name__ == "__main__":
    sys.exit(main())
