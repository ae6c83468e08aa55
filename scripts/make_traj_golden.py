"""Produce golden sampling trajectories by running the ORIGINAL LongCat-Video pipeline.

    .venv/bin/python -m scripts.make_traj_golden /path/to/LongCat-Video-checkout [golden/extra]

(from the repository root: scripts/ is not installed; shared code in scripts/common.py)

Builds the upstream pipeline object (``LongCatVideoPipeline`` from
``longcat_video/pipeline_longcat_video.py``) around the upstream DiT loaded from
``golden/tiny-a`` through parity/upstream.py (CPU, float32, exact attention),
the upstream ``FlowMatchEulerDiscreteScheduler`` (shift 12, 1000 train steps) and
a tiny randomly initialised upstream ``AutoencoderKLWan``, then runs its own
``generate_t2v`` / ``generate_i2v`` / ``generate_vc`` / ``generate_refine`` with
``output_type="latent"`` and records what the denoising loop did.

Nothing in the checkout is edited. What is swapped at run time (on the pipeline
instance unless stated) is listed in ``PATCHES`` below and in
golden/extra/README.md. Case format: golden/extra/README.md, "Sampling
trajectories". Deterministic: fixed seeds.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scripts.common import (GOLDEN, TINY_A, UPSTREAM_COMMIT, Recorder, check_trajectory, generator_main,
                            import_pipeline, running, save_case, text_inputs, wan21_latent_stats)
from parity.upstream import load_upstream

LORA = "lora/tiny_lora.safetensors"
TEXT_LEN = 12                  # text tokens per prompt (max_sequence_length passed to the pipeline)
CAPTION_CH = 64                # tiny-a caption_channels
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 12.0, "num_train_timesteps": 1000}
VAE_SEED = 1234
VAE_CONFIG = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True], scale_factor_temporal=4, scale_factor_spatial=8)
SMALL_HW = (64, 80)            # pixel grid the condition-shape lookup returns in i2v / vc (latent 8 x 10)
REFINE_HW = (64, 128)          # the same for refine (must be a multiple of 64 there; latent 8 x 16)

PATCHES = [
    "pipe.device = 'cpu' (the constructor hard-codes 'cuda')",
    "pipe.encode_prompt -> returns the fixed embeddings/masks stored in the case",
    "pipe.tokenizer = None; pipe.text_encoder = stand-in with config.d_model = 64 (read by the KV-cache prefill)",
    "pipe.get_condition_shape -> fixed small pixel grid (64x80 for i2v/vc, 64x128 for refine)",
    "module-level torch_gc of pipeline_longcat_video -> no-op during refine (it calls torch.cuda.ipc_collect)",
    "sys.modules['loguru'] stand-in when loguru is not installed (the pipeline only logs a warning with it)",
    "sys.modules['flash_attn'] stand-in computing exact attention, BSA import stubbed (parity/upstream.py)",
]


# ---------------------------------------------------------------------------- building

def make_vae(vae_cls):
    mean, std = wan21_latent_stats()
    torch.manual_seed(VAE_SEED)
    vae = vae_cls(**VAE_CONFIG, latents_mean=mean, latents_std=std)
    return vae.eval()


def build(checkout: Path, mods, *, seed: int, batch: int, cfg: bool, valid: list[int], neg_valid: list[int],
          hw: tuple[int, int] | None, lora: float | None):
    pipe_mod, vae_cls, sched_cls = mods
    um = load_upstream(TINY_A, checkout, dtype="float32", device="cpu", attention="math")
    if lora is not None:
        um.set_loras([(TINY_A / LORA, lora)])
    sched = sched_cls(shift=SCHEDULER["shift"], num_train_timesteps=SCHEDULER["num_train_timesteps"])
    text_encoder = types.SimpleNamespace(config=types.SimpleNamespace(d_model=CAPTION_CH), dtype=torch.float32)
    pipe = pipe_mod.LongCatVideoPipeline(tokenizer=None, text_encoder=text_encoder, vae=make_vae(vae_cls),
                                         scheduler=sched, dit=um.model)
    pipe.device = "cpu"

    gen = torch.Generator().manual_seed(seed + 1000)
    pe, pm = text_inputs(gen, batch, TEXT_LEN, CAPTION_CH, valid)
    ne, nm = text_inputs(gen, batch, TEXT_LEN, CAPTION_CH, neg_valid) if cfg else (None, None)

    def encode_prompt(prompt, negative_prompt=None, do_classifier_free_guidance=True, num_videos_per_prompt=1,
                      max_sequence_length=512, device=None, dtype=None):
        n = 1 if isinstance(prompt, str) else len(prompt)
        assert n == batch and num_videos_per_prompt == 1 and max_sequence_length == TEXT_LEN
        assert do_classifier_free_guidance == cfg
        if not do_classifier_free_guidance:
            return pe.clone(), pm.clone(), None, None
        return pe.clone(), pm.clone(), ne.clone(), nm.clone()
    pipe.encode_prompt = encode_prompt

    if hw is not None:
        pipe.get_condition_shape = lambda condition, resolution, scale_factor_spatial=32: hw

    rec = Recorder(pipe)
    rec.t["input.prompt_embeds"], rec.t["input.prompt_attention_mask"] = pe, pm
    if cfg:
        rec.t["input.negative_prompt_embeds"], rec.t["input.negative_prompt_attention_mask"] = ne, nm
    return pipe, um, rec, pipe_mod


def images(gen: torch.Generator, n: int, h: int, w: int) -> list[Image.Image]:
    """n random RGB frames: a smooth random field plus a little noise (uint8)."""
    out = []
    for _ in range(n):
        low = torch.rand(3, max(h // 8, 1), max(w // 8, 1), generator=gen)
        x = torch.nn.functional.interpolate(low[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        x = (x + 0.1 * torch.rand(3, h, w, generator=gen)).clamp(0, 1)
        out.append(Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
    return out


# ---------------------------------------------------------------------------- cases

def run_case(checkout, mods, out_dir: Path, name: str, mode: str, *, seed: int, batch: int = 1,
             guidance: float = 4.0, steps: int = 4, use_distill: bool = False, lora: float | None = None,
             valid=(9,), neg_valid=(4,), description: str, **kw) -> None:
    cfg = guidance > 1.0 and mode != "refine"
    hw = {"t2v": None, "i2v": SMALL_HW, "vc": SMALL_HW, "refine": REFINE_HW}[mode]
    pipe, um, rec, pipe_mod = build(checkout, mods, seed=seed, batch=batch, cfg=cfg, valid=list(valid),
                                    neg_valid=list(neg_valid), hw=hw, lora=lora)
    prompt = "a prompt" if batch == 1 else [f"prompt {b}" for b in range(batch)]
    neg = None if not cfg else ("a negative prompt" if batch == 1 else [f"negative {b}" for b in range(batch)])
    gen = torch.Generator().manual_seed(seed)
    pix = torch.Generator().manual_seed(seed + 2000)
    torch.manual_seed(seed)                         # refine draws from the global generator
    meta = {"case": name, "description": description, "mode": mode, "steps": steps, "guidance_scale": guidance,
            "use_distill": use_distill}
    common = dict(prompt=prompt, num_inference_steps=steps, generator=gen, output_type="latent",
                  max_sequence_length=TEXT_LEN)
    with running(um, pipe_mod):
        if mode == "t2v":
            h, w = kw.get("hw", SMALL_HW)
            out = pipe.generate_t2v(negative_prompt=neg, height=h, width=w, num_frames=kw["num_frames"],
                                    use_distill=use_distill, guidance_scale=guidance, **common)
            meta.update(num_cond_latents=0, num_frames=kw["num_frames"], height=h, width=w)
        elif mode == "i2v":
            ims = images(pix, batch, *SMALL_HW)
            out = pipe.generate_i2v(image=ims[0] if batch == 1 else ims, negative_prompt=neg,
                                    num_frames=kw["num_frames"], use_distill=use_distill,
                                    guidance_scale=guidance, **common)
            meta.update(num_cond_latents=1, num_frames=kw["num_frames"], height=SMALL_HW[0], width=SMALL_HW[1])
        elif mode == "vc":
            video = images(pix, kw["video_frames"], *SMALL_HW)
            out = pipe.generate_vc(video=video, negative_prompt=neg, num_frames=kw["num_frames"],
                                   num_cond_frames=kw["num_cond_frames"], use_distill=use_distill,
                                   guidance_scale=guidance, use_kv_cache=kw["use_kv_cache"],
                                   offload_kv_cache=False, enhance_hf=kw["enhance_hf"], **common)
            meta.update(enhance_hf=kw["enhance_hf"], use_kv_cache=kw["use_kv_cache"],
                        num_cond_latents=1 + (kw["num_cond_frames"] - 1) // 4, num_frames=kw["num_frames"],
                        num_cond_frames=kw["num_cond_frames"], height=SMALL_HW[0], width=SMALL_HW[1])
        elif mode == "refine":
            stage1 = images(pix, kw["stage1_frames"], 32, 64)
            out = pipe.generate_refine(stage1_video=stage1, num_cond_frames=0, t_thresh=kw["t_thresh"], **common)
            meta.update(num_cond_latents=0, t_thresh=kw["t_thresh"], stage1_frames=kw["stage1_frames"],
                        spatial_refine_only=False, height=REFINE_HW[0], width=REFINE_HW[1])
        else:
            raise ValueError(mode)
    rec.t["output.latents"] = out.detach().clone().float()
    meta["scheduler"] = dict(SCHEDULER)
    if lora is not None:
        meta.update(lora=LORA, lora_multiplier=lora)
    meta.update(seed=seed, upstream_commit=UPSTREAM_COMMIT)
    check_trajectory(rec.t, meta, rec.prefill_in)
    assert rec.steps == rec.n_step_calls == rec.t["traj.timesteps"].shape[0]
    for k, v in rec.t.items():
        assert v.dtype == (torch.int64 if k.endswith("attention_mask") else torch.float32), k
    save_case(out_dir, name, rec.t, meta)
    print(f"{name}: {mode}, loop steps {rec.steps}, latents {tuple(rec.t['input.latents'].shape)}", file=sys.stderr)


def probe_cfg_batch2(checkout, mods) -> None:
    """The original CFG-zero* code reshapes its per-sample scale to [B, 1, 1, 1] and multiplies it with
    [B, C, T, H, W] predictions: at B > 1 that cannot broadcast (B lines up with C). Confirm it fails, so
    that the batch-2 cases are run without CFG for a stated reason."""
    pipe, um, _, pipe_mod = build(checkout, mods, seed=0, batch=2, cfg=True, valid=[9, 5], neg_valid=[3, 6],
                                  hw=None, lora=None)
    try:
        with running(um, pipe_mod):
            pipe.generate_t2v(prompt=["p0", "p1"], negative_prompt=["n0", "n1"], height=SMALL_HW[0],
                              width=SMALL_HW[1], num_frames=13, num_inference_steps=1, guidance_scale=4.0,
                              generator=torch.Generator().manual_seed(0), output_type="latent",
                              max_sequence_length=TEXT_LEN)
    except RuntimeError as e:
        print(f"as expected, the original CFG at batch 2 fails: {e}", file=sys.stderr)
        return
    raise AssertionError("the original pipeline ran CFG at batch 2: make the batch-2 cases CFG cases")


def generate(checkout: Path, out: Path) -> None:
    out_dir = out / "tiny-a" / "cases"
    mods = import_pipeline(checkout)
    probe_cfg_batch2(checkout, mods)
    run_case(checkout, mods, out_dir, "traj_t2v_b2", "t2v", seed=21, batch=2, guidance=1.0, valid=(9, 5),
             num_frames=13, description="t2v, batch 2 (9 and 5 valid text tokens), guidance 1.0 (no CFG: the "
                                        "original's CFG fails at batch > 1), 4 steps")
    run_case(checkout, mods, out_dir, "traj_t2v_distill", "t2v", seed=22, guidance=1.0, use_distill=True,
             num_frames=13, description="t2v, distilled schedule (use_distill), guidance 1.0 (no CFG), 4 steps")
    run_case(checkout, mods, out_dir, "traj_i2v", "i2v", seed=23, num_frames=13,
             description="i2v, first latent frame from the tiny VAE, CFG-zero* guidance 4.0, 4 steps")
    vc = dict(num_frames=13, num_cond_frames=5, video_frames=7)
    run_case(checkout, mods, out_dir, "traj_vc_cache", "vc", seed=24, use_kv_cache=True, enhance_hf=False, **vc,
             description="video continuation, 2 clean latents via KV cache, CFG 4.0, 4 steps")
    run_case(checkout, mods, out_dir, "traj_vc_cache_hf", "vc", seed=25, steps=6, use_kv_cache=True,
             enhance_hf=True, **vc,
             description="video continuation with KV cache and enhance_hf (timesteps <= 500 replaced by a "
                         "uniform 10-step tail), CFG 4.0, steps 6 -> 15 loop steps")
    run_case(checkout, mods, out_dir, "traj_vc_nocache", "vc", seed=26, use_kv_cache=False, enhance_hf=False, **vc,
             description="video continuation without KV cache (2 clean latents in the input, timestep 0 there), "
                         "CFG 4.0, 4 steps")
    run_case(checkout, mods, out_dir, "traj_refine_lora", "refine", seed=27, steps=50, guidance=1.0, lora=1.0,
             t_thresh=0.5, stage1_frames=4,
             description="refine, t_thresh 0.5, 50 steps (5 loop steps: 500 then the schedule's timesteps "
                         "below 500), tiny_lora at 1.0, BSA off, no conditioning frames, 4 stage-1 frames")
    run_case(checkout, mods, out_dir, "traj_i2v_b2_lora", "i2v", seed=28, batch=2, guidance=1.0, valid=(10, 4),
             lora=0.5, num_frames=13,
             description="i2v, batch 2 (10 and 4 valid text tokens), tiny_lora at 0.5, guidance 1.0 (no CFG: the "
                         "original's CFG fails at batch > 1), 4 steps")


def main(argv=None) -> int:
    return generator_main(__doc__, GOLDEN / "extra", generate, argv)


if __name__ == "__main__":
    sys.exit(main())
