"""The component sides (``parity SOURCE CONVERTED --component text_encoder|vae``):
the ORIGINAL pipeline's text encoder and VAE against the ones FastVideo loads
from the converted bundle, layer by layer, through the one report schema.

Sides:

* original: transformers' ``UMT5EncoderModel`` and tokenizer from SOURCE, with
  the original pipeline's cleaning / padding / masking, and diffusers'
  ``AutoencoderKLWan`` from SOURCE with the pipeline's latent normalisation
  (reference/components.py);
* native: FastVideo 0.2.1's own loaders (``TokenizerLoader``,
  ``TextEncoderLoader`` -> its ``UMT5EncoderModel`` in
  fastvideo/models/encoders/t5.py, ``VAELoader`` -> its Wan VAE in
  fastvideo/models/vaes/wanvae.py) on CONVERTED's folders, run through its own
  stage code: ``TextEncodingStage.encode_text`` (LongCat's text preprocessing,
  tokenizer settings and ``umt5_postprocess_text``),
  ``LongCatImageVAEEncodingStage``'s ``retrieve_latents`` / ``normalize_latents``
  and ``DecodingStage.decode`` (denormalisation, decode, frames).

A golden case (``--case``, made by scripts/make_component_golden.py from the
ORIGINAL code) adds rows "<case>:golden": the original side against the data
recorded from the upstream pipeline and its own VAE copy, so the original side
is shown to be the original. Without a case, inputs are generated.

Rows (forward order, the same module names on both sides, where the two share
structure): text encoder -- ``input_ids``, ``attention_mask``,
``encoder.embed_tokens``, each block's ``layer.0`` (self-attention) / ``layer.1``
(feed-forward) and output, ``encoder.final_layer_norm``, the pipeline's
``prompt_embeds`` on the valid tokens and in full; VAE -- every encoder block
(outputs of the per-chunk causal calls concatenated along time), ``quant_conv``,
the causal-conv feature caches after the last chunk, the posterior, the seeded
sample, the normalised latent; then the denormalised latent, every decoder
block, the decoder's caches, the decoded video and the frames. Each component
also gets a ``weights`` row (parity/weights_check.py): FastVideo's loader must
have loaded every tensor of the folder, bit for bit, and nothing else (its
loaders skip unknown keys silently: this row is the strict check).

Run-time adjustment (fastvideo 0.2.1 on a CPU, as for the DiT): every fastvideo
module's ``get_local_torch_device`` answers ``mps`` on a CPU platform and is
pointed at the CPU (``native.point_fastvideo_at``); the loaders are asked for float32 and no CPU offload through
the public ``FastVideoArgs`` / pipeline-config fields.
"""
from __future__ import annotations

from pathlib import Path

import torch

from longcat_convert.errors import BadInput

from .capture import CallRecorder
from .cases import MAX_SEQUENCE_LENGTH, ComponentCase
from .setup import converted_root
from .weights_check import strict_text_encoder, strict_vae


def pipeline_root(converted: Path) -> Path:
    """CONVERTED's root, which must be a whole model folder (model_index.json)."""
    root = converted_root(converted)
    if not (root / "model_index.json").is_file():
        raise BadInput(f"{converted}: no model_index.json; CONVERTED must be a folder written by convert")
    return root


def component_dir(root: Path, name: str, side: str) -> Path:
    d = root / name
    if not d.is_dir():
        what = ("give the model folder that holds it as SOURCE" if side == "source" else
                "convert the model folder again with --components copy or link")
        raise BadInput(f"{d}: the {side} folder has no {name}/ ({what})")
    return d


def load_native_text(root: Path, args):
    from fastvideo.models.loader.component_loader import TextEncoderLoader, TokenizerLoader
    te_dir, tok_dir = component_dir(root, "text_encoder", "converted"), component_dir(root, "tokenizer", "converted")
    tok = TokenizerLoader().load(str(tok_dir), args)
    enc = TextEncoderLoader().load(str(te_dir), args)
    return tok, enc, strict_text_encoder(enc, te_dir)


def load_native_vae(root: Path, args):
    from fastvideo.models.loader.component_loader import VAELoader
    d = component_dir(root, "vae", "converted")
    vae = VAELoader().load(str(d), args)
    return vae, strict_vae(vae, d)


def _cache_rows(feat_map, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{j}": c.detach().float().cpu().clone() for j, c in enumerate(feat_map or [])
            if torch.is_tensor(c)}


# --------------------------------------------------------------------------- text encoder

def text_rows(n_blocks: int) -> list[str]:
    rows = ["encoder.embed_tokens"]
    for i in range(n_blocks):
        rows += [f"encoder.block.{i}.layer.0", f"encoder.block.{i}.layer.1", f"encoder.block.{i}"]
    return rows + ["encoder.final_layer_norm"]


def run_reference_text(src_root: Path, case: ComponentCase, device) -> dict[str, torch.Tensor]:
    from reference.components import load_text_encoder, load_tokenizer, tokenize, encode_tokens
    tok = load_tokenizer(component_dir(src_root, "tokenizer", "source"))
    enc = load_text_encoder(component_dir(src_root, "text_encoder", "source"), device=device)
    rec = CallRecorder(enc, text_rows(len(enc.encoder.block)))
    try:
        ids, mask = tokenize(tok, list(case.meta["prompts"]), int(case.meta.get("max_sequence_length",
                                                                             MAX_SEQUENCE_LENGTH)))
        emb = encode_tokens(enc, ids, mask)
    finally:
        rec.close()
    rows = {"input_ids": ids, "attention_mask": mask}
    rows.update(rec.rows())
    rows["prompt_embeds"] = emb.float().cpu()
    return rows


def run_native_text(tok, enc, case: ComponentCase, args) -> dict[str, torch.Tensor]:
    """FastVideo's TextEncodingStage.encode_text on the case's prompts (LongCat's preprocess
    function, its T5 tokenizer settings, the encoder, umt5_postprocess_text)."""
    from fastvideo.pipelines.stages.text_encoding import TextEncodingStage
    stage = TextEncodingStage(text_encoders=[enc], tokenizers=[tok])
    seen = {}
    pre = enc.register_forward_pre_hook(lambda _m, a, kw: seen.update(ids=kw["input_ids"].clone(),
                                                                      mask=kw["attention_mask"].clone()),
                                        with_kwargs=True)
    rec = CallRecorder(enc, text_rows(len(enc.encoder.block)))
    try:
        with torch.no_grad():
            embeds, masks = stage.encode_text(list(case.meta["prompts"]), args, return_attention_mask=True)
    finally:
        pre.remove()
        rec.close()
    rows = {"input_ids": seen["ids"].cpu(), "attention_mask": seen["mask"].cpu()}
    rows.update(rec.rows())
    rows["prompt_embeds"] = embeds[0].float().cpu()
    rows["stage_attention_mask"] = masks[0].cpu()
    return rows


def text_pairs(ref: dict, nat: dict) -> tuple[dict, dict]:
    """Both sides' text rows as judged: the embeddings on the valid tokens and in full, the
    original's [B, 1, L, C] as FastVideo's [B, L, C] (FastVideo zero-fills padded positions)."""
    mask = ref["attention_mask"].bool()
    r_emb = ref["prompt_embeds"][:, 0]
    n_emb = nat["prompt_embeds"]
    cand = {k: v for k, v in nat.items() if k not in ("prompt_embeds", "stage_attention_mask")}
    refs = {k: v for k, v in ref.items() if k != "prompt_embeds"}
    if n_emb.shape == r_emb.shape:
        cand["prompt_embeds.valid_tokens"] = n_emb * mask[..., None]
        refs["prompt_embeds.valid_tokens"] = r_emb * mask[..., None]
    cand["prompt_embeds"], refs["prompt_embeds"] = n_emb, r_emb
    return cand, refs


# --------------------------------------------------------------------------- VAE

def vae_rows(vae) -> tuple[list[str], list[str]]:
    enc = ["encoder.conv_in"] + [f"encoder.down_blocks.{i}" for i in range(len(vae.encoder.down_blocks))]
    enc += ["encoder.mid_block", "encoder.norm_out", "encoder.conv_out", "quant_conv"]
    dec = ["post_quant_conv", "decoder.conv_in", "decoder.mid_block"]
    dec += [f"decoder.up_blocks.{i}" for i in range(len(vae.decoder.up_blocks))]
    return enc, dec + ["decoder.norm_out", "decoder.conv_out"]


def _vae_run(vae, case: ComponentCase, encode, decode, enc_cache, dec_cache) -> dict[str, torch.Tensor]:
    """Shared driver: hooks, encode(video) -> (mean, std, sample, normalized), decode(latents) -> (z, video, frames)."""
    enc_rows, dec_rows = vae_rows(vae)
    caches: dict = {}
    rec = CallRecorder(vae, enc_rows)
    h = vae.encoder.register_forward_hook(lambda *_: caches.__setitem__("enc", _cache_rows(enc_cache(), "encoder.feat_cache")))
    try:
        with torch.no_grad():
            mean, std, sample, normalized = encode(case.inputs["video"])
    finally:
        rec.close()
        h.remove()
    rows = rec.rows(dim=2)
    rows.update(caches.get("enc", {}))
    rows.update({"latent_dist.mean": mean, "latent_dist.std": std, "latents.sample": sample,
                 "latents.normalized": normalized})
    rec = CallRecorder(vae, dec_rows)
    h = vae.decoder.register_forward_hook(lambda *_: caches.__setitem__("dec", _cache_rows(dec_cache(), "decoder.feat_cache")))
    try:
        with torch.no_grad():
            z, video, frames = decode(case.inputs["latents"])
    finally:
        rec.close()
        h.remove()
    rows["decode.latents"] = z
    rows.update(rec.rows(dim=2))
    rows.update(caches.get("dec", {}))
    rows.update({"decode.video": video, "frames": frames})
    return {k: v.detach().float().cpu() for k, v in rows.items()}


def run_reference_vae(src_root: Path, case: ComponentCase, device) -> dict[str, torch.Tensor]:
    from reference.components import load_vae, to_frames, vae_decode, vae_encode
    vae = load_vae(component_dir(src_root, "vae", "source"), device=device)
    seed = int(case.meta.get("sample_seed", 0))

    def encode(video):
        dist, sample, normalized = vae_encode(vae, video.to(device), torch.Generator().manual_seed(seed))
        return dist.mean, dist.std, sample, normalized

    def decode(latents):
        z, video = vae_decode(vae, latents.to(device))
        return z, video, to_frames(video)
    return _vae_run(vae, case, encode, decode, lambda: vae._enc_feat_map, lambda: vae._feat_map)


def run_native_vae(vae, case: ComponentCase, args, device) -> dict[str, torch.Tensor]:
    """FastVideo's Wan VAE through its LongCat image-encoding stage's retrieve_latents /
    normalize_latents and its DecodingStage.decode."""
    from fastvideo.pipelines.stages.decoding import DecodingStage
    from fastvideo.pipelines.stages.longcat_image_vae_encoding import LongCatImageVAEEncodingStage
    enc_stage, dec_stage = LongCatImageVAEEncodingStage(vae=vae), DecodingStage(vae=vae)
    seed = int(case.meta.get("sample_seed", 0))

    def encode(video):
        dist = vae.encode(video.to(device))
        sample = enc_stage.retrieve_latents(dist, torch.Generator().manual_seed(seed))
        return dist.mean, dist.std, sample, enc_stage.normalize_latents(sample)

    seen = {}
    original_decode = vae.decode

    def observed_decode(z, *a, **kw):
        seen["z"] = z.detach().clone()
        out = original_decode(z, *a, **kw)
        seen["video"] = out.detach().clone()
        return out

    def decode(latents):
        vae.decode = observed_decode                    # an instance attribute: records only
        try:
            frames = dec_stage.decode(latents.to(device), args)
        finally:
            del vae.decode
        return seen["z"], seen["video"], frames
    return _vae_run(vae, case, encode, decode, lambda: getattr(vae, "_enc_feat_map", None),
                    lambda: getattr(vae, "_feat_map", None))
