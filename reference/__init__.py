"""Clean-room reference implementation of the original LongCat-Video DiT.

Same module tree and parameter names as the original, so original checkpoints
load strictly and forward hooks / LoRA names line up. See README.md.
"""
from .config import ReferenceConfig
from .model import ReferenceDiT
from .block import BlockContext, ReferenceBlock
from .loading import load_block, load_reference, load_stem, open_checkpoint

__all__ = ["ReferenceConfig", "ReferenceDiT", "ReferenceBlock", "BlockContext", "load_reference",
           "load_block", "load_stem", "open_checkpoint"]
