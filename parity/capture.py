"""Every recorder of the tool: forward hooks that record what named modules return
(per forward, or every call concatenated), feed a module a given input in place
of its own (layer / blocks modes), and observe a denoising loop (each DiT call
and each scheduler step) and its timing. They only record: nothing here changes
what a side computes, except ``Feeder`` (by design) and ``cast_inputs_to``."""
from __future__ import annotations

import time

import torch

from longcat_convert.errors import BadInput


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


class CallRecorder:
    """Forward hooks keeping every call's output of named modules (first element of a
    tuple), float32 on the CPU; ``rows(dim)`` concatenates a module's calls along ``dim``
    (a causal VAE block runs once per chunk of frames)."""

    def __init__(self, model, names):
        self.calls: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        missing = [n for n in names if not _has(model, n)]
        if missing:
            raise BadInput(f"{type(model).__name__} has no module {missing[0]!r}: the two implementations no "
                           "longer share this structure")
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(_m, _a, out):
            self.calls[name].append(_first(out).detach().float().cpu().clone())
        return hook

    def rows(self, dim: int | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for n, ts in self.calls.items():
            if ts:
                out[n] = ts[0] if len(ts) == 1 else torch.cat(ts, dim=dim)
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def _has(model, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def sync(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedDiT:
    """A DiT callable that keeps the wall time of each denoising call (not a cache prefill)."""

    def __init__(self, dit, device):
        self.dit, self.device, self.seconds = dit, torch.device(device), []

    def __call__(self, **kw):
        sync(self.device)
        t0 = time.perf_counter()
        out = self.dit(**kw)
        sync(self.device)
        if not kw.get("return_kv"):
            self.seconds.append(time.perf_counter() - t0)
        return out


def cast_inputs_to(dtype):
    """A forward pre-hook handing the model float copies of its hidden states and text in
    ``dtype`` (what CUDA autocast would let through where a stage hands bf16 to a float32 model)."""
    def hook(_mod, args, kw):
        for k in ("hidden_states", "encoder_hidden_states"):
            if torch.is_tensor(kw.get(k)) and kw[k].is_floating_point():
                kw[k] = kw[k].to(dtype)
        return args, kw
    return hook


class LoopObserver:
    """Records a native denoising loop through hooks: what each DiT call received and
    returned (and its wall time), what each scheduler step received and returned, and
    whatever the runner ``put``s (schedule, stage results)."""

    def __init__(self, model, scheduler, device):
        self.rows: dict = {}
        self.seconds: list[float] = []
        self.step = 0
        self.device = torch.device(device)
        self._t0 = 0.0
        self._handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         model.register_forward_hook(self._post, with_kwargs=True)]
        dtype = next(model.parameters()).dtype
        if dtype == torch.float32 and self.device.type != "cuda":
            # After the recording hook: the DiT gets float32 copies of the bfloat16
            # latents/text the stage handed it (what CUDA autocast would let through).
            self._handles.append(model.register_forward_pre_hook(cast_inputs_to(dtype), with_kwargs=True))
        self._scheduler = scheduler
        original_step = scheduler.step

        def step(model_output, timestep, sample, *a, **k):
            out = original_step(model_output, timestep, sample, *a, **k)
            prev = out[0] if isinstance(out, tuple) else out.prev_sample
            self.put(f"step.{self.step}.noise_pred", model_output)
            self.put(f"step.{self.step}.latents", prev)
            self.step += 1
            return out
        scheduler.step = step        # an instance attribute: the class and other instances are untouched

    def put(self, name, t):
        self.rows[name] = t.detach().float().cpu().clone() if t.is_floating_point() else t.detach().cpu().clone()

    def _pre(self, _mod, _args, kw):
        if not kw.get("return_kv"):
            self.put(f"step.{self.step}.timestep", kw["timestep"])
            self.put(f"step.{self.step}.dit_in", kw["hidden_states"])
        sync(self.device)
        self._t0 = time.perf_counter()

    def _post(self, _mod, _args, kw, out):
        sync(self.device)
        if kw.get("return_kv"):
            for i, (k, v) in sorted(out[1].items()):
                self.put(f"kv_cache.{i}.k", k)
                self.put(f"kv_cache.{i}.v", v)
            return
        self.seconds.append(time.perf_counter() - self._t0)
        self.put(f"step.{self.step}.dit_out", out[0] if isinstance(out, tuple) else out)

    def close(self):
        for h in self._handles:
            h.remove()
        del self._scheduler.step
