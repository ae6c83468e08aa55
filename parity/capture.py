"""Forward hooks: record what named modules return, and (layer/blocks modes)
feed a module a given input in place of its own."""
from __future__ import annotations

import torch


def _first(out):
    # Modules that return (tensor, extra) -- a block with return_kv, FastVideo's
    # linears -- are recorded by their first element, as the golden data is.
    return out[0] if isinstance(out, (tuple, list)) else out


class Recorder:
    """Records outputs (and optionally first positional inputs) of named modules.

    ``rename`` maps a module name to the name it is recorded under (blocks mode
    runs block i as ``blocks.0`` of a one-block model)."""

    def __init__(self, model: torch.nn.Module, names, *, inputs: bool = False, rename: dict | None = None):
        self.model, self.names = model, list(names)
        self.rename = rename or {}
        self.keep_inputs = inputs
        self.outputs: dict[str, torch.Tensor] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self) -> "Recorder":
        modules = dict(self.model.named_modules())
        for name in self.names:
            if name not in modules:
                raise KeyError(f"model has no module {name!r}")
            key = self.rename.get(name, name)
            self._handles.append(modules[name].register_forward_hook(self._out_hook(key)))
            if self.keep_inputs:
                self._handles.append(modules[name].register_forward_pre_hook(self._in_hook(key)))
        return self

    def _out_hook(self, key):
        def hook(_m, _args, out):
            self.outputs[key] = _first(out).detach().clone()
        return hook

    def _in_hook(self, key):
        def hook(_m, args):
            if args and torch.is_tensor(args[0]):
                self.inputs[key] = args[0].detach().clone()
        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class Feeder:
    """Replaces the first positional input of named modules with given tensors
    (cast to the tensor the module would have received: same dtype/device)."""

    def __init__(self, model: torch.nn.Module, feeds: dict[str, torch.Tensor]):
        self.model, self.feeds = model, feeds
        self._handles = []

    def __enter__(self) -> "Feeder":
        modules = dict(self.model.named_modules())
        for name, tensor in self.feeds.items():
            if name not in modules:
                raise KeyError(f"model has no module {name!r}")
            self._handles.append(modules[name].register_forward_pre_hook(self._hook(tensor)))
        return self

    @staticmethod
    def _hook(tensor):
        def hook(_m, args):
            if not args or not torch.is_tensor(args[0]):
                return None
            own = args[0]
            if own.shape != tensor.shape:
                raise RuntimeError(f"cannot feed {tuple(tensor.shape)} where the module gets {tuple(own.shape)}")
            return (tensor.to(device=own.device, dtype=own.dtype),) + tuple(args[1:])
        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
