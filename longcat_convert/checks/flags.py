"""Flag values: every flag on its own (ranges, numbers, lists, names), checked before torch
is imported; the flags that need each other or the model are in combos.py."""
from __future__ import annotations

import math
import os
import re

from .. import dtypes
from ..errors import BadInput

LOW_PRECISION = ("bf16", "bfloat16", "fp16", "float16")
ATTENTION = ("sdpa", "math", "flash2", "flash3")
MAX_SEED = 2**63 - 1
MAX_STEPS = 1000                  # the scheduler's num_train_timesteps
MAX_DISTILL_STEPS = 50            # the original's distilled schedule
MAX_SP_TIMEOUT = 1e6              # seconds (about 11 days)
DEVICE_HELP = "cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(cpu|cuda)(:\d+)?$")


def finite(flag: str, value, *, lo: float | None = None, hi: float | None = None, lo_open=False,
            hi_open=False, what: str = "a number") -> float:
    v = float(value)
    if not math.isfinite(v):
        raise BadInput(f"{flag} {value}: expected a finite number ({what})")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        rng = f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{right}"
        raise BadInput(f"{flag} {value}: expected {what} in {rng}")
    return v


def int_at_least(flag: str, value, lo: int, what: str, hi: int | None = None) -> int:
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"from {lo} to {hi}"
        raise BadInput(f"{flag} {value}: expected {what}, {rng}")
    return value


def ints(flag: str, text: str, n: int | None = None, what: str = "comma-separated integers") -> list[int]:
    try:
        vals = [int(x) for x in str(text).split(",")]
    except ValueError:
        raise BadInput(f"{flag} {text!r}: expected {what}")
    if n is not None and len(vals) != n:
        raise BadInput(f"{flag} {text!r}: expected {what}")
    return vals


def device(flag: str, value: str) -> None:
    if not _DEVICE.match(str(value)):
        raise BadInput(f"{flag} {value!r}: use {DEVICE_HELP}")


def dtype(flag: str, value) -> str:
    """A --dtype value in the one vocabulary (longcat_convert/dtypes.py) -> torch's name."""
    return dtypes.canonical(value, flag)


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def lora_spec(spec: str, default: float) -> tuple[str, float]:
    name, _, mult = str(spec).partition(":")
    if not name:
        raise BadInput(f"--lora {spec!r}: expected NAME or NAME:MULTIPLIER (NAME: a LoRA file stem in SOURCE/lora)")
    try:
        m = float(mult) if mult else float(default)
    except ValueError:
        raise BadInput(f"--lora {spec!r}: expected NAME or NAME:MULTIPLIER (a number)")
    if not math.isfinite(m):
        raise BadInput(f"--lora {spec!r}: the multiplier must be a finite number")
    return name, m


def fastvideo(specs) -> dict:
    """``--fastvideo KEY=VALUE``: each value typed by its FastVideo field, read from FastVideo's
    installed source without importing it (parity/overrides.py) -> {key: value}."""
    if not specs:
        return {}
    from parity import overrides                # reads FastVideo's source text; no torch
    return overrides.parse_overrides(specs)


def parity_values(o: dict) -> dict:
    """Every value flag of ``parity`` on its own (no files) -> the parsed values (shape, loras, bsa)."""
    out: dict = {}
    int_at_least("--text-len", o["text_len"], 1, "a number of generated text tokens")
    int_at_least("--batch", o["batch"], 1, "a number of generated samples")
    shape = ints("--shape", o["shape"], 3, "T,H,W (three positive integers)")
    if any(x < 1 for x in shape):
        raise BadInput(f"--shape {o['shape']}: expected T,H,W (three positive integers)")
    out["shape"] = shape
    if o.get("valid") is not None:
        valid = ints("--valid", o["valid"], None, "one number of valid text tokens, or one per sample")
        if len(valid) not in (1, o["batch"]):
            raise BadInput(f"--valid {o['valid']}: give one number, or one per sample (--batch {o['batch']})")
        bad = [v for v in valid if not 1 <= v <= o["text_len"]]
        if bad:
            raise BadInput(f"--valid {o['valid']}: valid text tokens must be in 1..{o['text_len']} (--text-len)")
    finite("--timestep", o["timestep"], what="a timestep, e.g. 700")
    int_at_least("--seed", o["seed"], 0, "a seed", hi=MAX_SEED)
    ncl = o.get("num_cond_latents")
    if ncl is not None and ncl < 0:
        raise BadInput(f"--num-cond-latents {ncl}: expected a number of clean leading latent frames, >= 0")
    kv = o.get("kv_cache_frames") or 0
    if kv < 0:
        raise BadInput(f"--kv-cache-frames {kv}: expected a number of cached leading frames, >= 0 (0: no cache)")
    finite("--lora-multiplier", o["lora_multiplier"], what="a LoRA multiplier")
    out["loras"] = [lora_spec(s, o["lora_multiplier"]) for s in o.get("loras") or ()]
    bsa = bsa_flags(o)
    out["bsa"] = bsa
    steps = int_at_least("--steps", o["steps"], 1, "a number of inference steps", hi=MAX_STEPS)
    if o.get("distill") and steps > MAX_DISTILL_STEPS:
        raise BadInput(f"--steps {steps} with --distill: the distilled schedule has at most {MAX_DISTILL_STEPS} steps")
    finite("--guidance", o["guidance"], what="a guidance scale")
    finite("--shift", o["shift"], lo=0, lo_open=True, what="a scheduler shift")
    finite("--t-thresh", o["t_thresh"], lo=0, hi=1, what="a refinement threshold")
    if o.get("loop") == "refine" and not 0 < o["t_thresh"] < 1:
        raise BadInput(f"--t-thresh {o['t_thresh']}: refinement needs t_thresh in (0, 1)")
    device("--device", o["device"])
    if o["attention"] not in ATTENTION:
        raise BadInput(f"--attention {o['attention']!r}: choose one of {', '.join(ATTENTION)}")
    t = o.get("sp_timeout", 600.0)
    if not (math.isfinite(t) and 0 < t <= MAX_SP_TIMEOUT):
        raise BadInput(f"--sp-timeout {t}: must be a positive number of seconds, at most {MAX_SP_TIMEOUT:g}")
    sp = o.get("sp")
    if sp is not None and sp < 2:
        raise BadInput(f"--sp {sp}: the number of sequence-parallel ranks, at least 2")
    out["fastvideo"] = fastvideo(o.get("fastvideo"))
    return out


def bsa_flags(o: dict) -> list[str]:
    """The --bsa-* flags given, each value checked on its own."""
    given = []
    s = o.get("bsa_sparsity")
    if s is not None:
        given.append("--bsa-sparsity")
        if str(s).strip().lower() not in ("none", "null"):
            try:
                v = float(s)
            except ValueError:
                raise BadInput(f"--bsa-sparsity {s!r}: expected a number in [0, 1] or 'none'")
            if not (math.isfinite(v) and 0 <= v <= 1):
                raise BadInput(f"--bsa-sparsity {s}: bsa_params.sparsity is {v}; expected a number in [0, 1] or 'none'")
    c = o.get("bsa_cdf")
    if c is not None:
        given.append("--bsa-cdf")
        finite("--bsa-cdf", c, lo=0, hi=1, what="a CDF threshold (bsa_params.cdf_threshold)")
    for flag, key in (("--bsa-chunk-q", "bsa_chunk_q"), ("--bsa-chunk-k", "bsa_chunk_k")):
        text = o.get(key)
        if text is None:
            continue
        given.append(flag)
        what = f"T,H,W for bsa_params.chunk_3d_shape_{flag[-1]} (three positive integers)"
        chunk = ints(flag, text, 3, what)
        if any(x < 1 for x in chunk):
            raise BadInput(f"{flag} {text}: expected {what}")
        n = chunk[0] * chunk[1] * chunk[2]
        if n & (n - 1):
            raise BadInput(f"{flag} {text}: covers {n} tokens; the original's kernels need a power of two "
                           "(e.g. 4,4,4 or 4,4,8)")
    return given


