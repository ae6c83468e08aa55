"""Build the tiny LongCat-Video model folder ``golden/tiny-bundle``: every component
the released folder has, laid out the same way, small and deterministic.

    .venv/bin/python -m scripts.make_tiny_bundle [golden/tiny-bundle]

(from the repository root: scripts/ is not installed; shared code in scripts/common.py)

    dit/ -> ../tiny-a/dit     the tiny-a DiT (caption width 64), a relative symlink
    lora/ -> ../tiny-a/lora   its LoRA, likewise
    text_encoder/             transformers UMT5EncoderModel, d_model 64 (= the DiT's caption width),
                              2 layers, 4 heads x 16, gated-gelu FFN 128, vocab 160; config.json +
                              model.safetensors written by save_pretrained
    tokenizer/                a T5 (Unigram, SentencePiece-style) tokenizer of 106 pieces built offline
                              with the tokenizers library (pad 0, eos 1, unk 2), as transformers saves it
    vae/                      diffusers AutoencoderKLWan with the released structure (z_dim 16, dim_mult
                              [1, 2, 4, 4], 2 res blocks, temporal downsample [F, T, T], mid-block
                              attention, scale factors 4 / 8) at base_dim 8, the released Wan 2.1
                              latents_mean / latents_std; weights stored in bfloat16
    scheduler/                scheduler_config.json: FlowMatchEulerDiscreteScheduler, shift 12

Weights are drawn from one seeded generator, parameter by parameter in name order,
with scales chosen here (not the libraries' initialisers, which may change between
versions): every weight influences the output and activations stay of order 1.
Running the script twice gives identical bytes.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch

from scripts.common import GOLDEN, wan21_latent_stats

DEFAULT_OUT = GOLDEN / "tiny-bundle"
SEED = 20240611

WORDS = ("a the cat dog on in of and with is red blue green walks runs sits under over sky sea city "
         "night day man woman video slow fast camera light street").split()
CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-&;:")

TEXT_ENCODER = dict(vocab_size=160, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                    num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, scalable_attention=True, pad_token_id=0, eos_token_id=1,
                    decoder_start_token_id=0)
VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
           temperal_downsample=[False, True, True], dropout=0.0, scale_factor_temporal=4, scale_factor_spatial=8)
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.35.1",
             "num_train_timesteps": 1000, "shift": 12.0, "use_dynamic_shifting": False, "base_shift": 0.5,
             "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096, "invert_sigmas": False,
             "shift_terminal": None, "use_karras_sigmas": False, "use_exponential_sigmas": False,
             "use_beta_sigmas": False, "time_shift_type": "exponential", "stochastic_sampling": False}


def tokenizer_vocab() -> list[tuple[str, float]]:
    """(piece, log-probability) pairs: specials, whole words, then single characters."""
    sp = "\u2581"                                  # SentencePiece's word-start marker
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (sp, -2.0)]
    vocab += [(sp + w, -1.0 - 0.01 * i) for i, w in enumerate(WORDS)]
    vocab += [(c, -5.0 - 0.01 * i) for i, c in enumerate(CHARS)]
    return vocab


def make_tokenizer(out: Path):
    from transformers import T5TokenizerFast
    tok = T5TokenizerFast(vocab=tokenizer_vocab(), extra_ids=0, model_max_length=512)
    tok.save_pretrained(str(out))
    return tok


def _randomise(model: torch.nn.Module, g: torch.Generator, *, norm_spread: float = 0.1) -> None:
    """Every parameter, in name order: norms near 1, biases small, matrices / kernels
    N(0, 1/fan_in) (embeddings N(0, 1))."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name or name.endswith("gamma"):
                p.copy_(1.0 + norm_spread * torch.randn(p.shape, generator=g))
            elif name.endswith("bias") and "relative_attention_bias" not in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif "relative_attention_bias" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("shared.weight") or "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def make_text_encoder(out: Path, g: torch.Generator):
    from transformers import UMT5Config, UMT5EncoderModel
    cfg = UMT5Config(**TEXT_ENCODER)
    model = UMT5EncoderModel(cfg).eval()
    _randomise(model, g)
    model.save_pretrained(str(out), safe_serialization=True)
    return model


def make_vae(out: Path, g: torch.Generator):
    import diffusers
    mean, std = wan21_latent_stats()
    vae = diffusers.AutoencoderKLWan(**VAE, latents_mean=mean, latents_std=std).eval()
    _randomise(vae, g, norm_spread=0.2)
    vae.to(torch.bfloat16).save_pretrained(str(out), safe_serialization=True)
    return vae


def _link(target: str, at: Path) -> None:
    if at.is_symlink() or at.exists():
        if at.is_symlink() and os.readlink(at) == target:
            return
        if at.is_dir() and not at.is_symlink():
            shutil.rmtree(at)
        else:
            at.unlink()
    at.symlink_to(target, target_is_directory=True)


def build(out: Path = DEFAULT_OUT) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("text_encoder", "tokenizer", "vae", "scheduler"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    _link("../tiny-a/dit", out / "dit")
    _link("../tiny-a/lora", out / "lora")
    g = torch.Generator().manual_seed(SEED)
    make_tokenizer(out / "tokenizer")
    make_text_encoder(out / "text_encoder", g)
    make_vae(out / "vae", g)
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    return out


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_OUT
    build(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and "dit" not in p.parts
                and "lora" not in p.parts and "cases" not in p.parts)
    print(f"{out}: components {total / 1e6:.2f} MB (dit/ and lora/ link to ../tiny-a)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
