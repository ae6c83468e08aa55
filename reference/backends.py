"""Attention kernels the reference can run, behind one small interface.

Two entry points, both with softmax scale ``head_dim ** -0.5``:

* ``dense(q, k, v)``: q [B, heads, Sq, D], k/v [B, heads, Sk, D] -> [B, heads, Sq, D]
* ``varlen(q, k, v, q_lens, k_lens)``: packed sequences, q [sum(q_lens), heads, D],
  k/v [sum(k_lens), heads, D]; sequence i of q attends sequence i of k/v only.

``math``  exact softmax(q k^T * scale) v in float32, cast back (what the golden data used)
``sdpa``  torch.nn.functional.scaled_dot_product_attention (default)
``flash2``/``flash3``  the flash-attn 2 / 3 kernels, when installed (CUDA, bf16/fp16 only)
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from longcat_convert.errors import BadInput

NAMES = ("sdpa", "math", "flash2", "flash3")


class Backend:
    name = "?"

    def dense(self, q, k, v):
        raise NotImplementedError

    def varlen(self, q, k, v, q_lens: list[int], k_lens: list[int]):
        # Generic form: one dense call per sequence. Equal lengths batch in one call.
        H, D = q.shape[1], q.shape[2]
        if len(set(q_lens)) == 1 and len(set(k_lens)) == 1:
            B = len(q_lens)
            qb = q.view(B, q_lens[0], H, D).transpose(1, 2)
            kb = k.view(B, k_lens[0], H, D).transpose(1, 2)
            vb = v.view(B, k_lens[0], H, D).transpose(1, 2)
            return self.dense(qb, kb, vb).transpose(1, 2).reshape(-1, H, D)
        outs = []
        for qi, ki, vi in zip(q.split(q_lens), k.split(k_lens), v.split(k_lens)):
            o = self.dense(qi.transpose(0, 1)[None], ki.transpose(0, 1)[None], vi.transpose(0, 1)[None])
            outs.append(o[0].transpose(0, 1))
        return torch.cat(outs, dim=0)


class MathBackend(Backend):
    name = "math"

    def dense(self, q, k, v):
        scale = q.shape[-1] ** -0.5
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        return torch.matmul(scores.softmax(dim=-1), v.float()).to(q.dtype)


class SdpaBackend(Backend):
    name = "sdpa"

    def dense(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class _FlashBase(Backend):
    module_name = "?"

    def __init__(self):
        self.mod = importlib.import_module(self.module_name)

    def _check(self, q):
        if q.dtype not in (torch.float16, torch.bfloat16) or q.device.type != "cuda":
            raise BadInput(f"attention {self.name} runs on CUDA in bfloat16/float16 only "
                           f"(got {q.dtype} on {q.device}); use --attention sdpa or --dtype bfloat16 --device cuda")

    @staticmethod
    def _first(out):
        # flash-attn 3 returns (out, lse) in some releases and out alone in others.
        return out[0] if isinstance(out, (tuple, list)) else out

    @staticmethod
    def _cu(lens, device):
        return torch.tensor([0] + list(lens), device=device).cumsum(0).to(torch.int32)

    def dense(self, q, k, v):
        self._check(q)
        out = self._first(self.mod.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                   softmax_scale=q.shape[-1] ** -0.5))
        return out.transpose(1, 2)

    def varlen(self, q, k, v, q_lens, k_lens):
        self._check(q)
        out = self.mod.flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=self._cu(q_lens, q.device), cu_seqlens_k=self._cu(k_lens, q.device),
            max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens), softmax_scale=q.shape[-1] ** -0.5)
        return self._first(out)


class Flash2Backend(_FlashBase):
    name, module_name = "flash2", "flash_attn"


class Flash3Backend(_FlashBase):
    name, module_name = "flash3", "flash_attn_interface"


_CLASSES = {"sdpa": SdpaBackend, "math": MathBackend, "flash2": Flash2Backend, "flash3": Flash3Backend}


def get_backend(name: str) -> Backend:
    if name not in _CLASSES:
        raise BadInput(f"unknown attention backend {name!r}; choose one of {', '.join(NAMES)}")
    try:
        return _CLASSES[name]()
    except ImportError as e:
        pkg = _CLASSES[name].module_name
        raise BadInput(f"attention {name} needs the {pkg!r} package, which cannot be imported here ({e}); "
                       "install it or use --attention sdpa")


def available() -> list[str]:
    out = []
    for n in NAMES:
        try:
            get_backend(n)
            out.append(n)
        except BadInput:
            pass
    return out
