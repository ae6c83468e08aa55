"""The original pipeline around its DiT, clean-room: prompt cleaning, tokenisation
and text encoding with its masking and padding, the VAE's latent normalisation,
VAE encode / decode, and the decoded frames.

What the original computes (LongCat-Video's ``pipeline_longcat_video.py``), as
implemented here:

* a prompt is cleaned (ftfy's text fix, HTML entities unescaped twice, outer
  whitespace stripped, every whitespace run collapsed to one space), then
  tokenised with padding to exactly ``max_sequence_length`` tokens (512 by
  default), truncation, special tokens added (the closing ``</s>``), and an
  attention mask returned;
* the UMT5 encoder (transformers' ``UMT5EncoderModel``) runs on the padded ids
  with that mask; its ``last_hidden_state`` is used AS IS for every position,
  padding included, viewed as ``[B, 1, L, C]`` and cast to the DiT's dtype; the
  mask travels beside it (the DiT zeroes padded tokens itself when
  ``text_tokens_zero_pad``);
* latents are normalised per channel with the VAE config's ``latents_mean`` and
  ``latents_std`` as ``(x - mean) * (1 / std)`` and denormalised as
  ``x / (1 / std) + mean`` (the reciprocal is taken first, in the latents' dtype);
* an encoded video's latent is ``latent_dist.sample(generator)``; a decoded
  video is the VAE's output (clamped to [-1, 1] by the VAE), turned into frames
  by ``(x * 0.5 + 0.5).clamp(0, 1)`` (diffusers' VideoProcessor).

The VAE is diffusers' ``AutoencoderKLWan``; the original ships a copy of that
file whose float32, untiled encode and decode are the same code (golden data
from the original's copy is checked against it: parity --component vae).
Frames here stay ``[B, C, F, H, W]`` (the original hands them out as
``[B, F, H, W, C]`` numpy arrays; the values are the same).
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import torch

from longcat_convert.errors import BadInput

MAX_SEQUENCE_LENGTH = 512           # the original pipeline's default (and FastVideo's fixed length)

_WS = re.compile(r"\s+")


def prompt_clean(text: str) -> str:
    import ftfy
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WS.sub(" ", text).strip()


# --------------------------------------------------------------------------- text

def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder}: no tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:   # transformers raises many kinds; one line for the user
        raise BadInput(f"{folder}: not a tokenizer transformers can load ({type(e).__name__})") from None


def load_text_encoder(folder: Path, dtype=torch.float32, device="cpu"):
    from transformers import UMT5EncoderModel
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise BadInput(f"{folder}: no text encoder (config.json missing)")
    model = UMT5EncoderModel.from_pretrained(str(folder), dtype=dtype)
    return model.to(device).eval()


def tokenize(tokenizer, prompts: list[str], max_len: int = MAX_SEQUENCE_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    cleaned = [prompt_clean(p) for p in prompts]
    t = tokenizer(cleaned, padding="max_length", max_length=max_len, truncation=True, add_special_tokens=True,
                  return_attention_mask=True, return_tensors="pt")
    return t.input_ids, t.attention_mask


def encode_tokens(encoder, ids: torch.Tensor, mask: torch.Tensor, dtype=None) -> torch.Tensor:
    """[B, L] ids and mask -> the original's prompt embeddings [B, 1, L, C]."""
    dev = next(encoder.parameters()).device
    with torch.no_grad():
        h = encoder(ids.to(dev), mask.to(dev)).last_hidden_state
    h = h.to(dtype or h.dtype)
    return h.view(h.shape[0], 1, h.shape[1], h.shape[2])


def encode_prompts(tokenizer, encoder, prompts: list[str], *, max_len: int = MAX_SEQUENCE_LENGTH, dtype=None):
    """-> (ids, mask, embeds [B, 1, L, C])."""
    ids, mask = tokenize(tokenizer, prompts, max_len)
    return ids, mask, encode_tokens(encoder, ids, mask, dtype)


# --------------------------------------------------------------------------- latents and VAE

def _stats(config, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = config.z_dim
    mean = torch.tensor(config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    inv_std = 1.0 / torch.tensor(config.latents_std).view(1, z, 1, 1, 1).to(like.device, like.dtype)
    return mean, inv_std


def normalize_latents(latents: torch.Tensor, config) -> torch.Tensor:
    mean, inv_std = _stats(config, latents)
    return (latents - mean) * inv_std


def denormalize_latents(latents: torch.Tensor, config) -> torch.Tensor:
    mean, inv_std = _stats(config, latents)
    return latents / inv_std + mean


def load_vae(folder: Path, dtype=torch.float32, device="cpu"):
    from diffusers import AutoencoderKLWan
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise BadInput(f"{folder}: no VAE (config.json missing)")
    vae = AutoencoderKLWan.from_pretrained(str(folder), torch_dtype=dtype)
    return vae.to(device).eval()


def vae_encode(vae, video: torch.Tensor, generator: torch.Generator | None):
    """video [B, 3, F, H, W] in [-1, 1] -> (posterior, sampled latent, normalised latent)."""
    with torch.no_grad():
        dist = vae.encode(video.to(vae.dtype)).latent_dist
        sample = dist.sample(generator)
    return dist, sample, normalize_latents(sample, vae.config)


def vae_decode(vae, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised latents -> (what vae.decode got, its output video in [-1, 1])."""
    z = denormalize_latents(latents.to(vae.dtype), vae.config)
    with torch.no_grad():
        video = vae.decode(z, return_dict=False)[0]
    return z, video


def to_frames(video: torch.Tensor) -> torch.Tensor:
    return (video * 0.5 + 0.5).clamp(0, 1)


# The prompt-to-frames run that `parity --component pipeline` generates when no case is given
# (the settings the recorded pipeline_t2v case was made with).
GENERATED_PIPELINE = dict(prompt="A red cat walks on the street at night.",
                          negative_prompt="blurred, static, dark",
                          height=32, width=48, num_frames=9, num_inference_steps=4, guidance_scale=4.0, seed=42)


def smooth_video(gen: torch.Generator, shape) -> torch.Tensor:
    """A smooth random video in [-1, 1] plus a little noise."""
    B, C, F, H, W = shape
    low = torch.rand(B, C, F, max(H // 8, 1), max(W // 8, 1), generator=gen)
    x = torch.nn.functional.interpolate(low, size=(F, H, W), mode="trilinear", align_corners=False)
    return ((x + 0.1 * torch.rand(shape, generator=gen)).clamp(0, 1) * 2 - 1).contiguous()
