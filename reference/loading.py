"""Build the reference from an original ``dit/`` folder, strictly.

Every tensor comes through ``longcat_convert.shards.ShardedReader``; the set of
keys and every shape must be exactly the reference model's own state dict for the
config (``original_shapes``: the original layout, read off our modules), or loading
stops with a one-line BadInput.
Modules are created on the meta device and the checkpoint tensors assigned, so
no memory is spent on an initialisation that would be thrown away.

Streaming: ``load_stem`` builds the model without blocks (embedders + final
layer) and ``load_block`` one block on its own; ``ReferenceDiT.prepare`` /
``finish`` run around blocks you feed one at a time.
"""
from __future__ import annotations

from pathlib import Path

import torch

from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader

from .backends import Backend, get_backend
from .block import ReferenceBlock
from .config import ReferenceConfig
from .model import ReferenceDiT



def parse_dtype(dtype) -> torch.dtype:
    """A torch dtype, or torch's own name of one (``"bfloat16"``); the tool's spellings (``bf16``,
    ...) are turned into torch dtypes by its one vocabulary, longcat_convert/dtypes.py, before
    they reach the reference, which knows nothing of the tool."""
    found = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise BadInput(f"unknown dtype {dtype!r}; a floating torch dtype such as float32 or bfloat16")
    return found


def parse_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadInput(f"unknown device {device!r}; use cpu or cuda[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise BadInput(f"device {device!r} is not supported; use cpu or cuda[:N]")
    return dev


def resolve_checkpoint(path) -> tuple[Path, Path]:
    """A model folder holding ``dit/``, or a ``dit/`` folder -> (model folder, dit folder)."""
    path = Path(path)
    if (path / "dit" / "config.json").is_file():
        return path, path / "dit"
    if (path / "config.json").is_file():
        return path.parent, path
    if not path.exists():
        raise BadInput(f"{path}: no such checkpoint folder")
    raise BadInput(f"{path}: not a LongCat-Video checkpoint (expected dit/config.json or config.json)")


def original_shapes(config: ReferenceConfig) -> dict[str, tuple[int, ...]]:
    """Every key of an original checkpoint for ``config`` and its shape, read off the
    reference's own modules (built on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        model = ReferenceDiT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_keys(present: set[str], expected: set[str], where: str) -> None:
    """Every expected key present and nothing else, or one error listing both."""
    missing, unknown = sorted(expected - present), sorted(present - expected)
    if missing or unknown:
        def listed(keys, what):
            return f"{len(keys)} {what} key(s): {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else "")
        parts = ([listed(missing, "missing")] if missing else []) + ([listed(unknown, "unknown")] if unknown else [])
        raise BadInput(f"{where}: the checkpoint's keys are not the original model's for this config.json: "
                       + "; ".join(parts))


def open_checkpoint(path) -> tuple[ReferenceConfig, ShardedReader, Path]:
    """-> (config, reader over the dit/ tensors, model folder). Checks keys and shapes."""
    model_dir, dit = resolve_checkpoint(path)
    config = ReferenceConfig.from_file(dit / "config.json")
    reader = ShardedReader(dit)
    expected = original_shapes(config)
    check_keys(set(reader.keys()), set(expected), str(dit))
    for key, shape in expected.items():
        info = reader.info(key)
        if tuple(info.shape) != tuple(shape):
            raise BadInput(f"{dit}: {key!r} has shape {list(info.shape)} but config.json implies {list(shape)}")
        if not info.torch_dtype.is_floating_point:
            raise BadInput(f"{dit}: {key!r} has non-float dtype {info.dtype}")
    return config, reader, model_dir


def _assign(module: torch.nn.Module, reader: ShardedReader, prefix: str, dtype, device, where: str) -> None:
    names = set(module.state_dict().keys())
    state = {}
    for name in names:
        key = prefix + name
        if key not in reader:
            raise BadInput(f"{where}: missing key {key!r}")
        state[name] = reader.get(key).to(device=device, dtype=dtype)
    # Both sides are exact: the key set came from the module itself and the
    # checkpoint's keys were checked against the same modules in open_checkpoint.
    module.load_state_dict(state, strict=True, assign=True)


def load_reference(path, dtype="float32", device="cpu", attention: str | Backend = "sdpa") -> ReferenceDiT:
    """The full reference model from a model folder (with dit/) or a dit/ folder."""
    config, reader, _ = open_checkpoint(path)
    return load_opened(config, reader, dtype, device, attention)


def load_opened(config: ReferenceConfig, reader: ShardedReader, dtype="float32", device="cpu",
                attention: str | Backend = "sdpa") -> ReferenceDiT:
    """The full reference model from a checkpoint ``open_checkpoint`` already checked."""
    dtype, device = parse_dtype(dtype), parse_device(device)
    backend = get_backend(attention) if isinstance(attention, str) else attention
    with torch.device("meta"):
        model = ReferenceDiT(config, attention=backend)
    _assign(model, reader, "", dtype, device, str(reader.path))
    return model.eval()


def load_stem(config: ReferenceConfig, reader: ShardedReader, dtype="float32", device="cpu",
              attention: str | Backend = "sdpa") -> ReferenceDiT:
    """Embedders + final layer only (``blocks`` is empty): for block-streamed runs."""
    dtype, device = parse_dtype(dtype), parse_device(device)
    backend = get_backend(attention) if isinstance(attention, str) else attention
    with torch.device("meta"):
        model = ReferenceDiT(config, attention=backend, depth=0)
    _assign(model, reader, "", dtype, device, str(reader.path))
    return model.eval()


def load_block(config: ReferenceConfig, reader: ShardedReader, index: int, dtype="float32", device="cpu",
               attention: str | Backend = "sdpa") -> ReferenceBlock:
    """Block ``index`` on its own, from the ``blocks.<index>.*`` tensors."""
    if not 0 <= index < config.dims.depth:
        raise BadInput(f"block {index} does not exist (depth {config.dims.depth})")
    dtype, device = parse_dtype(dtype), parse_device(device)
    backend = get_backend(attention) if isinstance(attention, str) else attention
    with torch.device("meta"):
        block = ReferenceBlock(config.dims, backend)
    _assign(block, reader, f"blocks.{index}.", dtype, device, str(reader.path))
    if config.enable_bsa:
        from .model import set_block_bsa
        set_block_bsa(block, config.bsa_params)
    return block.eval()
