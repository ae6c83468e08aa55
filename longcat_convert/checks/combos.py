"""Parity-mode combinations: the flags that go (or do not go) together, and with the model
and the cases (the shape against the patch size and the block-sparse chunks, the loop
flags, --sp against the attention heads, low precision with BSA on a CPU, --fastvideo
with the modes). No torch; each fact is checked here once."""
from __future__ import annotations

from .. import dtypes
from ..errors import BadInput
from .cases import CaseInfo, case_bsa
from .flags import LOW_PRECISION, ints, memory_bytes
from .paths import Original

BSA_DEFAULT_CHUNK = [4, 4, 8]      # the original's, for a key neither the flags nor config.json give


def flag_combinations(o: dict, values: dict) -> None:
    """The parity flags together (no files): which modes take --sp, --component, the K/V cache,
    LoRAs, --bsa-* and --fastvideo."""
    mode, component = o.get("mode", "e2e"), o.get("component")
    kv = o.get("kv_cache_frames") or 0
    bsa = values["bsa"]
    sp = o.get("sp")
    if sp is not None:
        if component is not None:
            raise BadInput(f"--sp runs with --mode e2e, layer or sampling, not with --component {component}")
        if mode not in ("e2e", "layer", "sampling"):
            raise BadInput(f"--sp runs with --mode e2e, layer or sampling, not {mode}")
        if str(o["device"]).startswith("cuda") and o.get("sp_start") == "fork":
            raise BadInput("--sp-start fork: a CUDA context does not survive fork(); use spawn on CUDA")
    if component is not None:
        if dtypes.canonical(o["dtype"]) != "float32":
            raise BadInput(f"--component runs in float32 (low-precision component parity is not implemented); "
                           f"drop --dtype {o['dtype']}")
        if kv:
            raise BadInput("--kv-cache-frames is for DiT forwards (--mode e2e or layer), not --component")
    elif kv and mode == "blocks":
        raise BadInput("--kv-cache-frames needs --mode e2e or layer (blocks mode streams one forward)")
    elif kv and mode == "sampling":
        raise BadInput("--kv-cache-frames needs --mode e2e or layer; in sampling the K/V cache is the loop's "
                       "(--loop vc, --no-kv-cache)")
    if o.get("cases") and bsa:
        raise BadInput(f"{', '.join(bsa)} with --case: --bsa-* flags are for generated inputs; a case's JSON sets its "
                       "own enable_bsa/bsa_params")
    if mode == "blocks" and component is None and values["loras"]:
        raise BadInput("--mode blocks does not apply LoRAs; use --mode e2e or layer for LoRA parity")
    fastvideo_combinations(values.get("fastvideo") or {}, mode=mode, component=component, sp=sp)


def fastvideo_combinations(overrides: dict, *, mode: str, component: str | None, sp) -> None:
    """``parity --fastvideo``: FastVideoArgs / PipelineConfig fields only, not with --sp or
    --mode blocks (FastVideo does not build the model there)."""
    if not overrides:
        return
    from parity import overrides as ov            # FastVideo's source text; no torch
    sampling = [k for k in overrides if ov.field_owner(k) == "sampling"]
    if sampling:
        raise BadInput(f"--fastvideo {sampling[0]}=...: a SamplingParam field; parity builds its own "
                       "inputs, so SamplingParam fields run in `longcat-convert features --fastvideo`")
    if sp is not None:
        raise BadInput("--fastvideo with --sp: the ranks build FastVideo's model themselves; run without --sp")
    if mode == "blocks" and component is None:
        raise BadInput("--fastvideo with --mode blocks: blocks mode streams one block at a time outside "
                       "FastVideo's loader; use e2e, layer or sampling")


def sp_heads(sp, src: Original) -> None:
    """--sp N divides the attention heads (FastVideo's DistributedAttention splits them)."""
    if sp is not None and src.dims.heads % sp:
        raise BadInput(f"--sp {sp}: FastVideo's DistributedAttention divides the {src.dims.heads} attention heads "
                       f"among the ranks; {src.dims.heads} is not divisible by {sp} (num_heads in "
                       f"{src.config_path}); give a divisor of {src.dims.heads}")


def bsa_low_precision_on_cpu(o: dict, bsa: list, cases: list[CaseInfo], src: Original) -> None:
    """Low precision with block-sparse attention cannot be checked on a CPU (Triton's interpreter)."""
    if o["dtype"] in LOW_PRECISION and str(o["device"]).startswith("cpu"):
        why = None
        if bsa:
            why = bsa[0]
        elif any(case_bsa(c) for c in cases):
            why = f"{next(c for c in cases if case_bsa(c)).path.with_suffix('.json')} sets enable_bsa"
        elif src.cfg.get("enable_bsa") is True:
            why = f"{src.config_path} sets enable_bsa"
        if why:
            raise BadInput(f"--dtype {o['dtype']} with block-sparse attention ({why}) cannot be checked on the CPU: "
                           "Triton's interpreter computes the low-precision BSA kernel wrongly (the original's too); "
                           "use --dtype fp32 on the CPU, or --device cuda")


def generated(o: dict, flags: dict, src: Original) -> None:
    """Generated inputs: the shape against SOURCE's patch size, the frame counts against T,
    and the memory the inputs and one pass of activations take."""
    T, H, W = flags["shape"]
    d = src.dims
    pt, ph, pw = d.patch
    if T % pt or H % ph or W % pw:
        raise BadInput(f"--shape {T},{H},{W} is not divisible by the patch size {list(d.patch)} of "
                       f"{src.config_path}; give multiples of it")
    ncl = o.get("num_cond_latents")
    if o.get("mode") == "sampling" and ncl is None:
        ncl = {"i2v": 1, "vc": 2}.get(o.get("loop"), 0)
    if ncl is not None and not 0 <= ncl < T:
        raise BadInput(f"--num-cond-latents {ncl}: must be in [0, T={T}) (T from --shape {T},{H},{W})")
    kv = o.get("kv_cache_frames") or 0
    if kv and not 1 <= kv < T:
        raise BadInput(f"--kv-cache-frames {kv}: must be in [1, T={T}) (T from --shape {T},{H},{W}), or 0")
    if o.get("mode") == "sampling":
        loop_flags(o, ncl or 0)
    elif not kv:
        bsa_grid(o, flags, src, (T, H // ph, W // pw), ncl or 0)
    B, L = o["batch"], o["text_len"]
    tokens = T * H * W // (pt * ph * pw)
    need = 4 * B * (2 * d.cin * T * H * W + 2 * L * d.caption + 16 * tokens * d.hidden + 8 * L * d.hidden)
    mem = memory_bytes()
    if mem is not None and need > mem:
        raise BadInput(f"--shape {T},{H},{W} --batch {B} --text-len {L}: the generated inputs and one pass of "
                       f"activations would take about {need / 2**30:.3g} GiB, more than this machine's "
                       f"{mem / 2**30:.3g} GiB; give a smaller --shape, --batch or --text-len")




def bsa_grid(o: dict, flags: dict, src: Original, grid: tuple[int, int, int], ncl: int) -> None:
    """Generated inputs with block-sparse attention (--bsa-* flags, or enable_bsa in
    config.json): every grid the self-attention tiles must be a multiple of its chunk.
    One forward without a K/V cache: queries and keys on (T, h, w); with c clean
    frames, the condition (c, h, w) and the noise frames' queries (T - c, h, w)."""
    cfg_on = src.cfg.get("enable_bsa") is True
    if not (flags["bsa"] or cfg_on) or grid[0] <= 1:
        return
    base = src.cfg.get("bsa_params") if isinstance(src.cfg.get("bsa_params"), dict) else {}
    T, h, w = grid
    for flag, key, cfg_key in (("--bsa-chunk-q", "bsa_chunk_q", "chunk_3d_shape_q"),
                               ("--bsa-chunk-k", "bsa_chunk_k", "chunk_3d_shape_k")):
        if o.get(key) is not None:
            chunk, where = ints(flag, o[key], 3), flag
        elif isinstance(base.get(cfg_key), list) and len(base[cfg_key]) == 3 \
                and all(type(x) is int and x > 0 for x in base[cfg_key]):
            chunk, where = base[cfg_key], f"bsa_params.{cfg_key} in {src.config_path}"
        else:
            chunk, where = BSA_DEFAULT_CHUNK, f"the original's default {cfg_key}"
        frames = [T] if not ncl else ([ncl, T - ncl] if key == "bsa_chunk_q" else [ncl, T])
        for t in frames:
            g = (t, h, w)
            if any(a % b for a, b in zip(g, chunk)):
                what = "query" if key == "bsa_chunk_q" else "key"
                on = ", ".join(flags["bsa"]) or f"enable_bsa in {src.config_path}"
                raise BadInput(f"--shape {o['shape']} with block-sparse attention ({on}): the {what} token grid "
                               f"(T, H, W) = {g} "
                               f"is not divisible by bsa_params.{cfg_key} {list(chunk)} ({where}); give a --shape "
                               f"(or --num-cond-latents) whose grid is a multiple of the chunk, or another {flag}")




def loop_flags(o: dict, ncl: int) -> None:
    """Generated sampling inputs: the loop flags together, as the original's loops take them."""
    loop = o.get("loop", "t2v")
    if loop == "i2v" and ncl != 1:
        raise BadInput(f"--loop i2v --num-cond-latents {ncl}: i2v conditions on exactly 1 latent frame")
    if loop == "t2v" and ncl:
        raise BadInput(f"--loop t2v --num-cond-latents {ncl}: t2v has no conditioning frames (give 0, or "
                       "--loop i2v / vc / refine)")
    if loop == "vc" and ncl < 1:
        raise BadInput("--loop vc --num-cond-latents 0: video continuation needs at least 1 conditioning frame")
    if o.get("enhance_hf") and loop != "vc":
        raise BadInput(f"--enhance-hf is for --loop vc, not --loop {loop}")
    if o.get("enhance_hf") and o.get("distill"):
        raise BadInput("--enhance-hf with --distill: the original refuses the two together")
    if loop == "refine" and o.get("distill"):
        raise BadInput("--loop refine with --distill: refinement has no distilled schedule in the original")


