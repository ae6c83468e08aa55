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
import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


# The tool's CPU configuration of FastVideoArgs (parity/native.py fastvideo_args): FastVideo's
# offload defaults are all on; on a CPU some of them need CUDA (docs/features.md says which).
CPU_BASE = dict(dit_cpu_offload=False, text_encoder_cpu_offload=False, vae_cpu_offload=False,
                image_encoder_cpu_offload=False, dit_layerwise_offload=False, pin_cpu_memory=False)


@dataclass
class Run:
    """One run of FastVideo's pipeline: its rows, what it built, its cost, or how it failed."""
    rows: dict = field(default_factory=dict)
    built: dict = field(default_factory=dict)
    wall_s: float = 0.0
    peak_mib: float | None = None
    error: dict | None = None        # {"phase", "type", "message", "where"}
    warnings: list[str] = field(default_factory=list)
    pipe: object = None
    built_extra: dict = field(default_factory=dict)     # evidence a ``before`` step adds
    stages: list[str] = field(default_factory=list)     # the stages that ran, in order
    exception: BaseException | None = None


def build_args(converted: Path, kwargs: dict, *, dtype, device):
    """FastVideoArgs as FastVideo's ``VideoGenerator`` builds them (``FastVideoArgs.from_kwargs``),
    from the tool's CPU base (every precision ``dtype``, offloads off) updated by ``kwargs``."""
    fastvideo_args(converted, dtype=dtype, device=device)    # FastVideo's runtime, the device adjustment
    from fastvideo.fastvideo_args import FastVideoArgs
    from longcat_convert.dtypes import short
    prec = short(dtype)
    base = dict(model_path=str(converted), dit_precision=prec, vae_precision=prec, text_encoder_precisions=(prec,),
                **CPU_BASE)
    base.update(kwargs)
    return FastVideoArgs.from_kwargs(**base)


def _stage_recorder(rows: dict, seen: list, scheduler):
    """Each stage's result as rows (text embeddings, the schedule, the initial and final latents)."""
    def put(name, t):
        rows[name] = t.detach().float().cpu().clone() if t.is_floating_point() else t.detach().cpu().clone()

    def observed(stage):
        name = type(stage).__name__

        def observe(forward):                  # a layer over the stage's (bound) forward
            def run(batch, fv_args):
                out = forward(batch, fv_args)
                seen.append(name)
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
            return run
        return observe
    return put, observed


def run_fastvideo(converted: Path, meta: dict, *, kwargs: dict | None = None, sampling: dict | None = None,
                  dtype=torch.float32, device="cpu", sigmas: str = "original", before: Callable | None = None,
                  keep_pipe: bool = False, args=None, stages: bool = False) -> Run:
    """The engine's pipeline runner, one FastVideo run: ``FastVideoArgs.from_kwargs(...)`` (or
    ``args``) -> ``build_pipeline`` -> (``before(pipe, run)``) -> ``pipeline.forward`` on the
    case's SamplingParam, as FastVideo's ``VideoGenerator`` runs it. Hooks only record: every DiT
    call and scheduler step (capture.LoopObserver), the frames, and with ``stages`` each stage's
    result, the text encoder's input ids and the VAE's decode. Exceptions become ``Run.error``
    (phase ``args``, ``build``, ``before`` or ``forward``) and ``Run.exception``."""
    import gc
    from .built import LogTap, PeakRSS, error_info, inspect
    gc.collect()                       # what earlier runs left is not counted in this one's peak
    run = Run()
    phase = "args"
    t0 = time.perf_counter()
    with PeakRSS() as mem, LogTap() as tap:
        try:
            if args is None:
                args = build_args(converted, dict(kwargs or {}), dtype=dtype, device=device)
            phase = "build"
            from fastvideo.pipelines import build_pipeline
            with contextlib.redirect_stderr(io.StringIO()):
                pipe = build_pipeline(args)
                pipe.post_init()        # creates the stages (forward would, on its first call)
            run.pipe = pipe
            if before is not None:
                phase = "before"
                before(pipe, run)
            phase = "forward"
            _forward(run, pipe, args, meta, device=device, sigmas=sigmas, sampling=sampling, stages=stages,
                     compiling=bool(getattr(args, "enable_torch_compile", False)
                                    or any(k.endswith("torch_compile") and v for k, v in (kwargs or {}).items())))
            run.built.update(inspect(pipe))
        except Exception as e:        # noqa: BLE001 -- every failure is a verdict
            run.error, run.exception = error_info(phase, e), e
            if run.pipe is not None and "modules" not in run.built:
                with contextlib.suppress(Exception):
                    run.built.update(inspect(run.pipe))
    run.wall_s = round(time.perf_counter() - t0, 2)
    run.peak_mib = mem.mib
    run.warnings = list(dict.fromkeys(tap.lines))
    if not keep_pipe:
        run.pipe = None
    return run


def _forward(run: Run, pipe, args, meta: dict, *, device, sigmas: str, sampling, stages: bool,
             compiling: bool) -> None:
    from .built import count_attention, placement
    transformer, scheduler = pipe.modules["transformer"], pipe.modules["scheduler"]
    # No recording hooks inside regions FastVideo compiles (Dynamo would trace them).
    calls, handles = ({}, []) if compiling else count_attention(transformer)
    weights_at: dict = {}

    def first_call(_m, _a, _kw):
        if not weights_at:
            weights_at.update(placement(pipe))
    handles.append(transformer.register_forward_pre_hook(first_call, with_kwargs=True))
    rows: dict = {}
    ids: list = []
    from fixes import patching
    recorders = patching.Patches()             # record only; the one patch mechanism, undone below
    if stages:
        put, observed = _stage_recorder(rows, run.stages, scheduler)
        handles.append(pipe.modules["text_encoder"].register_forward_pre_hook(
            lambda _m, a, kw: ids.append((kw["input_ids"].clone(), kw["attention_mask"].clone())), with_kwargs=True))
        for stage in pipe.stages:
            recorders.wrap(stage, "forward", observed(stage))

        def observed_decode(original_decode):
            def decode(z, *a, **kw):
                put("decode.latents", z)
                out = original_decode(z, *a, **kw)
                put("output.video", out)
                return out
            return decode
        recorders.wrap(pipe.modules["vae"], "decode", observed_decode)
    obs = LoopObserver(transformer, scheduler, device)
    sp = sampling_param(meta, sigmas)
    for k, v in (sampling or {}).items():
        setattr(sp, k, v)
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            out = pipe.forward(forward_batch(sp, args), args)
    finally:
        obs.close()
        for h in handles:
            h.remove()
        recorders.undo()
    rows.update(obs.rows)
    rows["output.frames"] = out.output.detach().float().cpu().clone()
    if ids:
        rows["text.input_ids"] = ids[0][0].detach().cpu().clone()
    if len(ids) > 1:
        rows["text.negative_input_ids"] = ids[1][0].detach().cpu().clone()
    run.rows = rows
    run.built["attention_calls"] = calls
    run.built["weights_during_step"] = weights_at


MATRIX_STEPS, MATRIX_FRAMES = 2, 5      # the bundled pipeline case, shortened (CI budget): the feature matrix and the FSDP runner


def matrix_case(case):
    """The tiny bundle's pipeline case with 2 steps and 5 frames (2 latent frames); CFG kept."""
    meta = dict(case.meta, steps=MATRIX_STEPS, num_inference_steps=MATRIX_STEPS, num_frames=MATRIX_FRAMES)
    return dataclasses.replace(case, meta=meta, golden={}, name=f"{case.name}-short")


def run_native_pipeline(root: Path, case: ComponentCase, device, sigmas: str, *, overrides: dict | None = None,
                        record: Callable | None = None) -> tuple[dict, list[str], str]:
    """``parity --component pipeline``'s native side: the pipeline runner with every stage recorded,
    built from the tool's FastVideoArgs (``native.fastvideo_args``, float32, ``overrides``: the
    ``--fastvideo`` fields). ``record(what, info)`` gets what FastVideo built."""
    args = fastvideo_args(root, dtype=torch.float32, device=device, overrides=overrides)  # FastVideo's runtime first
    run = run_fastvideo(root, case.meta, args=args, device=device, sigmas=sigmas, stages=True)
    if run.exception is not None:
        raise run.exception
    if record is not None and overrides:
        record(f"pipeline {run.built.get('pipeline')} (build_pipeline)", {k: v for k, v in run.built.items()
                                                                           if k in ("pipeline", "modules", "lora")})
    notes = [f"native: {run.built.get('pipeline')} built by fastvideo.pipelines.build_pipeline from {root}; stages "
             "run: " + " -> ".join(run.stages)]
    if sigmas == "original":
        notes.append("--sigmas original: the original's sigmas (before the shift) handed to FastVideo through "
                     "SamplingParam.sigmas")
    return run.rows, notes, run.built.get("pipeline")


def add_valid_tokens(rows: dict, mask_row: str, emb_row: str) -> None:
    """Embeddings on the valid tokens only, in FastVideo's [B, L, C] form."""
    if emb_row not in rows or mask_row not in rows:
        return
    e = rows[emb_row]
    e = e[:, 0] if e.dim() == 4 else e
    rows[f"{emb_row}.valid_tokens"] = e * rows[mask_row].bool()[..., None]
