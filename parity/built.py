"""What FastVideo built and how a run went, read from the objects: per module parameter
dtypes and devices, attention backends and their calls, the wrappers installed
(``torch.compile``, FSDP, FastVideo's hooks, LoRA layers, quantised linears), where the
weights sit during a step; a run's peak resident memory, FastVideo's warnings, and where in
FastVideo an exception was raised. Recorders only: nothing here changes a run."""
from __future__ import annotations

import contextlib
import os
import threading
import traceback

import torch


class PeakRSS:
    """Peak resident memory above the start, sampled every 2 ms from /proc/self/statm."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:
            return 0

    def _loop(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return round((self.peak - self.start) / 2 ** 20, 1)


def where(exc: BaseException) -> str:
    """file:line function of the innermost frame in fastvideo (else the innermost)."""
    tb = traceback.extract_tb(exc.__traceback__)
    fv = [f for f in tb if "fastvideo" in f.filename] or tb
    if not fv:
        return "?"
    f = fv[-1]
    fn = f.filename.split("site-packages/")[-1]
    return f"{fn}:{f.lineno} {f.name}"


def error_info(phase: str, e: BaseException) -> dict:
    msg = " ".join(str(e).split())
    return {"phase": phase, "type": type(e).__name__, "message": msg[:400], "where": where(e)}


class LogTap:
    """FastVideo's warnings during a run (logger ``fastvideo``), for the row's message."""

    def __init__(self):
        import logging
        self.lines: list[str] = []
        tap = self

        class H(logging.Handler):
            def emit(self, record):
                if record.levelno >= logging.WARNING:
                    tap.lines.append(" ".join(record.getMessage().split())[:300])
        self.h = H()

    def __enter__(self):
        import logging
        logging.getLogger("fastvideo").addHandler(self.h)
        return self

    def __exit__(self, *exc):
        import logging
        logging.getLogger("fastvideo").removeHandler(self.h)


def count_attention(model) -> tuple[dict, list]:
    """Calls per attention backend class, counted by forward hooks on FastVideo's attention layers."""
    calls: dict = {}
    handles: list = []
    for _name, m in model.named_modules():
        impl = getattr(m, "attn_impl", None)
        if impl is None:
            continue
        key = type(impl).__name__

        def hook(_m, _a, _o, key=key):
            calls[key] = calls.get(key, 0) + 1
        handles.append(m.register_forward_hook(hook))
    return calls, handles


def placement(pipe) -> dict:
    out = {}
    for name in ("transformer", "text_encoder", "vae"):
        m = pipe.modules.get(name)
        if isinstance(m, torch.nn.Module):
            out[name] = sorted({str(p.device) for p in m.parameters()})
    return out


def inspect(pipe) -> dict:
    """What FastVideo built, read from the objects: per module parameter dtypes and
    devices, attention backends, installed wrappers."""
    built: dict = {"pipeline": type(pipe).__name__, "modules": {}}
    for name in ("transformer", "text_encoder", "vae"):
        m = pipe.modules.get(name)
        if not isinstance(m, torch.nn.Module):
            continue
        info = inspect_module(m)
        if name != "transformer":
            del info["attention_layers"]         # only the transformer's are LongCat's attention
        info["pinned"] = any(p.device.type == "cpu" and p.is_pinned() for p in m.parameters()) \
            if torch.cuda.is_available() else False
        if name == "vae":
            info["use_tiling"] = bool(getattr(m, "use_tiling", False))
            info["use_feature_cache"] = bool(getattr(m, "use_feature_cache", False))
            info["tile_sample_min_hw"] = [getattr(m, "tile_sample_min_height", None),
                                          getattr(m, "tile_sample_min_width", None)]
        if name == "transformer":
            # The request FastVideo's loader recorded for this component (attention/selector.py
            # record_resolved_attention_backend): None means automatic selection.
            req = getattr(getattr(m, "config", None), "_resolved_attention_backend", None)
            info["attention_request"] = getattr(req, "name", req)
        built["modules"][name] = info
    lora = lora_state(pipe)
    if lora:
        built["lora"] = lora
    return built


def inspect_module(m: torch.nn.Module) -> dict:
    """One built module: class, parameter dtypes and devices, attention layers, wrappers."""
    dts: dict = {}
    for p in m.parameters():
        d = str(p.dtype).replace("torch.", "")
        dts[d] = dts.get(d, 0) + p.numel()
    backends: dict = {}
    for _mn, sub in m.named_modules():
        impl = getattr(sub, "attn_impl", None)
        if impl is not None:
            kind = f"{type(sub).__name__}:{type(impl).__name__}"
            backends[kind] = backends.get(kind, 0) + 1
    return {"class": type(m).__name__, "param_dtypes": dts, "param_devices": sorted({str(p.device) for p in
                                                                                     m.parameters()}),
            "attention_layers": backends, "wrappers": wrappers(m)}


def _count_into(out: dict, key: str, m: torch.nn.Module, cls) -> None:
    n = sum(1 for s in m.modules() if isinstance(s, cls))
    if n:
        out[key] = n


def wrappers(m: torch.nn.Module) -> dict:
    w: dict = {}
    if type(m).__name__ == "OptimizedModule" or hasattr(m, "_orig_mod"):
        w["torch.compile"] = "OptimizedModule"
    compiled = sum(1 for s in m.modules() if getattr(s, "_compiled_call_impl", None) is not None
                   or hasattr(s.__dict__.get("forward"), "_torchdynamo_orig_callable")
                   or type(s.__dict__.get("forward")).__name__ in ("OptimizedModule", "_TorchDynamoContext"))
    if compiled:
        w["compiled_submodules"] = compiled
    with contextlib.suppress(Exception):
        from torch.distributed.fsdp import FSDPModule
        _count_into(w, "fsdp_modules", m, FSDPModule)
    with contextlib.suppress(Exception):
        from fastvideo.hooks.hooks import ModuleHookManager
        names: dict = {}
        for s in m.modules():
            mgr = getattr(s, ModuleHookManager.module_hook_attribute, None)
            if mgr is not None:
                for hn in list(getattr(mgr, "forward_hooks", {}) or {}):
                    names[hn] = names.get(hn, 0) + 1
        if names:
            w["fastvideo_hooks"] = names
    with contextlib.suppress(Exception):
        from fastvideo.layers.lora.linear import BaseLayerWithLoRA
        _count_into(w, "lora_layers", m, BaseLayerWithLoRA)
    quant = {}
    for s in m.modules():
        qm = getattr(s, "quant_method", None)
        if qm is not None and type(qm).__name__ != "UnquantizedLinearMethod":
            quant[type(qm).__name__] = quant.get(type(qm).__name__, 0) + 1
    if quant:
        w["quant_methods"] = quant
    return w


def lora_state(pipe) -> dict:
    layers = getattr(pipe, "lora_layers", None) or {}
    if not layers and not getattr(pipe, "lora_adapters", None):
        return {}
    names = []
    for _t, ll in layers.items():
        names += [n for n, _ in ll.all_lora_layers()]
    out = {"lora_layers": len(names)}
    cur = getattr(pipe, "cur_adapter_name", "")
    adapter = (getattr(pipe, "lora_adapters", {}) or {}).get(cur, {})
    if adapter:
        targets = sorted({k.rsplit(".", 1)[0] for k in adapter if k.endswith((".lora_A", ".lora_B"))})
        reached = [t for t in targets if t in names]
        out.update(adapter=cur, targets_present=len(targets), targets_reached=len(reached),
                   targets_skipped=sorted(set(targets) - set(reached))[:8],
                   n_skipped=len(set(targets) - set(reached)),
                   layers_without_adapter=len(set(names) - set(targets)))
    return out
