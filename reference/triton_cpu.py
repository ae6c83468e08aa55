"""Running Triton kernels (the block-sparse attention of the original code and of
FastVideo) on a CPU: through Triton's interpreter.

``triton.jit`` decides at DECORATION time whether a function is compiled for a
GPU or interpreted in numpy; it reads ``TRITON_INTERPRET``. Triton's own language
helpers (``tl.zeros``, ...) are jit functions too, decorated when triton is first
imported. So the variable must be set before triton is imported at all (diffusers
and fastvideo import it), and kernels imported earlier without it cannot run on
a CPU. These helpers set it and check the result, so users never deal with it.
"""
from __future__ import annotations

import os

from longcat_convert.errors import BadInput

VAR = "TRITON_INTERPRET"


def wants_interpreter(device=None) -> bool:
    """True when Triton kernels would run on the CPU: ``device`` is a CPU (or,
    without a device, no CUDA is available)."""
    import torch
    if device is not None:
        return torch.device(device).type == "cpu"
    return not torch.cuda.is_available()


def prepare(device=None) -> None:
    """Call before importing a module that defines Triton kernels."""
    if wants_interpreter(device):
        os.environ[VAR] = "1"


def is_interpreted(kernel) -> bool:
    """Whether a ``triton.jit`` kernel (possibly inside an autotuner) was built for the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction
    while kernel is not None and not isinstance(kernel, InterpretedFunction):
        kernel = getattr(kernel, "fn", None)
    return kernel is not None


def check(kernel, what: str, device=None) -> None:
    """BadInput when a CPU run would meet a kernel (or triton itself) built for the GPU."""
    if not wants_interpreter(device):
        return
    import triton.language as tl
    if not (is_interpreted(kernel) and is_interpreted(tl.zeros)):
        raise BadInput(f"{what} was imported in this process before {VAR}=1 was set, so its Triton kernels "
                       "cannot run on the CPU; run this command in a fresh process (this tool sets the variable "
                       "itself when it imports the kernels first)")
