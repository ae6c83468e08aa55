"""Block-sparse attention (BSA) of the original LongCat-Video, in plain torch.

What the original computes (its ``block_sparse_attention`` package, switched on
per self-attention by ``enable_bsa``; the 720p refinement runs with it):

1. The token grid of the queries (Tq, H, W) is tiled by a 3D chunk shape
   (tq, hq, wq), the keys' grid (Tk, H, W) by (tk, hk, wk). Chunks are numbered
   frame-tile-major: chunk (i, j, l) of an (Nt, Nh, Nw) tiling is
   ``i * Nh * Nw + j * Nw + l``.
2. Every chunk is summarised by the mean of its tokens' q (or k) vectors, in the
   model dtype, and chunk-to-chunk scores are ``q_mean @ k_mean^T`` (unscaled).
3. Each query chunk keeps some key chunks, the highest scores first:
   * ``sparsity`` s alone: exactly ``int((1 - s) * n_key_chunks)``;
   * ``cdf_threshold`` c alone: the scores scaled by ``head_dim ** -0.5`` are
     softmaxed over key chunks and sorted (largest first); the kept count is the
     number of leading cumulative sums that are <= c (so the chunk that crosses
     c is NOT kept, and a single chunk holding more than c of the mass keeps
     nothing);
   * both: the larger of the two counts.
4. Each query token attends (softmax scale ``head_dim ** -0.5``) to the tokens of
   its chunk's kept key chunks only. A query chunk that keeps nothing outputs
   zeros (the original's kernel starts from an empty accumulator and a
   denominator of 1).

Implementation note: this computes the full dense score matrix and masks it to
the kept chunks, in float32, then rounds to the input dtype. That costs
O(Sq * Sk) memory, fine at the tiny sizes the golden cases and parity tests
use and for checking semantics; it is not a fast kernel.

Shapes the original refuses are refused here with BadInput: a grid not divisible
by its chunk shape, a head dim outside {16, 32, 64, 128, 256}, a chunk of a
number of tokens that is not a power of two (its Triton kernels tile by the
chunk), neither ``sparsity`` nor ``cdf_threshold`` given.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from longcat_convert.errors import BadInput

HEAD_DIMS = (16, 32, 64, 128, 256)
KEYS = ("sparsity", "cdf_threshold", "chunk_3d_shape_q", "chunk_3d_shape_k")
# The original's defaults for keys a params dict leaves out (its function signature).
DEFAULTS = {"sparsity": 0.875, "cdf_threshold": None, "chunk_3d_shape_q": (4, 4, 8), "chunk_3d_shape_k": (4, 4, 8)}


def _chunk(value, key: str, where: str) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value)):
        raise BadInput(f"{where}: bsa_params.{key} is {value!r}; expected three positive integers [t, h, w]")
    t, h, w = value
    n = t * h * w
    if n & (n - 1):
        raise BadInput(f"{where}: bsa_params.{key} {list(value)} covers {n} tokens; the original's kernels need a "
                       "power of two (e.g. [4, 4, 4] or [4, 4, 8])")
    return t, h, w


def _number(value, key: str, where: str, lo: float | None = None, hi: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"{where}: bsa_params.{key} is {value!r}; expected a number or null")
    v = float(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise BadInput(f"{where}: bsa_params.{key} is {v}; expected a value in [{lo}, {hi}] or null")
    return v


@dataclass(frozen=True)
class BsaParams:
    """The original's ``bsa_params``: sparsity, cdf_threshold, q and k chunk shapes."""
    sparsity: float | None = 0.875
    cdf_threshold: float | None = None
    chunk_q: tuple[int, int, int] = (4, 4, 8)
    chunk_k: tuple[int, int, int] = (4, 4, 8)

    @classmethod
    def from_dict(cls, params, where: str = "bsa_params") -> "BsaParams":
        if isinstance(params, BsaParams):
            return params
        if not isinstance(params, dict):
            raise BadInput(f"{where}: bsa_params is {params!r}; expected an object with {', '.join(KEYS)}")
        unknown = sorted(set(params) - set(KEYS))
        if unknown:
            raise BadInput(f"{where}: unknown bsa_params key(s) {unknown}; the original takes {', '.join(KEYS)}")
        p = {**DEFAULTS, **params}
        # sparsity outside [0, 1] would ask the original's top-k for a negative or too large count.
        sparsity = _number(p["sparsity"], "sparsity", where, 0.0, 1.0)
        cdf = _number(p["cdf_threshold"], "cdf_threshold", where)
        if sparsity is None and cdf is None:
            raise BadInput(f"{where}: bsa_params needs sparsity or cdf_threshold (or both); both are null")
        return cls(sparsity, cdf, _chunk(p["chunk_3d_shape_q"], "chunk_3d_shape_q", where),
                   _chunk(p["chunk_3d_shape_k"], "chunk_3d_shape_k", where))

    def to_dict(self) -> dict:
        """The original's spelling (as in dit/config.json and FastVideo's ``bsa_params``)."""
        return {"sparsity": self.sparsity, "cdf_threshold": self.cdf_threshold,
                "chunk_3d_shape_q": list(self.chunk_q), "chunk_3d_shape_k": list(self.chunk_k)}


def chunk_ids(grid: tuple[int, int, int], chunk: tuple[int, int, int], device=None) -> torch.Tensor:
    """[T*H*W] int64: the chunk number of every token of a (T, H, W) grid (t-major tokens)."""
    T, H, W = grid
    t, h, w = chunk
    nh, nw = H // h, W // w
    it = torch.arange(T, device=device) // t
    ih = torch.arange(H, device=device) // h
    iw = torch.arange(W, device=device) // w
    return (it[:, None, None] * (nh * nw) + ih[None, :, None] * nw + iw[None, None, :]).reshape(-1)


def chunk_means(x: torch.Tensor, grid: tuple[int, int, int], chunk: tuple[int, int, int]) -> torch.Tensor:
    """x [B, heads, T*H*W, D] -> [B, heads, n_chunks, D]: each chunk's mean token, in x's dtype."""
    B, Hd, _, D = x.shape
    T, H, W = grid
    t, h, w = chunk
    x = x.reshape(B, Hd, T // t, t, H // h, h, W // w, w, D).permute(0, 1, 2, 4, 6, 3, 5, 7, 8)
    return x.reshape(B, Hd, (T // t) * (H // h) * (W // w), t * h * w, D).mean(dim=3)


def kept_counts(scores: torch.Tensor, params: BsaParams, head_dim: int) -> torch.Tensor:
    """How many key chunks each query chunk keeps: [B, heads, Mq] int64 from scores [B, heads, Mq, Mk]."""
    n_k = scores.shape[-1]
    topk = None if params.sparsity is None else int((1 - params.sparsity) * n_k)
    if params.cdf_threshold is None:
        return torch.full(scores.shape[:-1], topk, dtype=torch.int64, device=scores.device)
    weights = torch.softmax(scores * (1 / head_dim ** 0.5), dim=-1)
    cdf = torch.cumsum(torch.sort(weights, dim=-1, descending=True).values, dim=-1)
    threshold = torch.tensor(params.cdf_threshold, dtype=torch.float32, device=scores.device)
    count = (cdf <= threshold).sum(dim=-1)
    return count if topk is None else count.clamp(min=topk)


def select_chunks(q_means: torch.Tensor, k_means: torch.Tensor, params: BsaParams) -> torch.Tensor:
    """The kept (query chunk, key chunk) pairs: bool [B, heads, Mq, Mk]."""
    scores = q_means @ k_means.transpose(-1, -2)
    counts = kept_counts(scores, params, q_means.shape[-1])
    order = torch.sort(scores, dim=-1, descending=True).indices
    rank_kept = torch.arange(scores.shape[-1], device=scores.device) < counts[..., None]
    return torch.zeros_like(rank_kept).scatter(-1, order, rank_kept)


def check_head_dim(head_dim: int, where: str | None = None) -> None:
    if head_dim not in HEAD_DIMS:
        raise BadInput(f"{where + ': ' if where else ''}block-sparse attention needs a head dim in "
                       f"{{{', '.join(map(str, HEAD_DIMS))}}} (the original's kernels); this model's is {head_dim} "
                       "(hidden_size / num_heads): leave enable_bsa off for it")


def check_shapes(q: torch.Tensor, k: torch.Tensor, grid_q, grid_k, params: BsaParams) -> None:
    check_head_dim(q.shape[-1])
    for name, x, grid, chunk, key in (("query", q, grid_q, params.chunk_q, "chunk_3d_shape_q"),
                                      ("key", k, grid_k, params.chunk_k, "chunk_3d_shape_k")):
        if x.shape[2] != grid[0] * grid[1] * grid[2]:
            raise BadInput(f"block-sparse attention: {x.shape[2]} {name} tokens do not fill a {tuple(grid)} grid")
        if any(g % c for g, c in zip(grid, chunk)):
            raise BadInput(f"block-sparse attention: the {name} token grid (T, H, W) = {tuple(grid)} is not divisible "
                           f"by bsa_params.{key} {list(chunk)}; pick a latent size (or num_cond_latents) that is a "
                           "multiple of the chunk, or change the chunk shape")


def bsa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid_q: tuple[int, int, int],
                  grid_k: tuple[int, int, int], params: BsaParams) -> torch.Tensor:
    """q [B, heads, Tq*H*W, D] over ``grid_q``, k/v [B, heads, Tk*H*W, D] over ``grid_k``
    -> [B, heads, Tq*H*W, D] in q's dtype."""
    check_shapes(q, k, grid_q, grid_k, params)
    D = q.shape[-1]
    # Gating in the model dtype, as the original (its means and scores are not upcast).
    kept = select_chunks(chunk_means(q, grid_q, params.chunk_q), chunk_means(k, grid_k, params.chunk_k), params)
    cq = chunk_ids(grid_q, params.chunk_q, q.device)
    ck = chunk_ids(grid_k, params.chunk_k, q.device)
    allowed = kept[:, :, cq][:, :, :, ck]                                    # [B, heads, Sq, Sk]
    scores = (q.float() @ k.float().transpose(-1, -2)) * D ** -0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # A query chunk that kept nothing: every score is -inf, softmax is NaN; the original outputs 0.
    probs = torch.where(allowed.any(dim=-1, keepdim=True), probs, torch.zeros((), dtype=probs.dtype, device=q.device))
    return (probs @ v.float()).to(q.dtype)
