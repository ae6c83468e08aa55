"""Produce golden sampling trajectories by running the ORIGINAL LongCat-Video pipeline.

    .venv/bin/python -m scripts.make_traj_golden /path/to/LongCat-Video-checkout [golden/extra]

Builds the upstream pipeline object (``LongCatVideoPipeline`` from
``longcat_video/pipeline_longcat_video.py``) around the upstream DiT loaded from
``golden/tiny-a`` through scripts/upstream.py (CPU, float32, exact attention),
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

import contextlib
import importlib
import importlib.util
import inspect
import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from scripts.upstream import check_checkout, import_upstream, load_upstream

UPSTREAM_COMMIT = "6b3f4b8"
REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "golden" / "tiny-a"
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
    "sys.modules['flash_attn'] stand-in computing exact attention, BSA import stubbed (scripts/upstream.py)",
]


# ---------------------------------------------------------------------------- upstream imports

def import_pipeline(checkout: Path):
    """The upstream pipeline module (and the VAE / scheduler classes), imported from ``checkout``."""
    import_upstream(checkout)                     # DiT first: installs the BSA stub
    if importlib.util.find_spec("loguru") is None and "loguru" not in sys.modules:
        import logging
        standin = types.ModuleType("loguru")
        standin.logger = logging.getLogger("loguru-standin")
        sys.modules["loguru"] = standin
    sys.path.insert(0, str(checkout))
    try:
        pipe_mod = importlib.import_module("longcat_video.pipeline_longcat_video")
        vae_mod = importlib.import_module("longcat_video.modules.autoencoder_kl_wan")
        sched_mod = importlib.import_module("longcat_video.modules.scheduling_flow_match_euler_discrete")
    finally:
        sys.path.remove(str(checkout))
    return pipe_mod, vae_mod.AutoencoderKLWan, sched_mod.FlowMatchEulerDiscreteScheduler


def wan21_latent_stats() -> tuple[list[float], list[float]]:
    """The released Wan 2.1 VAE's per-channel latent mean/std: the defaults of diffusers' AutoencoderKLWan."""
    import diffusers
    params = inspect.signature(diffusers.AutoencoderKLWan.__init__).parameters
    mean, std = list(params["latents_mean"].default), list(params["latents_std"].default)
    assert len(mean) == len(std) == 16
    return mean, std


def make_vae(vae_cls):
    mean, std = wan21_latent_stats()
    torch.manual_seed(VAE_SEED)
    vae = vae_cls(**VAE_CONFIG, latents_mean=mean, latents_std=std)
    return vae.eval()


# ---------------------------------------------------------------------------- recording

class Recorder:
    """Wraps (on the instances) prepare_latents, the DiT's forward and scheduler.step."""

    def __init__(self, pipe):
        self.t: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.n_step_calls = 0
        self.prefill_in = None
        dit, sched = pipe.dit, pipe.scheduler
        orig_prep, orig_fwd, orig_step = pipe.prepare_latents, dit.forward, sched.step

        def prepare_latents(*a, **kw):
            out = orig_prep(*a, **kw)
            self.t["input.latents"] = out.detach().clone().float()
            return out

        def forward(*a, **kw):
            assert not a, "the pipeline passes the DiT keyword arguments only"
            hs = kw["hidden_states"].detach().clone().float()
            ts = kw["timestep"].detach().clone().float()
            out = orig_fwd(**kw)
            if kw.get("return_kv"):                               # KV-cache prefill of the clean frames
                self.prefill_in = hs
                _, cache = out
                for i, (k, v) in sorted(cache.items()):
                    self.t[f"traj.kv_cache.{i}.k"] = k.detach().clone().float()
                    self.t[f"traj.kv_cache.{i}.v"] = v.detach().clone().float()
                return out
            i = self.steps
            if i == 0:                                            # the schedule as the loop starts
                self.t["traj.timesteps"] = sched.timesteps.detach().clone().float()
                self.t["traj.sigmas"] = sched.sigmas.detach().clone().float()
            self.t[f"traj.step.{i}.timestep"] = ts
            self.t[f"traj.step.{i}.dit_in"] = hs
            self.t[f"traj.step.{i}.dit_out"] = out.detach().clone().float()
            self.steps += 1
            return out

        def step(model_output, timestep, sample, *a, **kw):
            i = self.steps - 1
            assert self.n_step_calls == i, "one scheduler.step per DiT call"
            assert float(timestep) == float(self.t["traj.timesteps"][i])
            self.t[f"traj.step.{i}.noise_pred"] = model_output.detach().clone().float()
            res = orig_step(model_output, timestep, sample, *a, **kw)
            prev = res[0] if isinstance(res, tuple) else res.prev_sample
            self.t[f"traj.step.{i}.latents"] = prev.detach().clone().float()
            self.n_step_calls += 1
            return res

        pipe.prepare_latents = prepare_latents
        dit.forward = forward
        sched.step = step


# ---------------------------------------------------------------------------- building

def text(gen: torch.Generator, batch: int, valid: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.randn(batch, 1, TEXT_LEN, CAPTION_CH, generator=gen)
    mask = torch.zeros(batch, TEXT_LEN, dtype=torch.int64)
    for b, n in enumerate(valid):
        mask[b, :n] = 1
    return emb, mask


def build(checkout: Path, mods, *, seed: int, batch: int, cfg: bool, valid: list[int], neg_valid: list[int],
          hw: tuple[int, int] | None, lora: float | None):
    pipe_mod, vae_cls, sched_cls = mods
    um = load_upstream(MODEL, checkout, dtype="float32", device="cpu", attention="math")
    if lora is not None:
        um.set_loras([(MODEL / LORA, lora)])
    sched = sched_cls(shift=SCHEDULER["shift"], num_train_timesteps=SCHEDULER["num_train_timesteps"])
    text_encoder = types.SimpleNamespace(config=types.SimpleNamespace(d_model=CAPTION_CH), dtype=torch.float32)
    pipe = pipe_mod.LongCatVideoPipeline(tokenizer=None, text_encoder=text_encoder, vae=make_vae(vae_cls),
                                         scheduler=sched, dit=um.model)
    pipe.device = "cpu"

    gen = torch.Generator().manual_seed(seed + 1000)
    pe, pm = text(gen, batch, valid)
    ne, nm = text(gen, batch, neg_valid) if cfg else (None, None)

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


@contextlib.contextmanager
def running(um, pipe_mod):
    saved_gc = pipe_mod.torch_gc
    pipe_mod.torch_gc = lambda: None
    try:
        with um.attention(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # "CUDA not available, disabling autocast"
            yield
    finally:
        pipe_mod.torch_gc = saved_gc


# ---------------------------------------------------------------------------- checks

def _eq(a, b, what):
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-6, atol=1e-6):
        err = (a - b).abs().max().item() if a.shape == b.shape else f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        raise AssertionError(f"self-consistency: {what} ({err})")


def check(t: dict, meta: dict, prefill_in) -> None:
    S = t["traj.timesteps"].shape[0]
    assert t["traj.sigmas"].shape[0] == S + 1 and float(t["traj.sigmas"][-1]) == 0.0
    assert f"traj.step.{S - 1}.latents" in t and f"traj.step.{S}.dit_in" not in t
    _eq(t["traj.timesteps"], t["traj.sigmas"][:-1] * 1000, "timesteps = 1000 * sigmas[:-1]")
    n = meta["num_cond_latents"]
    cache = meta.get("use_kv_cache", False)
    split = 0 if cache else n                          # clean frames the DiT sees in front of the noisy ones
    g = meta["guidance_scale"]
    cfg = "input.negative_prompt_embeds" in t
    B = t["input.prompt_embeds"].shape[0]
    x0 = t["input.latents"]
    if cache:
        _eq(prefill_in, x0[:, :, :n], "prefill input = clean leading frames")
        assert "traj.kv_cache.0.k" in t
    prev = x0[:, :, n:] if cache else x0[:, :, split:]
    for i in range(S):
        din, dout = t[f"traj.step.{i}.dit_in"], t[f"traj.step.{i}.dit_out"]
        ts = t[f"traj.step.{i}.timestep"]
        assert din.shape[0] == (2 * B if cfg else B)
        halves = din.chunk(2) if cfg else (din,)
        for h in halves:
            _eq(h[:, :, split:], prev, f"step {i} dit_in = previous latents")
            if split:
                _eq(h[:, :, :split], x0[:, :, :split], f"step {i} dit_in clean frames")
        tval = t["traj.timesteps"][i]
        if ts.dim() == 2:
            _eq(ts[:, split:], tval.expand_as(ts[:, split:]), f"step {i} timestep")
            if split:
                assert (ts[:, :split] == 0).all()
        else:
            _eq(ts, tval.expand_as(ts), f"step {i} timestep")
        if cfg:      # CFG-zero* scale over the WHOLE prediction, clean frames included; then the noisy part
            u, c = dout.chunk(2)
            uf, cf = u.reshape(B, -1), c.reshape(B, -1)
            st = ((cf * uf).sum(1, keepdim=True) / ((uf ** 2).sum(1, keepdim=True) + 1e-8)).view(B, 1, 1, 1, 1)
            guided = u * st + g * (c - u * st)
        else:
            guided = dout
        npred = t[f"traj.step.{i}.noise_pred"]
        _eq(npred, -guided[:, :, split:], f"step {i} noise_pred = -(guided DiT output)")
        sig = t["traj.sigmas"]
        _eq(t[f"traj.step.{i}.latents"], prev + (sig[i + 1] - sig[i]) * npred, f"step {i} Euler update")
        prev = t[f"traj.step.{i}.latents"]
    out = t["output.latents"]
    _eq(out[:, :, n:], prev, "output noisy frames = last step's latents")
    if n:
        _eq(out[:, :, :n], x0[:, :, :n], "output clean frames = input clean frames")


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
    check(rec.t, meta, rec.prefill_in)
    assert rec.steps == rec.n_step_calls == rec.t["traj.timesteps"].shape[0]
    for k, v in rec.t.items():
        assert v.dtype == (torch.int64 if k.endswith("attention_mask") else torch.float32), k
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(rec.t.items())}, str(out_dir / f"{name}.safetensors"))
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    checkout = check_checkout(argv[0])
    out_dir = Path(argv[1] if len(argv) > 1 else REPO / "golden" / "extra") / "tiny-a" / "cases"
    torch.set_grad_enabled(False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
