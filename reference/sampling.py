"""The original pipeline's denoising loops, clean-room: t2v, i2v, video
continuation (with or without the K/V cache, with or without the uniform
high-frequency tail), refinement, and the distilled schedule.

Everything takes latents and text embeddings directly: no text encoder, no
VAE. The DiT is any callable with the original forward signature
(``hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
num_cond_latents, return_kv, kv_cache_dict, skip_crs_attn``), so the loops
drive our reference or the real upstream model alike.

Numerics follow the original pipeline step by step:

* the schedule is built in float32 (the original builds it with numpy float32
  and torch float32; every operation is an elementwise IEEE op, so torch gives
  the same bits);
* before each DiT call the latents AND the timestep are cast to the DiT's dtype
  (in bfloat16 a timestep of 979.6 becomes 980);
* CFG-zero* guidance and the Euler step run in float32 on the float32 DiT
  output; the step upcasts the sample to float32 and returns the model
  output's dtype.

``record(name, tensor)`` receives every quantity the golden trajectories hold,
named as their keys without ``traj.``: ``timesteps``, ``sigmas``,
``kv_cache.<i>.k/.v`` (continuation with cache), then per step
``step.<i>.timestep / dit_in / dit_out / noise_pred / latents`` and finally
``output.latents``. ``noise_pred`` and ``latents`` are what the Euler step
received and returned: only the noisy frames where the loop steps a slice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from longcat_convert.errors import BadInput

MODES = ("t2v", "i2v", "vc", "refine")
# Constants of the original pipeline object (not configurable there).
NUM_TIMESTEPS = 1000
NUM_DISTILL_SAMPLE_STEPS = 50
# enhance_hf: the tail of the schedule below this timestep is replaced by
# uniformly spaced timesteps down to (not including) zero.
HF_TAIL_START, HF_TAIL_STEPS = 500.0, 10

Record = Callable[[str, torch.Tensor], None]

# FlowMatchEulerDiscreteScheduler options that would change the schedule or the
# step; the original leaves them all off, and one switched on is refused rather
# than silently ignored. Keys that only matter to those options are ignored.
_SCHEDULER_DEFAULTS = {"use_dynamic_shifting": False, "shift_terminal": None, "use_karras_sigmas": False,
                       "use_exponential_sigmas": False, "use_beta_sigmas": False, "invert_sigmas": False,
                       "stochastic_sampling": False}


@dataclass(frozen=True)
class SchedulerConfig:
    shift: float = 1.0
    num_train_timesteps: int = 1000

    @classmethod
    def from_dict(cls, cfg, where: str) -> "SchedulerConfig":
        if not isinstance(cfg, dict):
            raise BadInput(f"{where}: the scheduler config must be a JSON object")
        name = cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler")
        if name != "FlowMatchEulerDiscreteScheduler":
            raise BadInput(f"{where}: scheduler {name!r} is not the original's FlowMatchEulerDiscreteScheduler")
        for key, default in _SCHEDULER_DEFAULTS.items():
            if cfg.get(key):   # every such option is off (False/None) in the original's use
                raise BadInput(f"{where}: scheduler option {key}={cfg[key]!r} is not used by the original "
                               f"pipeline; the reference models {key}={default!r} only")
        try:
            shift = float(cfg.get("shift", 1.0))
            n = int(cfg.get("num_train_timesteps", 1000))
        except (TypeError, ValueError):
            raise BadInput(f"{where}: scheduler shift must be a number and num_train_timesteps an integer")
        if not (math.isfinite(shift) and shift > 0) or n <= 0:
            raise BadInput(f"{where}: scheduler shift must be > 0 and num_train_timesteps > 0")
        return cls(shift=shift, num_train_timesteps=n)

    @classmethod
    def from_file(cls, path: Path) -> "SchedulerConfig":
        from longcat_convert.jsonfile import load
        return cls.from_dict(load(path, "a scheduler config (JSON object)"), str(path))


@dataclass(frozen=True)
class Settings:
    """One run of the original pipeline's loop (the case JSON's keys)."""
    mode: str
    steps: int
    scheduler: SchedulerConfig
    guidance_scale: float = 1.0
    use_distill: bool = False
    enhance_hf: bool = False
    use_kv_cache: bool = True
    num_cond_latents: int = 0
    t_thresh: float = 0.5

    @property
    def cfg(self) -> bool:
        # The original: classifier-free guidance iff guidance_scale > 1; refinement never.
        return self.mode != "refine" and self.guidance_scale > 1.0

    @classmethod
    def from_meta(cls, meta: dict, where: str, model_dir: Path | None = None) -> "Settings":
        """Settings from a case JSON; the scheduler from ``model_dir/scheduler/scheduler_config.json``
        when that exists, else from the JSON's ``scheduler``."""
        mode = meta.get("mode")
        if mode not in MODES:
            raise BadInput(f"{where}: mode is {mode!r}; expected one of {', '.join(MODES)}")
        sched_file = model_dir / "scheduler" / "scheduler_config.json" if model_dir is not None else None
        if sched_file is not None and sched_file.is_file():
            sched = SchedulerConfig.from_file(sched_file)
        elif "scheduler" in meta:
            sched = SchedulerConfig.from_dict(meta["scheduler"], f"{where}: scheduler")
        else:
            raise BadInput(f"{where}: no scheduler config (neither scheduler/scheduler_config.json in the model "
                           "folder nor a 'scheduler' entry in the case JSON)")

        def get(key, kind, default):
            v = meta.get(key, default)
            if v is None:
                v = default
            if kind is bool:
                if not isinstance(v, bool):
                    raise BadInput(f"{where}: {key} must be true or false, not {v!r}")
                return v
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
                raise BadInput(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}, not {v!r}")
            return kind(v)

        num_cond = {"t2v": 0, "i2v": 1}.get(mode)
        if num_cond is None and meta.get("num_cond_latents") is None and meta.get("num_cond_frames") is not None:
            num_cond = cond_latents_for_frames(mode, get("num_cond_frames", int, 0))
        if meta.get("steps") is None and meta.get("num_inference_steps") is not None:
            meta = dict(meta, steps=meta["num_inference_steps"])
        s = cls(mode=mode, steps=get("steps", int, 0), scheduler=sched,
                guidance_scale=get("guidance_scale", float, 1.0), use_distill=get("use_distill", bool, False),
                enhance_hf=get("enhance_hf", bool, False), use_kv_cache=get("use_kv_cache", bool, True),
                num_cond_latents=get("num_cond_latents", int, 0 if num_cond is None else num_cond),
                t_thresh=get("t_thresh", float, 0.5))
        s.validate(where)
        return s

    def validate(self, where: str = "sampling settings") -> None:
        if self.mode not in MODES:
            raise BadInput(f"{where}: mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.steps < 1:
            raise BadInput(f"{where}: steps must be >= 1")
        if self.use_distill and self.steps > NUM_DISTILL_SAMPLE_STEPS:
            raise BadInput(f"{where}: the distilled schedule has at most {NUM_DISTILL_SAMPLE_STEPS} steps")
        if self.mode == "i2v" and self.num_cond_latents != 1:
            raise BadInput(f"{where}: i2v conditions on exactly 1 latent frame (num_cond_latents=1)")
        if self.mode == "t2v" and self.num_cond_latents:
            raise BadInput(f"{where}: t2v has no conditioning frames (num_cond_latents must be 0)")
        if self.mode == "vc" and self.num_cond_latents < 1:
            raise BadInput(f"{where}: video continuation needs num_cond_latents >= 1")
        if self.num_cond_latents < 0:
            raise BadInput(f"{where}: num_cond_latents must be >= 0")
        if self.enhance_hf and self.mode != "vc":
            raise BadInput(f"{where}: enhance_hf exists in video continuation only")
        if self.enhance_hf and self.use_distill:
            raise BadInput(f"{where}: the original refuses use_distill together with enhance_hf")
        if self.mode == "refine" and self.use_distill:
            raise BadInput(f"{where}: refinement has no distilled schedule in the original")
        if self.mode == "refine" and not 0.0 < self.t_thresh < 1.0:
            raise BadInput(f"{where}: t_thresh must be in (0, 1)")


def cond_latents_for_frames(mode: str, num_cond_frames: int, temporal_factor: int = 4) -> int:
    """How many latent frames the original conditions on for ``num_cond_frames`` video
    frames (VAE temporal factor 4): continuation ``1 + (n - 1) // 4``; refinement rounds
    ``1 + ceil((n - 1) / 4)`` up to a multiple of 4 (its block-sparse granularity)."""
    if num_cond_frames <= 0:
        return 0
    if mode == "refine":
        n = 1 + math.ceil((num_cond_frames - 1) / temporal_factor)
        return math.ceil(n / 4) * 4
    return 1 + (num_cond_frames - 1) // temporal_factor


# --------------------------------------------------------------------- schedule

def input_sigmas(steps: int, use_distill: bool = False) -> torch.Tensor:
    """What the original pipeline hands ``scheduler.set_timesteps(sigmas=...)``:
    ``linspace(1, 0.001, steps)``, or the distilled schedule (every 20th of the
    1000 training timesteps, ``steps`` of those 50 picked by a floor-spaced index)."""
    if use_distill:
        stride = NUM_TIMESTEPS // NUM_DISTILL_SAMPLE_STEPS
        grid = (torch.arange(1, NUM_DISTILL_SAMPLE_STEPS + 1, dtype=torch.float32) * stride).round().long()
        # numpy, as the original: floor(i * 50/steps) in float64.
        pick = np.floor(np.linspace(0, NUM_DISTILL_SAMPLE_STEPS, num=steps, endpoint=False)).astype(np.int64)
        sig = torch.flip(grid, [0])[torch.from_numpy(pick)].float() / NUM_TIMESTEPS
    else:
        sig = torch.linspace(1, 0.001, steps)
    return sig.to(torch.float32)


def shifted(sig: torch.Tensor, cfg: SchedulerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``set_timesteps(sigmas=sig)`` of the original scheduler -> (timesteps [S], sigmas [S+1]).

    float32 throughout: shift * s / (1 + (shift - 1) * s), timesteps = sigmas * N,
    and a terminal sigma of 0 appended."""
    s = sig.to(torch.float32)
    s = cfg.shift * s / (1 + (cfg.shift - 1) * s)
    return s * cfg.num_train_timesteps, torch.cat([s, torch.zeros(1)])


def _override(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Where the original replaces the scheduler's timesteps after set_timesteps, it sets
    # sigmas = timesteps / 1000 (not the shifted sigmas: 1000 * s / 1000 need not give s back).
    return timesteps, torch.cat([timesteps / NUM_TIMESTEPS, torch.zeros(1)])


def schedule(s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps [S], sigmas [S+1]) as the original's loop starts for these settings."""
    ts, sig = shifted(input_sigmas(s.steps, s.use_distill and s.mode != "refine"), s.scheduler)
    if s.mode == "vc" and s.enhance_hf:
        tail = np.linspace(HF_TAIL_START, 0, HF_TAIL_STEPS, dtype=np.float32, endpoint=False)
        ts, sig = _override(torch.cat([ts[ts > HF_TAIL_START], torch.from_numpy(tail)]))
    elif s.mode == "refine" and s.t_thresh:
        start = torch.tensor(s.t_thresh * 1000, dtype=ts.dtype)
        ts, sig = _override(torch.cat([start[None], ts[ts < start]]))
    return ts, sig


class EulerScheduler:
    """The original flow-matching Euler step over a given schedule.

    The step index is found from the first timestep the way the original finds it
    (the second match if a timestep appears twice), then advances by one per step."""

    def __init__(self, timesteps: torch.Tensor, sigmas: torch.Tensor):
        self.timesteps, self.sigmas = timesteps, sigmas
        self.index: int | None = None

    def step(self, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            hits = (self.timesteps == t.to(self.timesteps.device)).nonzero()
            if len(hits) == 0:
                raise BadInput(f"timestep {float(t)} is not in the schedule")
            self.index = int(hits[1 if len(hits) > 1 else 0])
        sigma, sigma_next = self.sigmas[self.index], self.sigmas[self.index + 1]
        # Upcast, step in float32, hand back the model output's dtype.
        prev = sample.to(torch.float32) + (sigma_next - sigma).to(model_output.device) * model_output
        self.index += 1
        return prev.to(model_output.dtype)


# --------------------------------------------------------------------- guidance

def cfg_zero_star(uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """CFG-zero*: uncond * s + g * (cond - uncond * s), s = <cond, uncond> / (|uncond|^2 + 1e-8) per sample.

    The original shapes s as [B, 1, 1, 1] against 5-D predictions. Broadcasting
    aligns trailing dimensions, so for B > 1 s meets the CHANNEL axis: the
    original fails (or, if B equals the channel count, scales channels instead of
    samples). That is reproduced, and a failure is a clear error."""
    B = cond.shape[0]
    pos, neg = cond.reshape(B, -1), uncond.reshape(B, -1)
    scale = torch.sum(pos * neg, dim=1, keepdim=True) / (torch.sum(neg ** 2, dim=1, keepdim=True) + 1e-8)
    scale = scale.view(B, 1, 1, 1)
    try:
        return uncond * scale + guidance_scale * (cond - uncond * scale)
    except RuntimeError:
        raise BadInput(f"the original pipeline cannot run classifier-free guidance at batch {B}: its CFG-zero* "
                       f"scale has shape [{B}, 1, 1, 1], which broadcasts against the channel axis of "
                       f"{list(cond.shape)} predictions; use batch 1 or guidance_scale 1") from None


# --------------------------------------------------------------------- the loop

@dataclass
class Inputs:
    """What the loop starts from. ``latents`` are the FULL latents (conditioning
    frames in front, for continuation too: the loop splits them off for the cache)."""
    latents: torch.Tensor                         # [B, C, T, H, W]
    prompt_embeds: torch.Tensor                   # [B, 1, N, C_caption]
    prompt_attention_mask: torch.Tensor           # [B, N]
    negative_prompt_embeds: torch.Tensor | None = None
    negative_prompt_attention_mask: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


def _null(_name, _t) -> None:
    return None


def sample(dit: Callable, s: Settings, inp: Inputs, *, dtype: torch.dtype = torch.float32, device="cpu",
           record: Record | None = None) -> torch.Tensor:
    """Run the original loop for ``s`` -> the final latents [B, C, T, H, W]."""
    s.validate()
    rec = record or _null
    lat = inp.latents.to(device)
    if lat.dim() != 5:
        raise BadInput(f"latents have shape {list(lat.shape)}; expected [B, C, T, H, W]")
    B, _, T = lat.shape[:3]
    ncl = s.num_cond_latents
    if ncl >= T:
        raise BadInput(f"num_cond_latents={ncl} leaves no frame to denoise (T={T})")
    text, mask = inp.prompt_embeds.to(device).to(dtype), inp.prompt_attention_mask.to(device)
    if s.cfg:
        if inp.negative_prompt_embeds is None or inp.negative_prompt_attention_mask is None:
            raise BadInput(f"guidance_scale {s.guidance_scale} > 1 needs negative prompt embeddings and mask")
        # CFG is one batched call: [uncond, cond].
        text = torch.cat([inp.negative_prompt_embeds.to(device).to(dtype), text])
        mask = torch.cat([inp.negative_prompt_attention_mask.to(device), mask])

    timesteps, sigmas = schedule(s)
    rec("timesteps", timesteps)
    rec("sigmas", sigmas)
    sched = EulerScheduler(timesteps.to(device), sigmas.to(device))

    # t2v/i2v/refine keep the latents in float32; continuation keeps them in the DiT dtype.
    lat = lat.to(dtype if s.mode == "vc" else torch.float32).clone()
    cached = s.mode == "vc" and s.use_kv_cache
    kv_cache: dict = {}
    cond = None
    if cached:
        cond = lat[:, :, :ncl]
        # Encode the clean frames once: zero timestep, no cross-attention (text unused).
        _, kv_cache = dit(hidden_states=cond, timestep=torch.zeros(B, ncl, device=device, dtype=dtype),
                          encoder_hidden_states=torch.zeros(B, 1, text.shape[2], text.shape[3], device=device,
                                                            dtype=dtype),
                          return_kv=True, skip_crs_attn=True)
        for i in sorted(kv_cache):
            rec(f"kv_cache.{i}.k", kv_cache[i][0])
            rec(f"kv_cache.{i}.v", kv_cache[i][1])
        lat = lat[:, :, ncl:]
    per_frame = s.mode != "t2v"
    step_from = 0 if (cached or s.mode == "t2v") else ncl

    for i, t in enumerate(timesteps.to(device)):
        x = (torch.cat([lat, lat]) if s.cfg else lat).to(dtype)
        ts = t.expand(x.shape[0]).to(dtype)
        if per_frame:
            ts = ts.unsqueeze(-1).repeat(1, x.shape[2])
            if not cached:
                ts[:, :ncl] = 0
        kw = dict(hidden_states=x, timestep=ts, encoder_hidden_states=text, encoder_attention_mask=mask)
        if s.mode != "t2v":
            kw["num_cond_latents"] = ncl
        if s.mode == "vc":
            kw["kv_cache_dict"] = kv_cache
        rec(f"step.{i}.timestep", ts)
        rec(f"step.{i}.dit_in", x)
        out = dit(**kw)
        rec(f"step.{i}.dit_out", out)
        if s.cfg:
            uncond, cond_pred = out.chunk(2)
            out = cfg_zero_star(uncond, cond_pred, s.guidance_scale)
        noise_pred = -out   # the scheduler integrates towards data: the prediction is negated
        if step_from:
            stepped = sched.step(noise_pred[:, :, step_from:], t, lat[:, :, step_from:])
            rec(f"step.{i}.noise_pred", noise_pred[:, :, step_from:])
            lat[:, :, step_from:] = stepped
        else:
            stepped = sched.step(noise_pred, t, lat)
            rec(f"step.{i}.noise_pred", noise_pred)
            lat = stepped
        rec(f"step.{i}.latents", stepped)
    if cached:
        lat = torch.cat([cond, lat], dim=2)
    rec("output.latents", lat)
    return lat
