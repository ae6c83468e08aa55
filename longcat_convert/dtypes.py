"""The one dtype vocabulary: every command's ``--dtype`` and every module that names a
precision spells it through this table (no torch import here; ``torch_dtype`` imports
it when asked).

Spellings accepted everywhere: ``fp32 bf16 fp16`` (FastVideo's precision names) and
``float32 bfloat16 float16`` (torch's). ``name`` gives torch's name, ``short``
FastVideo's, ``safetensors`` the header code the converter writes.
"""
from __future__ import annotations

from .errors import BadInput

SPELLINGS = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
             "fp16": "float16", "float16": "float16"}
CHOICES = ("fp32", "bf16", "fp16", "float32", "bfloat16", "float16")      # the click choices, in this order
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}          # FastVideo's precision names
SAFETENSORS = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}      # safetensors header codes
HELP = "fp32, bf16 or fp16 (or float32, bfloat16, float16: the same)"
# Other spellings a policy file or a report may carry (never a --dtype value).
_OTHER = {"f32": "float32", "f16": "float16", "half": "float16", "fp64": "float64", "double": "float64"}


def name(dtype) -> str:
    """'bf16' / 'bfloat16' / torch.bfloat16 / 'torch.bfloat16' -> 'bfloat16'; an unknown
    spelling comes back as given (without ``torch.``)."""
    s = str(dtype).replace("torch.", "")
    return SPELLINGS.get(s) or _OTHER.get(s, s)


def canonical(text, flag: str = "--dtype") -> str:
    """A --dtype value -> torch's name, or one BadInput line naming the flag."""
    s = str(text).replace("torch.", "")
    if s not in SPELLINGS:
        raise BadInput(f"{flag} {text!r}: expected {HELP}")
    return SPELLINGS[s]


def short(dtype) -> str:
    """FastVideo's precision name (fp32, bf16, fp16) of any accepted spelling or torch dtype."""
    return SHORT[canonical(dtype)]


def safetensors(text) -> str:
    """The safetensors header code (F32, BF16, F16) of a --dtype value."""
    return SAFETENSORS[canonical(text)]


def torch_dtype(dtype):
    """The torch dtype of any accepted spelling (a torch.dtype passes through)."""
    import torch
    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, canonical(dtype))
