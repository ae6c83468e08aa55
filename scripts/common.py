"""What the golden-data generators share (scripts/make_*.py; run from the repository root).

* paths, and the upstream commit the golden data was recorded from;
* the command line of the generators that run the upstream code, ``CHECKOUT [OUT]``
  (``generator_main``; the checkout is checked by parity/upstream.py);
* seeded inputs: text embeddings with a validity mask, the Wan 2.1 latent statistics;
* writing a case: ``<name>.safetensors`` (keys sorted) beside ``<name>.json``;
* one upstream DiT forward on a case's inputs, recorded with forward hooks (``record_dit_case``);
* the upstream pipeline: imported from a checkout (``import_pipeline``), its denoising loop
  recorded (``Recorder``) and checked for self-consistency (``check_trajectory``), and the
  context its generate_* calls run in (``running``).

The upstream adapter they drive is parity/upstream.py (installed: ``golden-check --reference
upstream`` uses it too); it does not import this module.
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
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "golden"
TINY_A = GOLDEN / "tiny-a"
UPSTREAM_COMMIT = "6b3f4b8"


# ---------------------------------------------------------------------------- command line

def generator_main(doc: str, default_out: Path, generate: Callable[[Path, Path], None], argv=None) -> int:
    """``python -m scripts.make_<x> CHECKOUT [OUT]``: calls ``generate(checkout, out)`` with
    autograd off and returns 0. Other arguments print ``doc`` (the usage) and return 2; a path
    that is not a LongCat-Video checkout is one line, exit 2."""
    from longcat_convert.errors import BadInput
    from parity.upstream import check_checkout
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or len(argv) > 2 or argv[0] in ("-h", "--help"):
        print(doc, file=sys.stderr)
        return 2
    try:
        checkout = check_checkout(argv[0])
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    generate(checkout, Path(argv[1]) if len(argv) > 1 else default_out)
    return 0


# ---------------------------------------------------------------------------- inputs

def text_inputs(gen: torch.Generator, batch: int, length: int, channels: int,
                valid) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings N(0, 1) [batch, 1, length, channels] and an int64 mask [batch, length]
    with the first ``valid[b]`` tokens of sample b set."""
    emb = torch.randn(batch, 1, length, channels, generator=gen)
    mask = torch.zeros(batch, length, dtype=torch.int64)
    for b, n in enumerate(valid):
        mask[b, :n] = 1
    return emb, mask


def wan21_latent_stats() -> tuple[list[float], list[float]]:
    """The released Wan 2.1 VAE's per-channel latent mean/std: the defaults of diffusers' AutoencoderKLWan."""
    import diffusers
    params = inspect.signature(diffusers.AutoencoderKLWan.__init__).parameters
    mean, std = list(params["latents_mean"].default), list(params["latents_std"].default)
    assert len(mean) == len(std) == 16
    return mean, std


# ---------------------------------------------------------------------------- writing

def save_case(folder: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """``folder/<name>.safetensors`` (tensors contiguous, keys sorted) and ``folder/<name>.json``."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(path))
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------- DiT cases

def dit_acts(depth: int) -> dict[str, torch.Tensor]:
    """Every ``act.*`` a DiT case records (placeholders; the output and K/V caches come on their own)."""
    names = ["x_embedder", "t_embedder", "y_embedder"]
    for i in range(depth):
        names += [f"blocks.{i}.attn", f"blocks.{i}.cross_attn", f"blocks.{i}.ffn", f"blocks.{i}"]
    names.append("final_layer")
    return {f"act.{n}": torch.empty(0) for n in names}


def cache_inputs(prefill_acts: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """A prefill case's recorded K/V caches (``act.kv_cache.<i>.k/v``) as a continuation's
    inputs (``input.kv_cache.<i>.k/v``)."""
    return {f"input.kv_cache.{i}.{kv}": prefill_acts[f"act.kv_cache.{i}.{kv}"] for i in range(depth) for kv in "kv"}


def record_dit_case(subject, folder: Path, name: str, meta: dict, inputs: dict, depth: int, loras=()) -> dict:
    """Run ``subject`` (parity/upstream.py's UpstreamModel) on ``inputs`` with the case's
    LoRAs and write ``folder/<name>``: the inputs and every activation (golden/README.md).
    Returns the activations."""
    from reference.golden import Case, run_with_hooks
    case = Case(name, folder / f"{name}.safetensors", meta, {}, dit_acts(depth))
    case.inputs = {k: v for k, v in inputs.items() if not k.startswith("input.kv_cache.")}
    cache: dict[int, dict] = {}
    for k, v in inputs.items():
        if k.startswith("input.kv_cache."):
            _, _, i, kv = k.split(".")
            cache.setdefault(int(i), {})[kv] = v
    case.kv_cache = {i: (p["k"], p["v"]) for i, p in sorted(cache.items())}
    subject.set_loras([(p, m) for p, m in loras])
    _, got = run_with_hooks(subject, case)
    save_case(folder, name, {**inputs, **got}, dict(case=name, **meta))
    return got


# ---------------------------------------------------------------------------- the upstream pipeline

def import_pipeline(checkout: Path):
    """The upstream pipeline module, VAE class and scheduler class, imported from ``checkout``."""
    from parity.upstream import import_upstream
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


@contextlib.contextmanager
def running(um, pipe_mod):
    """Around a generate_* call: the upstream DiT's attention stand-in in place, the
    pipeline module's torch_gc a no-op (it calls torch.cuda.ipc_collect), CUDA autocast
    warnings off."""
    saved_gc = pipe_mod.torch_gc
    pipe_mod.torch_gc = lambda: None
    try:
        with um.attention(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # "CUDA not available, disabling autocast"
            yield
    finally:
        pipe_mod.torch_gc = saved_gc


class Recorder:
    """Wraps (on the instances) prepare_latents, the DiT's forward and scheduler.step, and
    keeps what the denoising loop did in ``t`` (keys of golden/README.md, "Sampling trajectories")."""

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


def _eq(a, b, what):
    """Two tensors of one recording that the loop makes equal (up to float32 rounding)."""
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-6, atol=1e-6):
        err = (a - b).abs().max().item() if a.shape == b.shape else f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
        raise AssertionError(f"self-consistency: {what} ({err})")


def check_trajectory(t: dict, meta: dict, prefill_in) -> None:
    """A recorded loop against what the original's loop does with it: timesteps = 1000 *
    sigmas, each step's DiT input = the previous latents (clean frames in front), CFG-zero*
    guidance, the Euler update, the output."""
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
