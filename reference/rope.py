"""3D rotary position embedding over (frame, row, column) of the latent grid.

A head's channels are split into a temporal part and two equal spatial parts:
``dim_h = dim_w = 2 * (head_dim // 6)`` and ``dim_t`` takes the rest. Within a
part, channel pair (2j, 2j+1) is rotated by ``position * base**(-2j/dim)``.
The parts are laid out t, h, w. Angles and the rotation are float32; the
result is rounded back to the input dtype.
"""
from __future__ import annotations

import torch


def axis_splits(head_dim: int) -> tuple[int, int, int]:
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _axis_angles(n: int, dim: int, base: float) -> torch.Tensor:
    """[n, dim] float32: angle of each channel at positions 0..n-1 (pairs share one)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    pos = torch.arange(n, dtype=torch.float32)
    return (pos[:, None] * inv_freq[None, :]).repeat_interleave(2, dim=-1)


def grid_angles(grid: tuple[int, int, int], head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """[T*H*W, head_dim] float32 angles for a (T, H, W) grid, tokens in t-major order."""
    T, H, W = grid
    dt, dh, dw = axis_splits(head_dim)
    at, ah, aw = _axis_angles(T, dt, base), _axis_angles(H, dh, base), _axis_angles(W, dw, base)
    full = torch.cat([at[:, None, None, :].expand(T, H, W, dt),
                      ah[None, :, None, :].expand(T, H, W, dh),
                      aw[None, None, :, :].expand(T, H, W, dw)], dim=-1)
    return full.reshape(T * H * W, head_dim)


def _swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class Rope3D:
    """Cached cos/sin tables per (grid, device); not an nn.Module (no parameters)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        self.head_dim, self.base = head_dim, base
        self._tables: dict = {}

    def tables(self, grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(grid), str(device))
        if key not in self._tables:
            ang = grid_angles(tuple(grid), self.head_dim, self.base).to(device)
            self._tables[key] = (ang.cos(), ang.sin())
        return self._tables[key]

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, heads, S, D]; cos/sin: [S, D] float32."""
        xf = x.float()
        return (xf * cos + _swap_pairs(xf) * sin).type_as(x)
