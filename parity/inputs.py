"""Forward inputs shared by both implementations (a golden DiT case read by
parity/cases.py, or generated here from a seed). Tensors are kept in float32 here; each runner casts
them to its model's dtype the way the original does."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from longcat_convert.errors import BadInput


@dataclass
class Inputs:
    name: str
    hidden_states: torch.Tensor             # [B, C_in, T, H, W]
    timestep: torch.Tensor                  # [B] or [B, T]
    encoder_hidden_states: torch.Tensor     # [B, 1, N_text, C_caption]
    encoder_attention_mask: torch.Tensor    # [B, N_text], 1 = valid
    num_cond_latents: int = 0
    return_kv: bool = False
    skip_crs_attn: bool = False
    kv_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    loras: list[tuple[str, float]] = field(default_factory=list)   # (path relative to the model folder, multiplier)
    bsa: dict | None = None      # block-sparse attention on both sides: bsa_params over the checkpoint
                                 # config's ({}: the config's); None: off (a config's enable_bsa still applies)
    description: str = ""
    golden: dict[str, torch.Tensor] = field(default_factory=dict)   # act.* of the upstream run

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.hidden_states.shape[2:])  # type: ignore[return-value]

    def call(self, dtype, device, *, kv_cache: dict | None = None, **overrides) -> dict:
        """The arguments of one forward (the original's names), on ``device``.

        ``overrides`` replace hidden_states / timestep / num_cond_latents / return_kv /
        skip_crs_attn (KV-cache continuation runs two forwards on slices of one
        input); ``kv_cache`` replaces the case's cache. Cached K/V are cast to the
        model dtype, as a pipeline keeps them; the rest keeps its dtype here and
        each side casts the way its implementation does."""
        args = dict(hidden_states=self.hidden_states, timestep=self.timestep,
                    encoder_hidden_states=self.encoder_hidden_states,
                    encoder_attention_mask=self.encoder_attention_mask, num_cond_latents=self.num_cond_latents,
                    return_kv=self.return_kv, skip_crs_attn=self.skip_crs_attn)
        unknown = set(overrides) - set(args)
        if unknown:
            raise TypeError(f"unknown forward overrides {sorted(unknown)}")
        args.update({k: v for k, v in overrides.items() if v is not None})
        for k, v in args.items():
            if torch.is_tensor(v):
                args[k] = v.to(device)
        cache = self.kv_cache if kv_cache is None else kv_cache
        args["kv_cache_dict"] = {i: (k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype))
                                 for i, (k, v) in cache.items()} if cache else None
        return args


def generate(dims, *, shape=(3, 4, 6), text_len=12, valid: int | list[int] | None = None, batch=1,
             timestep: float = 700.0, seed=0, num_cond_latents=0, per_frame=False, name="generated",
             bsa: dict | None = None) -> Inputs:
    """Seeded inputs for a config. ``valid`` = valid text tokens (per sample or for all).
    ``bsa``: run both sides with block-sparse attention, these ``bsa_params`` keys
    replacing the checkpoint config's."""
    T, H, W = shape
    pt, ph, pw = dims.patch
    if T % pt or H % ph or W % pw:
        raise BadInput(f"--shape {T},{H},{W} is not divisible by the patch size {list(dims.patch)}")
    if not 0 <= num_cond_latents < T:
        raise BadInput(f"--num-cond-latents {num_cond_latents} must be in [0, T={T})")
    g = torch.Generator().manual_seed(seed)
    valid_list = [text_len] * batch if valid is None else ([valid] * batch if isinstance(valid, int) else list(valid))
    if len(valid_list) != batch or any(not 1 <= v <= text_len for v in valid_list):
        raise BadInput(f"--valid {valid} must give 1..{text_len} valid tokens for each of {batch} samples")
    mask = torch.zeros(batch, text_len, dtype=torch.int64)
    for b, v in enumerate(valid_list):
        mask[b, :v] = 1
    if per_frame or num_cond_latents:
        ts = torch.full((batch, T // pt), float(timestep))
        ts[:, :num_cond_latents] = 0.0   # clean conditioning frames
    else:
        ts = torch.full((batch,), float(timestep))
    return Inputs(
        name=name, hidden_states=torch.randn(batch, dims.cin, T, H, W, generator=g),
        timestep=ts, encoder_hidden_states=torch.randn(batch, 1, text_len, dims.caption, generator=g),
        encoder_attention_mask=mask, num_cond_latents=num_cond_latents, bsa=check_bsa(bsa),
        description=f"generated: shape {T},{H},{W}, text {text_len} (valid {valid_list}), batch {batch}, "
                    f"t={timestep}, seed {seed}, cond latents {num_cond_latents}"
                    + ("" if bsa is None else f", BSA {bsa}"))


def check_bsa(params: dict | None, where: str = "--bsa-*") -> dict | None:
    """``params`` as given (a copy), after checking its keys and values."""
    if params is None:
        return None
    from reference.bsa import BsaParams
    BsaParams.from_dict(params, where)
    return dict(params)


def effective_bsa(params: dict | None, config) -> dict | None:
    """What both sides run with: None (off), or the complete ``bsa_params`` made of
    ``params`` over the checkpoint config's (a ``ReferenceConfig``), then the original's
    defaults -- the way FastVideo's pipeline builds its effective params."""
    if params is None:
        return None
    from reference.bsa import BsaParams
    base = config.bsa_params.to_dict() if config.bsa_params is not None else {}
    return BsaParams.from_dict({**base, **params}, "bsa_params").to_dict()


def bsa_from_flags(sparsity: str | None, cdf: float | None, chunk_q: str | None, chunk_k: str | None) -> dict | None:
    """``--bsa-sparsity S|none --bsa-cdf C --bsa-chunk-q T,H,W --bsa-chunk-k T,H,W`` -> the keys
    given (None when no flag is given: BSA off). Missing keys come from the checkpoint's
    config, then the original's defaults (``effective_bsa``)."""
    out: dict = {}
    if sparsity is not None:
        if sparsity.strip().lower() in ("none", "null"):
            out["sparsity"] = None
        else:
            try:
                out["sparsity"] = float(sparsity)
            except ValueError:
                raise BadInput(f"--bsa-sparsity {sparsity!r}: expected a number in [0, 1] or 'none'")
    if cdf is not None:
        out["cdf_threshold"] = float(cdf)
    for key, flag, text in (("chunk_3d_shape_q", "--bsa-chunk-q", chunk_q), ("chunk_3d_shape_k", "--bsa-chunk-k", chunk_k)):
        if text is not None:
            try:
                out[key] = [int(x) for x in text.split(",")]
            except ValueError:
                raise BadInput(f"{flag} {text!r}: expected T,H,W (three integers)")
    return check_bsa(out, "--bsa-* flags") if out else None
