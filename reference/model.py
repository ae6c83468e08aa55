"""The whole reference DiT, in the original LongCat-Video module tree.

Module names (and so state-dict keys, forward-hook names and LoRA target names)
are the original's: x_embedder, t_embedder, y_embedder, blocks.<i>, final_layer.

The forward is split into ``prepare`` -> blocks -> ``finish`` so a caller can
stream blocks one at a time (see loading.load_block / load_stem).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from longcat_convert.errors import BadInput

from .backends import Backend, get_backend
from .block import BlockContext, ReferenceBlock
from .bsa import BsaParams, check_head_dim
from .config import ReferenceConfig
from .embedders import CaptionEmbedder, PatchEmbedder, TimestepEmbedder
from .final_layer import FinalLayer
from . import lora as lora_mod


def _as_mask(mask: torch.Tensor | None, B: int, L: int) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dim() == 4 and mask.shape[1:3] == (1, 1):
        mask = mask[:, 0, 0]
    elif mask.dim() == 3 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != (B, L):
        raise BadInput(f"encoder_attention_mask has shape {tuple(mask.shape)}; expected [{B}, {L}] "
                       "(batch, text tokens)")
    return mask


class ReferenceDiT(nn.Module):
    def __init__(self, config: ReferenceConfig, attention: str | Backend = "sdpa", depth: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        d = config.dims
        self.config = config
        self.patch_size = d.patch
        self.out_channels = d.cout
        backend = get_backend(attention) if isinstance(attention, str) else attention
        self.x_embedder = PatchEmbedder(d.patch, d.cin, d.hidden, device=device, dtype=dtype)
        self.t_embedder = TimestepEmbedder(d.adaln, d.freq, device=device, dtype=dtype)
        self.y_embedder = CaptionEmbedder(d.caption, d.hidden, device=device, dtype=dtype)
        self.blocks = nn.ModuleList([ReferenceBlock(d, backend, device=device, dtype=dtype)
                                     for _ in range(d.depth if depth is None else depth)])
        self.final_layer = FinalLayer(d, device=device, dtype=dtype)
        self.loras: dict[str, lora_mod.LoraNetwork] = {}
        self.active_loras: list[str] = []
        self._backend = backend
        if config.enable_bsa:
            self.enable_bsa()

    # -- configuration ------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    @property
    def attention(self) -> str:
        return self._backend.name

    def set_attention(self, attention: str | Backend) -> None:
        backend = get_backend(attention) if isinstance(attention, str) else attention
        self._backend = backend
        for m in self.modules():
            if hasattr(m, "backend"):
                m.backend = backend

    # -- block-sparse attention (bsa.py) ------------------------------------------
    def enable_bsa(self, params: dict | BsaParams | None = None) -> None:
        """Switch block-sparse self-attention on in every block, as the original's
        ``dit.enable_bsa()`` (the refinement pipeline calls it). ``params`` (the
        original's ``bsa_params`` keys; missing keys take the original's defaults)
        replace the config's; None or {} keeps the config's ``bsa_params``."""
        if params:
            bsa = BsaParams.from_dict(params, "enable_bsa")
        elif self.config.bsa_params is not None:
            bsa = self.config.bsa_params
        else:
            raise BadInput("enable_bsa: the model's config.json has no bsa_params; pass the parameters "
                           "(sparsity, cdf_threshold, chunk_3d_shape_q, chunk_3d_shape_k)")
        check_head_dim(self.config.dims.head_dim, "enable_bsa")
        for block in self.blocks:
            set_block_bsa(block, bsa)

    def disable_bsa(self) -> None:
        for block in self.blocks:
            set_block_bsa(block, None)

    def set_bsa(self, params: dict | BsaParams | None) -> None:
        """Per-run switch (golden cases, parity inputs): a dict -> ``enable_bsa(params)``
        ({} -> the config's); None -> as config.json says (its ``enable_bsa``)."""
        if params is not None:
            self.enable_bsa(params)
        elif self.config.enable_bsa:
            self.enable_bsa()
        else:
            self.disable_bsa()

    @property
    def bsa_params(self) -> BsaParams | None:
        """The parameters in force when BSA is on in the blocks, else None."""
        on = [b.attn.bsa_params for b in self.blocks if b.attn.enable_bsa]
        return on[0] if on else None

    # -- LoRA (original semantics, see lora.py) -------------------------------
    def load_lora(self, path, key: str, multiplier: float = 1.0) -> None:
        self.loras[key] = lora_mod.LoraNetwork.from_file(path, self, multiplier)

    def enable_loras(self, keys: list[str]) -> None:
        """Activate exactly these LoRAs (in this order); all others off."""
        self.disable_all_loras()
        for key in keys:
            if key not in self.loras:
                raise BadInput(f"no LoRA loaded under {key!r}; loaded: {sorted(self.loras) or 'none'}")
        for key in keys:
            self.loras[key].attach(self)
            self.active_loras.append(key)

    def disable_all_loras(self) -> None:
        for net in self.loras.values():
            net.detach(self)
        self.active_loras.clear()

    # -- forward ---------------------------------------------------------------
    def prepare(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask=None,
                num_cond_latents=0, return_kv=False, skip_crs_attn=False):
        """Embed the inputs -> (tokens [B, N, C], BlockContext)."""
        d = self.config.dims
        if hidden_states.dim() != 5 or hidden_states.shape[1] != d.cin:
            raise BadInput(f"hidden_states has shape {tuple(hidden_states.shape)}; expected [B, {d.cin}, T, H, W]")
        B, _, T, H, W = hidden_states.shape
        pt, ph, pw = self.patch_size
        grid = (T // pt, H // ph, W // pw)
        if encoder_hidden_states.dim() == 3:
            encoder_hidden_states = encoder_hidden_states[:, None]
        if (encoder_hidden_states.dim() != 4 or encoder_hidden_states.shape[0] != B
                or encoder_hidden_states.shape[1] != 1 or encoder_hidden_states.shape[3] != d.caption):
            raise BadInput(f"encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}; "
                           f"expected [{B}, 1, text tokens, {d.caption}]")
        L = encoder_hidden_states.shape[2]
        mask = _as_mask(encoder_attention_mask, B, L)

        if timestep.dim() == 1:
            timestep = timestep[:, None].expand(-1, grid[0])
        if timestep.dim() != 2 or tuple(timestep.shape) != (B, grid[0]):
            raise BadInput(f"timestep has shape {tuple(timestep.shape)}; expected [{B}] or [{B}, {grid[0]}]")

        # Inputs are cast to the model dtype first, the timestep too: in bfloat16
        # that rounds it (937.5 -> 936) before the float32 embedding, as the original does.
        dtype = self.dtype
        x = self.x_embedder(hidden_states.to(dtype))
        t = self.t_embedder(timestep.to(dtype).float().flatten()).reshape(B, grid[0], -1)
        y = self.y_embedder(encoder_hidden_states.to(dtype))                 # [B, 1, L, C]

        if self.config.text_tokens_zero_pad and mask is not None:
            # Published setting: padded tokens are zeroed and then attended like any other.
            y = y * mask[:, None, :, None]
            mask = torch.ones_like(mask)
        y = y[:, 0]
        if mask is None:
            lens = [L] * B
            text = y.reshape(1, B * L, -1)
        else:
            valid = mask != 0
            lens = valid.sum(dim=1).tolist()
            if min(lens) == 0:
                raise BadInput(f"encoder_attention_mask: sample {lens.index(0)} has no valid text token")
            text = y[valid].reshape(1, -1, y.shape[-1])
        ctx = BlockContext(t=t, text=text, text_lens=lens, grid=grid, num_cond_latents=int(num_cond_latents or 0),
                           return_kv=bool(return_kv), skip_crs_attn=bool(skip_crs_attn))
        return x, ctx

    def finish(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """Final layer + unpatchify -> [B, C_out, T, H, W] float32."""
        out = self.final_layer(x, ctx.t, ctx.grid)
        B = out.shape[0]
        Nt, Nh, Nw = ctx.grid
        pt, ph, pw = self.patch_size
        out = out.view(B, Nt, Nh, Nw, pt, ph, pw, self.out_channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(B, self.out_channels, Nt * pt, Nh * ph, Nw * pw).float()

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask=None,
                num_cond_latents=0, return_kv=False, kv_cache_dict=None, skip_crs_attn=False,
                offload_kv_cache=False):
        """Same arguments and results as the original model's forward.

        ``kv_cache_dict`` {block index: (k, v)} from an earlier ``return_kv`` call:
        ``hidden_states`` then holds only the new frames and ``num_cond_latents`` is
        the number of cached frames. Returns the output, plus {i: (k, v)} with
        ``return_kv`` (moved to the CPU with ``offload_kv_cache``)."""
        kv_cache_dict = kv_cache_dict or {}
        if return_kv and kv_cache_dict:
            raise BadInput("return_kv and kv_cache_dict cannot be combined in one forward "
                           "(the original model does not support it)")
        x, ctx = self.prepare(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                              num_cond_latents, return_kv, skip_crs_attn)
        caches = {}
        for i, block in enumerate(self.blocks):
            out = block(x, ctx, kv_cache_dict.get(i))
            if return_kv:
                x, (k, v) = out
                caches[i] = (k.cpu(), v.cpu()) if offload_kv_cache else (k.contiguous(), v.contiguous())
            else:
                x = out
        out = self.finish(x, ctx)
        return (out, caches) if return_kv else out


def set_block_bsa(block: ReferenceBlock, params: BsaParams | None) -> None:
    """BSA on (with ``params``) or off (None) in one block's self-attention."""
    block.attn.enable_bsa = params is not None
    if params is not None:
        block.attn.bsa_params = params
