"""The pipeline sides: one full run, prompt to frames (``parity SOURCE CONVERTED --component pipeline``).

Native: FastVideo's own LongCat pipeline, built by its public entry point
``fastvideo.pipelines.build_pipeline`` from CONVERTED (the class model_index.json
names, every component through FastVideo's loaders), run with ``pipeline.forward``
on a ``ForwardBatch`` made from a ``SamplingParam`` the way its ``VideoGenerator``
makes it: input validation (seeded generator), text encoding, timestep
preparation, latent preparation (its own noise from the seed), the LongCat
denoising loop, decoding. Nothing of it is replaced; hooks only record: the
transformer's inputs / outputs and the scheduler instance's ``step`` (as in
sampling parity), each stage's result, the VAE's decode call.

Original: the original pipeline clean-room around the same SOURCE folder --
transformers' UMT5 and tokenizer with the original's cleaning and padding, the
original's noise (``torch.randn`` of the latent shape with a generator seeded
like the native one), our reference DiT and the original's denoising loop
(reference/sampling.py), diffusers' Wan VAE with the original's
denormalisation. A golden case adds rows "<case>:golden": this original side
against the real upstream ``generate_t2v`` recorded on the same bundle
(scripts/make_component_golden.py).

What runs on a CPU needed (fastvideo 0.2.1), all public configuration except
the first two, which are the same run-time adjustments sampling parity makes:
``get_local_torch_device`` pointed at the CPU in every fastvideo module; a
pre-hook casting the bfloat16 latents the LongCat denoising stage hands a
float32 DiT back to float32 (CUDA autocast would let them through; the stage's
rounding stays visible); float32 precisions and no CPU offload in
``FastVideoArgs``. The entry point FastVideo users call, ``VideoGenerator``,
runs the same ``build_pipeline`` + ``forward`` inside worker processes; it is
not used here because its executor spawns them.
"""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import torch

from longcat_convert.errors import BadInput

from .capture import LoopObserver
from .cases import ComponentCase
from .components import component_dir
from .native import fastvideo_args

# Compared on the valid tokens only (``<row>.valid_tokens``): the padded positions differ by design.
EMBED_ROWS = ["text.prompt_embeds", "text.negative_prompt_embeds"]


def latent_shape(meta: dict, in_channels: int, t_factor: int = 4, s_factor: int = 8) -> tuple[int, ...]:
    F = int(meta["num_frames"])
    return (1, in_channels, (F - 1) // t_factor + 1, int(meta["height"]) // s_factor, int(meta["width"]) // s_factor)


def _settings(meta: dict, src_root: Path):
    from reference.sampling import Settings
    s = Settings.from_meta(dict(meta, mode="t2v"), "pipeline case", src_root)
    if meta.get("mode", "t2v") != "t2v":
        raise BadInput("the full run covers text-to-video (mode t2v)")
    return s


def run_reference_pipeline(src_root: Path, case: ComponentCase, device) -> dict[str, torch.Tensor]:
    from reference.components import (encode_prompts, load_text_encoder, load_tokenizer, load_vae, to_frames,
                                      vae_decode)
    from reference.loading import load_reference
    from reference.sampling import Inputs, sample
    meta = case.meta
    s = _settings(meta, src_root)
    max_len = int(meta.get("max_sequence_length", 512))
    tok = load_tokenizer(component_dir(src_root, "tokenizer", "source"))
    enc = load_text_encoder(component_dir(src_root, "text_encoder", "source"), device=device)
    rows: dict[str, torch.Tensor] = {}
    ids, mask, emb = encode_prompts(tok, enc, [meta["prompt"]], max_len=max_len)
    rows.update({"text.input_ids": ids, "text.attention_mask": mask, "text.prompt_embeds": emb})
    neg = nmask = None
    if s.cfg:
        nids, nmask, neg = encode_prompts(tok, enc, [meta.get("negative_prompt") or ""], max_len=max_len)
        rows.update({"text.negative_input_ids": nids, "text.negative_attention_mask": nmask,
                     "text.negative_prompt_embeds": neg})
    del enc
    dit = load_reference(src_root, device=device)
    vae = load_vae(component_dir(src_root, "vae", "source"), device=device)
    shape = latent_shape(meta, dit.config.dims.cin, vae.config.scale_factor_temporal,
                         vae.config.scale_factor_spatial)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(int(meta["seed"])), dtype=torch.float32)
    rows["latents.initial"] = latents.clone()

    def record(name, t):
        rows[name] = t.detach().float().cpu().clone()
    with torch.no_grad():
        out = sample(dit, s, Inputs(latents=latents, prompt_embeds=emb, prompt_attention_mask=mask,
                                    negative_prompt_embeds=neg, negative_prompt_attention_mask=nmask),
                     dtype=torch.float32, device=device, record=record)
        z, video = vae_decode(vae, out)
    rows.update({"decode.latents": z, "output.video": video, "output.frames": to_frames(video)})
    return {k: v.detach().cpu() for k, v in rows.items()}


def golden_rows(case: ComponentCase) -> dict[str, torch.Tensor]:
    """The upstream run's keys as rows of this report."""
    rename = {"input.prompt_embeds": "text.prompt_embeds", "input.prompt_attention_mask": "text.attention_mask",
              "input.negative_prompt_embeds": "text.negative_prompt_embeds",
              "input.negative_prompt_attention_mask": "text.negative_attention_mask",
              "input.latents": "latents.initial"}
    out = {}
    for k, v in [*((f"input.{k}", v) for k, v in case.inputs.items()), *case.golden.items()]:
        row = rename.get(k, k[len("traj."):] if k.startswith("traj.") else k)
        out[row] = v
    return out


def sampling_param(meta: dict, sigmas: str):
    from fastvideo.api.sampling_param import SamplingParam
    sp = SamplingParam(prompt=str(meta["prompt"]).strip(), negative_prompt=meta.get("negative_prompt"),
                       height=int(meta["height"]), width=int(meta["width"]), num_frames=int(meta["num_frames"]),
                       num_inference_steps=int(meta["steps"]), guidance_scale=float(meta["guidance_scale"]),
                       seed=int(meta["seed"]))
    if sp.negative_prompt is not None:
        sp.negative_prompt = sp.negative_prompt.strip()       # as VideoGenerator does
    if sigmas == "original":
        from reference.sampling import input_sigmas
        sp.sigmas = input_sigmas(int(meta["steps"]), bool(meta.get("use_distill"))).tolist()
    return sp


def forward_batch(sp, args):
    """A ForwardBatch from a SamplingParam, as fastvideo's VideoGenerator builds it."""
    from fastvideo.pipelines.pipeline_batch_info import ForwardBatch
    from fastvideo.utils import shallow_asdict
    n_tokens = ((sp.num_frames - 1) // 4 + 1) * (sp.height // 8) * (sp.width // 8)
    return ForwardBatch(**shallow_asdict(sp), eta=0.0, n_tokens=n_tokens, VSA_sparsity=args.VSA_sparsity)


def run_native_pipeline(root: Path, case: ComponentCase, device, sigmas: str) -> tuple[dict, list[str], str]:
    args = fastvideo_args(root, dtype=torch.float32, device=device)     # FastVideo's runtime first
    from fastvideo.pipelines import build_pipeline
    pipe = build_pipeline(args)
    pipe.post_init()                    # creates the stages (forward would, on its first call)
    transformer, scheduler, vae = pipe.modules["transformer"], pipe.modules["scheduler"], pipe.modules["vae"]
    text_encoder = pipe.modules["text_encoder"]
    rows: dict[str, torch.Tensor] = {}

    def put(name, t):
        rows[name] = t.detach().float().cpu().clone() if t.is_floating_point() else t.detach().cpu().clone()
    ids = []
    pre = text_encoder.register_forward_pre_hook(
        lambda _m, a, kw: ids.append((kw["input_ids"].clone(), kw["attention_mask"].clone())), with_kwargs=True)
    seen_stages = []

    def observed(stage):
        name = type(stage).__name__

        def observe(forward):                  # a layer over the stage's (bound) forward
            def run(batch, fv_args):
                return record(forward(batch, fv_args))
            return run

        def record(out):
            seen_stages.append(name)
            if name == "TextEncodingStage":
                put("text.prompt_embeds", out.prompt_embeds[0])
                put("text.attention_mask", out.prompt_attention_mask[0])
                if out.do_classifier_free_guidance:
                    put("text.negative_prompt_embeds", out.negative_prompt_embeds[0])
                    put("text.negative_attention_mask", out.negative_attention_mask[0])
            elif name == "TimestepPreparationStage":
                put("timesteps", out.timesteps)
                put("sigmas", scheduler.sigmas)
            elif name == "LatentPreparationStage":
                put("latents.initial", out.latents)
            elif name == "LongCatDenoisingStage":
                put("output.latents", out.latents)
            return out
        return observe

    def observed_decode(original_decode):
        def decode(z, *a, **kw):
            put("decode.latents", z)
            out = original_decode(z, *a, **kw)
            put("output.video", out)
            return out
        return decode
    from fixes import patching
    recorders = patching.Patches()              # record only; the one patch mechanism, undone below
    for stage in pipe.stages:
        recorders.wrap(stage, "forward", observed(stage))
    recorders.wrap(vae, "decode", observed_decode)
    obs = LoopObserver(transformer, scheduler, device)
    try:
        batch = forward_batch(sampling_param(case.meta, sigmas), args)
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            out = pipe.forward(batch, args)
    finally:
        obs.close()
        pre.remove()
        recorders.undo()
    rows.update(obs.rows)
    put("output.frames", out.output)
    if ids:
        put("text.input_ids", ids[0][0])
    if len(ids) > 1:
        put("text.negative_input_ids", ids[1][0])
    notes = [f"native: {type(pipe).__name__} built by fastvideo.pipelines.build_pipeline from {root}; stages run: "
             + " -> ".join(seen_stages)]
    if sigmas == "original":
        notes.append("--sigmas original: the original's sigmas (before the shift) handed to FastVideo through "
                     "SamplingParam.sigmas")
    return rows, notes, type(pipe).__name__


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    mse = float((a.double() - b.double()).square().mean())
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def add_valid_tokens(rows: dict, mask_row: str, emb_row: str) -> None:
    """Embeddings on the valid tokens only, in FastVideo's [B, L, C] form."""
    if emb_row not in rows or mask_row not in rows:
        return
    e = rows[emb_row]
    e = e[:, 0] if e.dim() == 4 else e
    rows[f"{emb_row}.valid_tokens"] = e * rows[mask_row].bool()[..., None]
