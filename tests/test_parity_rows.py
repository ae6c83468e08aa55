"""Row order is defined once (parity/rows.py): every kind of row sorts in run order."""
from __future__ import annotations

import random

from parity.rows import is_loop_row, ordered


def _shuffled(names):
    out = list(names)
    random.Random(0).shuffle(out)
    return out


def test_a_pipeline_run_reads_from_prompt_to_frames():
    run = ["weights.vae", "text.input_ids", "text.attention_mask", "text.negative_input_ids",
           "text.negative_attention_mask", "text.prompt_embeds.valid_tokens", "text.prompt_embeds",
           "text.negative_prompt_embeds.valid_tokens", "latents.initial", "timesteps", "sigmas",
           "step.0.timestep", "step.0.dit_in", "step.0.dit_out", "step.0.noise_pred", "step.0.latents",
           "step.1.timestep", "step.10.dit_in", "output.latents", "decode.latents", "output.video", "output.frames"]
    assert ordered(_shuffled(run)) == run


def test_dit_layers_follow_the_forward_with_caches_after_their_self_attention():
    run = ["x_embedder", "t_embedder", "y_embedder", "blocks.0.attn", "blocks.0.attn.kv_cache.k",
           "blocks.0.attn.kv_cache.v", "blocks.0.cross_attn", "blocks.0.ffn", "blocks.0", "blocks.2.attn",
           "blocks.2", "blocks.10.attn", "blocks.10", "final_layer", "output"]
    assert ordered(_shuffled(run)) == run


def test_a_loop_prefills_its_cache_after_the_schedule_and_before_the_first_step():
    run = ["timesteps", "sigmas", "kv_cache.0.k", "kv_cache.0.v", "kv_cache.1.k", "step.0.timestep",
           "output.latents"]
    assert ordered(_shuffled(run)) == run
    assert all(is_loop_row(r) for r in run) and not is_loop_row("blocks.0.attn")


def test_component_rows_text_encoder_then_vae_encode_then_decode():
    text = ["input_ids", "attention_mask", "encoder.embed_tokens", "encoder.block.0.layer.0",
            "encoder.block.0.layer.1", "encoder.block.0", "encoder.block.1.layer.0", "encoder.block.1",
            "encoder.final_layer_norm", "prompt_embeds.valid_tokens", "prompt_embeds"]
    vae = ["encoder.conv_in", "encoder.down_blocks.0", "encoder.down_blocks.2", "encoder.mid_block",
           "encoder.norm_out", "encoder.conv_out", "quant_conv", "encoder.feat_cache.0", "encoder.feat_cache.11",
           "latent_dist.mean", "latent_dist.std", "latents.sample", "latents.normalized", "decode.latents",
           "post_quant_conv", "decoder.conv_in", "decoder.mid_block", "decoder.up_blocks.0", "decoder.up_blocks.3",
           "decoder.norm_out", "decoder.conv_out", "decoder.feat_cache.2", "decode.video", "frames"]
    assert ordered(_shuffled(text)) == text
    assert ordered(_shuffled(vae)) == vae


def test_unknown_names_come_last_in_a_stable_order():
    assert ordered(["zzz", "output", "1proc", "x_embedder"]) == ["x_embedder", "output", "1proc", "zzz"]
