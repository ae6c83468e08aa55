"""Golden data for the components around the DiT, from the ORIGINAL LongCat-Video code.

    .venv/bin/python -m scripts.make_component_golden /path/to/LongCat-Video-checkout [golden/tiny-bundle]

(from the repository root: scripts/ is not installed; shared code in scripts/common.py)

Runs, on the tiny bundle (scripts/make_tiny_bundle.py), the upstream pipeline
object ``LongCatVideoPipeline`` (``longcat_video/pipeline_longcat_video.py``) with
the bundle's real tokenizer (transformers ``AutoTokenizer``), text encoder
(transformers ``UMT5EncoderModel``), the upstream repo's own ``AutoencoderKLWan``
(``longcat_video/modules/autoencoder_kl_wan.py``), its scheduler class, and the
upstream DiT (parity/upstream.py: exact attention, BSA stubbed), each loaded
with ``from_pretrained(bundle, subfolder=...)`` as the upstream demos do, CPU,
float32. It writes three cases into ``<bundle>/cases/`` (format: golden/README.md,
"Component cases"):

* ``text_encoder``: the pipeline's own ``_get_t5_prompt_embeds`` on two prompts
  (one needing the prompt cleaning, one empty, as a negative prompt often is), 512
  tokens; forward hooks on the encoder record the embedding, every block and
  sub-layer, and the final norm;
* ``vae``: the upstream VAE's ``encode`` of a smooth random 9-frame 16x32 video
  (posterior mean/std, the pipeline's ``retrieve_latents`` with a seeded
  generator, the pipeline's ``normalize_latents``) and ``decode`` of seeded random
  normalised latents [1, 16, 3, 2, 4] (the pipeline's ``denormalize_latents``,
  ``vae.decode``, ``video_processor.postprocess_video``); hooks record every
  encoder / decoder block (outputs of the per-chunk calls concatenated along time)
  and the causal-conv feature caches after the last chunk;
* ``pipeline_t2v``: the pipeline's own ``generate_t2v`` from a prompt to frames
  (32x48, 9 frames, 4 steps, CFG 4.0, seed 42, ``output_type="pt"``), recording
  the token ids, the prompt embeddings, the initial noise, every step of the loop
  (as the trajectory cases do), the final latents, the VAE's output and the frames.

Replaced at run time (nothing in the checkout is edited): ``pipe.device = "cpu"``
(the constructor says "cuda"); the DiT's flash-attn import (parity/upstream.py);
a ``loguru`` stand-in if loguru is missing. Deterministic: two runs give identical files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from reference.components import GENERATED_PIPELINE as PIPELINE, smooth_video
from scripts.common import (GOLDEN, UPSTREAM_COMMIT, Recorder, check_trajectory, generator_main, import_pipeline,
                            running, save_case)
from parity.upstream import load_upstream

BUNDLE = GOLDEN / "tiny-bundle"
MAX_LEN = 512

TEXT_PROMPTS = ["  a  blue DOG &amp;amp; the\tsea,\n slow camera  ", ""]
VIDEO_SHAPE = (1, 3, 9, 16, 32)
DECODE_LATENTS = (1, 16, 3, 2, 4)
VAE_SEED = 7


def text_encoder_rows(encoder, sublayers: bool = False) -> list[str]:
    """Hooked modules in forward order (the golden data keeps whole blocks; parity adds each
    block's self-attention and feed-forward sub-layers)."""
    rows = ["encoder.embed_tokens"]
    for i in range(len(encoder.encoder.block)):
        rows += [f"encoder.block.{i}.layer.0", f"encoder.block.{i}.layer.1"] if sublayers else []
        rows.append(f"encoder.block.{i}")
    return rows + ["encoder.final_layer_norm"]


def vae_rows(vae) -> tuple[list[str], list[str]]:
    enc = ["encoder.conv_in"] + [f"encoder.down_blocks.{i}" for i in range(len(vae.encoder.down_blocks))]
    enc += ["encoder.mid_block", "encoder.norm_out", "encoder.conv_out", "quant_conv"]
    dec = ["post_quant_conv", "decoder.conv_in", "decoder.mid_block"]
    dec += [f"decoder.up_blocks.{i}" for i in range(len(vae.decoder.up_blocks))]
    dec += ["decoder.norm_out", "decoder.conv_out"]
    return enc, dec


class Hooks:
    """Forward hooks that keep each module's outputs (first element of a tuple), per call."""

    def __init__(self, model, names):
        self.calls: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(_m, _a, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            self.calls[name].append(t.detach().float().clone())
        return hook

    def cat(self, dim: int | None) -> dict[str, torch.Tensor]:
        """One tensor per module: the single call, or the calls concatenated along ``dim``."""
        out = {}
        for n, ts in self.calls.items():
            if not ts:
                continue
            out[n] = ts[0] if len(ts) == 1 else torch.cat(ts, dim=dim)
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def cache_snapshot(feat_map) -> dict[int, torch.Tensor]:
    return {j: c.detach().float().clone() for j, c in enumerate(feat_map) if torch.is_tensor(c)}


def load_components(bundle: Path, mods):
    from transformers import AutoTokenizer, UMT5EncoderModel
    _, vae_cls, sched_cls = mods
    tok = AutoTokenizer.from_pretrained(str(bundle), subfolder="tokenizer")
    te = UMT5EncoderModel.from_pretrained(str(bundle), subfolder="text_encoder", dtype=torch.float32).eval()
    vae = vae_cls.from_pretrained(str(bundle), subfolder="vae", torch_dtype=torch.float32).eval()
    sched = sched_cls.from_pretrained(str(bundle), subfolder="scheduler")
    return tok, te, vae, sched


def _save(out_dir: Path, name: str, tensors: dict, meta: dict) -> None:
    save_case(out_dir, name, tensors, meta)
    print(f"{name}: {len(tensors)} tensors", file=sys.stderr)


def text_case(pipe_mod, bundle: Path, mods, out_dir: Path) -> None:
    tok, te, vae, sched = load_components(bundle, mods)
    pipe = pipe_mod.LongCatVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched, dit=None)
    pipe.device = "cpu"
    ids = []
    pre = te.register_forward_pre_hook(lambda _m, a: ids.append((a[0].clone(), a[1].clone())))
    hooks = Hooks(te, text_encoder_rows(te))
    emb, mask = pipe._get_t5_prompt_embeds(prompt=TEXT_PROMPTS, max_sequence_length=MAX_LEN, device="cpu",
                                           dtype=torch.float32)
    pre.remove()
    hooks.close()
    t = {f"golden.{k}": v for k, v in hooks.cat(dim=None).items()}
    t["golden.input_ids"], t["golden.attention_mask"] = ids[0][0].long(), ids[0][1].long()
    assert torch.equal(ids[0][1], mask)
    t["golden.prompt_embeds"] = emb.float()
    meta = {"case": "text_encoder", "component": "text_encoder", "prompts": TEXT_PROMPTS,
            "max_sequence_length": MAX_LEN, "rows": ["input_ids", "attention_mask", *text_encoder_rows(te),
                                                      "prompt_embeds"],
            "description": "the original pipeline's _get_t5_prompt_embeds (prompt cleaning, padding to 512, "
                           "transformers UMT5EncoderModel), 2 prompts (one needing the cleaning, one empty)",
            "upstream_commit": UPSTREAM_COMMIT}
    _save(out_dir, "text_encoder", t, meta)


def vae_case(pipe_mod, bundle: Path, mods, out_dir: Path) -> None:
    tok, te, vae, sched = load_components(bundle, mods)
    pipe = pipe_mod.LongCatVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched, dit=None)
    pipe.device = "cpu"
    gen = torch.Generator().manual_seed(VAE_SEED)
    video = smooth_video(gen, VIDEO_SHAPE)
    latents_in = torch.randn(DECODE_LATENTS, generator=gen)
    enc_rows, dec_rows = vae_rows(vae)
    t = {"input.video": video, "input.latents": latents_in}

    caches: dict[str, dict] = {}
    h_enc = Hooks(vae, enc_rows)
    snap = vae.encoder.register_forward_hook(lambda *_: caches.__setitem__("encoder", cache_snapshot(vae._enc_feat_map)))
    dist = vae.encode(video).latent_dist
    sample = pipe_mod.retrieve_latents(vae.encode(video), torch.Generator().manual_seed(VAE_SEED + 1))
    snap.remove()
    h_enc.close()
    # encode ran twice (the posterior, then retrieve_latents): keep the first run's calls
    for n in enc_rows:
        calls = h_enc.calls[n]
        h_enc.calls[n] = calls[: len(calls) // 2]
    t.update({f"golden.{k}": v for k, v in h_enc.cat(dim=2).items()})
    t["golden.latent_dist.mean"], t["golden.latent_dist.std"] = dist.mean.float(), dist.std.float()
    t["golden.latents.sample"] = sample.float()
    t["golden.latents.normalized"] = pipe.normalize_latents(sample).float()
    t.update({f"golden.encoder.feat_cache.{j}": c for j, c in caches["encoder"].items()})

    h_dec = Hooks(vae, dec_rows)
    snap = vae.decoder.register_forward_hook(lambda *_: caches.__setitem__("decoder", cache_snapshot(vae._feat_map)))
    z = pipe.denormalize_latents(latents_in)
    out = vae.decode(z, return_dict=False)[0]
    snap.remove()
    h_dec.close()
    frames = pipe.video_processor.postprocess_video(out, output_type="pt")       # [B, F, C, H, W]
    t.update({f"golden.{k}": v for k, v in h_dec.cat(dim=2).items()})
    t["golden.decode.latents"] = z.float()
    t["golden.decode.video"] = out.float()
    t["golden.frames"] = frames.permute(0, 2, 1, 3, 4).float()
    t.update({f"golden.decoder.feat_cache.{j}": c for j, c in caches["decoder"].items()})
    meta = {"case": "vae", "component": "vae", "sample_seed": VAE_SEED + 1,
            "encoder_rows": enc_rows, "decoder_rows": dec_rows,
            "encoder_feat_cache": sorted(caches["encoder"]), "decoder_feat_cache": sorted(caches["decoder"]),
            "description": "the original repo's AutoencoderKLWan: encode a smooth random 9-frame 16x32 video "
                           "(posterior, retrieve_latents with a seeded generator, normalize_latents) and decode "
                           "seeded N(0, 1) normalised latents [1, 16, 3, 2, 4] (denormalize_latents, decode, "
                           "postprocess_video)", "upstream_commit": UPSTREAM_COMMIT}
    _save(out_dir, "vae", t, meta)


def pipeline_case(pipe_mod, checkout: Path, bundle: Path, mods, out_dir: Path) -> None:
    tok, te, vae, sched = load_components(bundle, mods)
    um = load_upstream(bundle, checkout, dtype="float32", device="cpu", attention="math")
    pipe = pipe_mod.LongCatVideoPipeline(tokenizer=tok, text_encoder=te, vae=vae, scheduler=sched, dit=um.model)
    pipe.device = "cpu"
    rec = Recorder(pipe)
    ids = []
    pre = te.register_forward_pre_hook(lambda _m, a: ids.append((a[0].clone(), a[1].clone())))
    orig_encode = pipe.encode_prompt

    def encode_prompt(*a, **kw):
        pe, pm, ne, nm = orig_encode(*a, **kw)
        rec.t["input.prompt_embeds"], rec.t["input.prompt_attention_mask"] = pe.float().clone(), pm.long().clone()
        rec.t["input.negative_prompt_embeds"] = ne.float().clone()
        rec.t["input.negative_prompt_attention_mask"] = nm.long().clone()
        return pe, pm, ne, nm
    pipe.encode_prompt = encode_prompt
    decoded = {}
    orig_decode = vae.decode

    def decode(z, return_dict=True):
        out = orig_decode(z, return_dict=return_dict)
        decoded["z"], decoded["video"] = z.detach().float().clone(), (out[0] if not return_dict else out.sample)
        return out
    vae.decode = decode
    p = PIPELINE
    with running(um, pipe_mod):
        frames = pipe.generate_t2v(prompt=p["prompt"], negative_prompt=p["negative_prompt"], height=p["height"],
                                   width=p["width"], num_frames=p["num_frames"],
                                   num_inference_steps=p["num_inference_steps"], guidance_scale=p["guidance_scale"],
                                   generator=torch.Generator().manual_seed(p["seed"]), output_type="pt",
                                   max_sequence_length=MAX_LEN)
    pre.remove()
    del vae.decode
    t = dict(rec.t)
    t["output.latents"] = t[f"traj.step.{rec.steps - 1}.latents"].clone()
    (pid, pmask), (nid, nmask) = ids
    t["text.input_ids"], t["text.negative_input_ids"] = pid.long(), nid.long()
    t["decode.latents"] = decoded["z"]
    t["output.video"] = decoded["video"].detach().float().clone()
    t["output.frames"] = frames.permute(0, 2, 1, 3, 4).float().contiguous()
    meta = {"case": "pipeline_t2v", "component": "pipeline", "mode": "t2v", **p,
            "steps": p["num_inference_steps"], "use_distill": False, "num_cond_latents": 0,
            "max_sequence_length": MAX_LEN,
            "scheduler": json.loads((bundle / "scheduler" / "scheduler_config.json").read_text()),
            "description": "the original pipeline's generate_t2v on the tiny bundle, prompt to frames: real "
                           "tokenizer, UMT5, DiT, scheduler and VAE, 32x48, 9 frames, 4 steps, CFG 4.0, seed 42",
            "upstream_commit": UPSTREAM_COMMIT}
    check_trajectory(t, meta, None)
    assert rec.steps == rec.n_step_calls == p["num_inference_steps"]
    _save(out_dir, "pipeline_t2v", t, meta)


def generate(checkout: Path, bundle: Path) -> None:
    out_dir = bundle / "cases"
    mods = import_pipeline(checkout)
    pipe_mod = mods[0]
    text_case(pipe_mod, bundle, mods, out_dir)
    vae_case(pipe_mod, bundle, mods, out_dir)
    pipeline_case(pipe_mod, checkout, bundle, mods, out_dir)


def main(argv=None) -> int:
    return generator_main(__doc__, BUNDLE, generate, argv)


if __name__ == "__main__":
    sys.exit(main())
