"""LongCat's sequence parallelism as FastVideo code: the upstream patch of
``sp-whole-sequence`` (fixes/sp_shard.py) inserts these functions' source into FastVideo's
``fastvideo/models/dits/longcat.py``. Nothing imports this module at run time (the patch
reads its source; the run-time fix keeps its own wrappers); it is plain Python so that
what the patch inserts can be read, linted and tested as code.

The layout: under N ranks each rank holds its run of H*W/N tokens of every latent frame,
frame after frame (frame-major), so the blocks' per-frame modulation and the count of
conditioning tokens hold on a rank's share as they do on the whole sequence. Self-attention
exchanges heads for tokens (one all-to-all): every token in token order with H/N heads, so
RoPE, the i2v split, block-sparse attention and the K/V cache run as on one process, on fewer
heads; a second all-to-all brings each rank its tokens back with every head."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    # FastVideo's names these functions use, as the patch imports them into longcat.py. Not
    # imported here at run time: importing this module must not import FastVideo (only the
    # functions that need no collective are called outside FastVideo, by tests).
    from fastvideo.distributed.communication_op import (sequence_model_parallel_all_gather,
                                                        sequence_model_parallel_all_to_all_4D)
    from fastvideo.distributed.parallel_state import (get_sp_parallel_rank, get_sp_world_size,
                                                      model_parallel_is_initialized)


def longcat_sp_can_shard(latent_shape: tuple) -> bool:
    """Whether LongCat's forward shards its tokens among the sequence-parallel ranks: more
    than one rank, and every frame's H * W tokens divide among them."""
    if not model_parallel_is_initialized():  # a layer run on its own, outside FastVideo's runtime
        return False
    world = get_sp_world_size()
    return world > 1 and (latent_shape[1] * latent_shape[2]) % world == 0


def longcat_sp_is_sharded(num_tokens: int, latent_shape: tuple) -> bool:
    """Whether ``num_tokens`` tokens of the (T, H, W) latent grid are this rank's share of
    them (``longcat_sp_shard``) rather than every token."""
    T, H, W = latent_shape
    return longcat_sp_can_shard(latent_shape) and num_tokens * get_sp_world_size() == T * H * W


def longcat_sp_shard(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[B, T*H*W, ...] (every token) -> [B, T*H*W/N, ...]: this rank's run of H*W/N tokens of
    every frame, frame after frame."""
    B, rest = x.shape[0], x.shape[2:]
    frames = x.reshape(B, num_frames, -1, *rest)
    return frames.chunk(get_sp_world_size(), dim=2)[get_sp_parallel_rank()].reshape(B, -1, *rest)


def longcat_sp_token_order(x: torch.Tensor, num_frames: int, world: int) -> torch.Tensor:
    """The ranks' shares one after the other ([B, N*n, ...], as a gather along the tokens
    returns them) -> the tokens in their order (frame after frame)."""
    B, rest = x.shape[0], x.shape[2:]
    return x.reshape(B, world, num_frames, -1, *rest).transpose(1, 2).reshape(B, -1, *rest)


def longcat_sp_rank_order(x: torch.Tensor, num_frames: int, world: int) -> torch.Tensor:
    """Inverse of ``longcat_sp_token_order``: the tokens in their order -> rank 0's share, then
    rank 1's, ..."""
    B, rest = x.shape[0], x.shape[2:]
    return x.reshape(B, num_frames, world, -1, *rest).transpose(1, 2).reshape(B, -1, *rest)


def longcat_sp_gather(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Every rank's share of the tokens ([B, n, ...] each) -> every token in order (a
    collective: every rank calls it)."""
    gathered = sequence_model_parallel_all_gather(x.contiguous(), dim=1)
    return longcat_sp_token_order(gathered, num_frames, get_sp_world_size())


def longcat_sp_heads_to_tokens(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               num_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's tokens with every head ([B, n, heads, head_dim] each) -> every token, in
    order, with this rank's heads/N of the heads ([B, N*n, heads/N, head_dim]): one
    all-to-all for q, k and v together."""
    B = q.shape[0]
    qkv = sequence_model_parallel_all_to_all_4D(torch.cat([q, k, v], dim=0).contiguous(), scatter_dim=2,
                                                gather_dim=1)
    return longcat_sp_token_order(qkv, num_frames, get_sp_world_size()).split(B, dim=0)


def longcat_sp_tokens_to_heads(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Inverse of ``longcat_sp_heads_to_tokens`` for an attention output: every token with
    this rank's heads -> this rank's tokens with every head."""
    x = longcat_sp_rank_order(x, num_frames, get_sp_world_size()).contiguous()
    return sequence_model_parallel_all_to_all_4D(x, scatter_dim=1, gather_dim=2)


def longcat_sp_heads_of(x: torch.Tensor) -> torch.Tensor:
    """This rank's share of the heads of a [B, heads, S, head_dim] tensor (a K/V cache), the
    heads ``longcat_sp_heads_to_tokens`` hands this rank."""
    return x.chunk(get_sp_world_size(), dim=1)[get_sp_parallel_rank()].contiguous()


def longcat_sp_all_heads(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Inverse of ``longcat_sp_heads_of`` (a collective), gathered on ``device`` and returned
    where ``x`` is (a cache may be offloaded to the CPU)."""
    return sequence_model_parallel_all_gather(x.to(device).contiguous(), dim=1).to(x.device)
