"""FastVideo's real native LongCat DiT (fastvideo==0.2.1), set up to run in a
single process on the CPU or one GPU.

fastvideo is imported lazily: the converter and the reference never need it.
The run-time adjustments below touch fastvideo internals without editing the
package; each is needed on 0.2.1 and is documented in docs/converting.md (Installing).

Block-sparse attention: FastVideo's native LongCat module imports its vendored
BSA Triton kernels, and fastvideo imports triton in many places. On a machine
without CUDA those kernels can only run through Triton's interpreter, which
must be switched on (``TRITON_INTERPRET=1``) before triton is first imported;
importing this module does that (and ``ensure_runtime`` again, for a CPU run on
a CUDA machine), so users never set the variable themselves.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import fixes
from fixes import patching
from longcat_convert.errors import BadInput
from reference import triton_cpu

FASTVIDEO_VERSION = "0.2.1"
_SDPA_BACKEND = "fastvideo.attention.backends.sdpa.SDPABackend"
_runtime_ready = False
_dist_dir: tempfile.TemporaryDirectory | None = None


def fastvideo_available() -> str | None:
    """None when fastvideo 0.2.1 imports; otherwise why not (for skip reasons)."""
    try:
        import importlib.metadata as md
        v = md.version("fastvideo")
    except Exception:
        return "fastvideo is not installed (run `make install`)"
    if v != FASTVIDEO_VERSION:
        return f"fastvideo {v} is installed; this tool is pinned to {FASTVIDEO_VERSION}"
    return None


@contextlib.contextmanager
def fixes_installed(names, device=None):
    """Our fixes (fixes/) installed for a scope, FastVideo first imported the tool's way
    (``ensure_runtime``: its CPU adjustments made, its banners silenced) so the fixes wrap
    the classes the run then uses. ``names``: a list, or a spec ("all", "a,b"); none: a no-op."""
    names = fixes.parse(names) if isinstance(names, str) or names is None else list(names)
    if names:
        ensure_runtime(device)
    with fixes.installed(names):
        yield names


def prepare_process(device=None) -> None:
    """The environment a run needs in this process, set when the run starts (importing
    this module sets nothing): Triton's interpreter for a CPU run (``device``; None: no
    CUDA here), set before anything imports triton (diffusers and FastVideo do), so the
    block-sparse kernels can run on the CPU. The commands call it first; a library
    caller that runs BSA on the CPU after importing diffusers calls it first too."""
    if "triton" not in sys.modules:
        triton_cpu.prepare(device)


def ensure_runtime(device=None, *, sp_size: int = 1, init_file: str | None = None) -> None:
    """Initialise FastVideo's single-process runtime once per process.
    ``device``: where models will run (a CPU run gets Triton's interpreter).
    ``sp_size``/``init_file``: a rank of a sequence-parallel run (parity/sp_worker.py):
    FastVideo's own ``maybe_init_distributed_environment_and_model_parallel(1, sp_size)``
    rendezvous on ``file://init_file`` (RANK / LOCAL_RANK / WORLD_SIZE from the environment)."""
    global _runtime_ready, _dist_dir
    if _runtime_ready:
        return
    why = fastvideo_available()
    if why:
        raise BadInput(why)
    prepare_process(device)
    os.environ.setdefault("FASTVIDEO_LOGGING_LEVEL", "WARNING")
    import warnings
    # Every native block enters autocast(device_type='cuda'); on a CPU torch warns each time.
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    # FastVideo's vendored BSA kernels use tl.make_block_ptr, which triton 3.8 warns about on every launch;
    # the inductor compile of its gating logs a CUDA_HOME line on a machine without CUDA.
    warnings.filterwarnings("ignore", message=".*make_block_ptr is deprecated.*")
    import logging
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # triton prints a banner on import
        from fastvideo.platforms.cpu import CpuPlatform
        import fastvideo.distributed as fvd
        import fastvideo.layers.lora.linear as fv_lora
        import fastvideo.models.dits.longcat  # noqa: F401  (imports the block-sparse triton kernels)

    # 0.2.1's CpuPlatform names no attention backend; SDPA is what it would pick. Through the one
    # patch mechanism (fixes/patching.py), for the life of the process.
    patching.replace(CpuPlatform, "get_attn_backend_cls", classmethod(_sdpa_backend), key=_CPU_KEY)
    # 0.2.1 reports 'mps' as the local device on a CPU platform, which breaks LoRA merging.
    import torch
    if not torch.cuda.is_available():
        point_fastvideo_at("cpu", only=(fv_lora.__name__,))
    if init_file is None:
        _dist_dir = tempfile.TemporaryDirectory(prefix="lcc-dist-")
        init_file = str(Path(_dist_dir.name) / "init")
    fvd.maybe_init_distributed_environment_and_model_parallel(
        1, sp_size, distributed_init_method="file://" + str(init_file))
    _runtime_ready = True


# The fastvideo modules whose ``get_local_torch_device`` the stages, loaders and
# pipelines that parity runs consult.
_DEVICE_USERS = ("fastvideo.models.loader.component_loader", "fastvideo.pipelines", "fastvideo.pipelines.stages",
                 "fastvideo.pipelines.stages.timestep_preparation",
                 "fastvideo.pipelines.stages.longcat_refine_timestep")


_CPU_KEY = "longcat-convert: FastVideo on a CPU"


def _sdpa_backend(cls, *args, **kwargs) -> str:
    return _SDPA_BACKEND


def _cpu_device():
    import torch
    return torch.device("cpu")


def point_fastvideo_at(device, *, only: tuple[str, ...] | None = None) -> None:
    """The one run-time adjustment of FastVideo's device: 0.2.1 answers ``mps`` from
    ``get_local_torch_device()`` on a CPU platform (distributed/parallel_state.py), so every
    fastvideo module that holds that function (or only the modules named in ``only``) gets
    one answering the CPU instead. Nothing changes on CUDA."""
    import importlib
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        return
    import fastvideo.distributed.parallel_state as ps
    for name in (only or _DEVICE_USERS):
        importlib.import_module(name)
    original = patching.original(ps, "get_local_torch_device")
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("fastvideo") or (only is not None and name not in only):
            continue
        if getattr(mod, "get_local_torch_device", None) is original:
            # a keyed layer of the one patch mechanism, for the life of the process
            patching.replace(mod, "get_local_torch_device", _cpu_device, key=_CPU_KEY)


# The one run-time adjustment that lets FastVideo's FSDP code run on a CPU (issue 22): the name a
# report's notes cite.
FSDP_MESH_ON_CPU = ("fsdp-mesh-on-cpu: on a CPU run, FastVideo's FSDP device meshes are made with device type "
                    "\"cpu\" (gloo) instead of the \"cuda\" that models/loader/fsdp_load.py maybe_load_fsdp_model "
                    "and component_loader.py TextEncoderLoader.load_model hard-code; init_device_mesh is rebound in "
                    "those two modules for the run and restored after it; nothing else changes")
_MESH_USERS = ("fastvideo.models.loader.fsdp_load", "fastvideo.models.loader.component_loader")


@contextlib.contextmanager
def fsdp_mesh_on_cpu(device="cpu"):
    """For the scope: FastVideo's FSDP device meshes on a CPU run are made with device type
    ``"cpu"`` (``FSDP_MESH_ON_CPU``). Yields whether the adjustment is active (never on CUDA,
    where FastVideo's own mesh is right). Every other argument reaches torch's
    ``init_device_mesh`` unchanged; the names are restored on the way out."""
    import importlib
    import torch
    if torch.device(device).type == "cuda":
        yield False
        return
    ensure_runtime(device)
    from fixes import patching

    def on_cpu(previous):
        def init_device_mesh(device_type, *a, **k):
            return previous("cpu" if device_type == "cuda" else device_type, *a, **k)
        init_device_mesh.lcc_adjustment = FSDP_MESH_ON_CPU
        return init_device_mesh
    with patching.Patches() as p:              # the one patch mechanism; undone on the way out
        for name in _MESH_USERS:
            p.wrap(importlib.import_module(name), "init_device_mesh", on_cpu, key="fsdp-mesh-on-cpu")
        yield True


def fastvideo_args(converted, *, dtype=None, device="cpu", overrides: dict | None = None):
    """FastVideoArgs for CONVERTED with its LongCat pipeline config (resolved from
    model_index.json as FastVideo's registry does), every component in ``dtype`` and
    no CPU offload (offload would wrap modules with FSDP, which needs CUDA)."""
    import torch
    ensure_runtime(device)
    from fastvideo.fastvideo_args import FastVideoArgs
    from fastvideo.registry import get_pipeline_config_cls_from_name
    from longcat_convert.dtypes import short
    prec = short(dtype or torch.float32)
    try:
        cfg_cls = get_pipeline_config_cls_from_name(str(converted))
    except Exception as e:
        raise BadInput(f"{converted}: FastVideo finds no pipeline config for it ({e}); convert a model folder "
                       "(model_index.json names the LongCat pipeline)") from None
    pc = cfg_cls()
    pc.dit_precision = pc.vae_precision = prec
    pc.text_encoder_precisions = tuple(prec for _ in pc.text_encoder_precisions)
    args = FastVideoArgs(model_path=str(converted), pipeline_config=pc, text_encoder_cpu_offload=False,
                         dit_cpu_offload=False, vae_cpu_offload=False, image_encoder_cpu_offload=False)
    if overrides:           # parity --fastvideo KEY=VALUE: applied as FastVideo applies keyword arguments
        # The tool's own settings first, the user's fields over them (a field given both ways
        # is the user's).
        kwargs = dict(model_path=str(converted), pipeline_config=pc, text_encoder_cpu_offload=False,
                      dit_cpu_offload=False, vae_cpu_offload=False, image_encoder_cpu_offload=False)
        args = FastVideoArgs.from_kwargs(**{**kwargs, **overrides})
    point_fastvideo_at(device)
    return args


def forget_runtime() -> None:
    """A forked SP rank set its inherited runtime aside: the next ``ensure_runtime``
    initialises this process's own (parity/sp_worker.py)."""
    global _runtime_ready
    _runtime_ready = False


@contextlib.contextmanager
def forward_context():
    from fastvideo.forward_context import set_forward_context
    with set_forward_context(current_timestep=0, attn_metadata=None):
        yield


def arch_kwargs(native_cfg: dict) -> dict:
    """FastVideo arch-config fields from a native transformer/config.json dict."""
    from fastvideo.configs.models.dits.longcat import LongCatVideoArchConfig
    from dataclasses import fields
    valid = {f.name for f in fields(LongCatVideoArchConfig)}
    kw = {k: v for k, v in native_cfg.items() if k in valid and not k.startswith("_")}
    if "patch_size" in kw:
        kw["patch_size"] = tuple(kw["patch_size"])
    return kw


def build_native_model(native_cfg: dict, dtype=None, device="cpu", model_cls=None):
    """An uninitialised ``LongCatTransformer3DModel`` for a native config dict (``model_cls``:
    another class of that signature, e.g. a patched copy's, bench/dit_calls.py).

    Its linears are allocated with torch.empty: load every weight before use.
    """
    ensure_runtime(device)
    import torch
    from fastvideo.configs.models.dits.longcat import LongCatVideoArchConfig, LongCatVideoConfig
    if model_cls is None:
        from fastvideo.models.dits.longcat import LongCatTransformer3DModel as model_cls
    arch = LongCatVideoArchConfig(**arch_kwargs(native_cfg))
    # The wrapper config, not the arch config: cross-attention reads config.arch_config.
    model = model_cls(config=LongCatVideoConfig(arch_config=arch), hf_config={})
    model = model.to(device=device, dtype=dtype or torch.float32)
    return model.eval()


# ---------------------------------------------------------------------------
# Loading converted weights and running a forward.
# ---------------------------------------------------------------------------

def transformer_dir(converted: str | os.PathLike) -> Path:
    """CONVERTED may be the output folder (holding transformer/) or transformer/ itself."""
    from longcat_convert.export import resolve_native
    return resolve_native(str(converted)).transformer


def read_native_config(tdir: Path) -> dict:
    from longcat_convert import config_map
    cfg = config_map.load(tdir / "config.json")
    if cfg.get("_class_name") != config_map.NATIVE_CLASS:
        raise BadInput(f"{tdir / 'config.json'}: _class_name is {cfg.get('_class_name')!r}, expected "
                       f"{config_map.NATIVE_CLASS!r} (is this an original dit/ folder? pass it as SOURCE)")
    return cfg


def native_dims(cfg: dict):
    """table.Dims of a native config, through the converter's config translation."""
    from longcat_convert import config_map
    from longcat_convert.table import Dims
    return Dims.from_original_config(config_map.to_original(cfg)[0], "transformer/config.json")


def load_state(model, reader, *, rename: dict[str, str] | None = None, device="cpu",
               keys: list[str] | None = None, strict: bool = True) -> None:
    """Copy tensors from a ShardedReader into ``model``'s existing parameters,
    one tensor at a time (memory in flight: the largest tensor, not a state dict).

    ``rename`` maps checkpoint key -> model key (blocks mode loads block i into
    a one-block model's blocks.0). Each tensor is cast to the parameter's dtype:
    converted files keep the checkpoint's dtype, the model runs in the dtype asked
    for. ``strict``: every model key must be loaded.
    """
    import torch
    want = model.state_dict(keep_vars=True)
    keys = list(reader.keys()) if keys is None else keys
    rename = rename or {}
    loaded = set()
    with torch.no_grad():
        for k in keys:
            mk = rename.get(k, k)
            if mk not in want:
                raise BadInput(f"{reader.path}: unexpected key {k!r} for this model")
            info = reader.info(k)
            if tuple(info.shape) != tuple(want[mk].shape):
                raise BadInput(f"{reader.path}: {k!r} has shape {tuple(info.shape)}, the model expects "
                               f"{tuple(want[mk].shape)}")
            want[mk].copy_(reader.get(k).to(device=device))
            loaded.add(mk)
    missing = sorted(set(want) - loaded)
    if strict and missing:
        raise BadInput(f"{reader.path}: missing {len(missing)} key(s): {', '.join(missing[:6])}")


def apply_lora(model, lora_file: str | os.PathLike, strength: float) -> list[str]:
    """Apply a converted LoRA through FastVideo's own LoRA layer code, so its
    alpha/rank handling (int(alpha) / rank, merged into the weight) is what runs."""
    import torch
    from safetensors.torch import load_file
    ensure_runtime()
    from fastvideo.layers.lora.linear import BaseLayerWithLoRA, get_lora_layer, replace_submodule
    p = Path(lora_file)
    if not p.is_file():
        raise BadInput(f"{p}: no such converted LoRA (convert the model folder with its lora/ first)")
    sd = load_file(str(p))
    modules: dict[str, dict] = {}
    for k, v in sd.items():
        for sfx in (".lora_A.weight", ".lora_B.weight", ".lora_alpha"):
            if k.endswith(sfx):
                modules.setdefault(k[: -len(sfx)], {})[sfx.split(".")[1]] = v
                break
        else:
            raise BadInput(f"{p}: unexpected key {k!r} in a FastVideo-format LoRA")
    named = dict(model.named_modules())
    done = []
    for name, parts in sorted(modules.items()):
        if "lora_A" not in parts or "lora_B" not in parts:
            raise BadInput(f"{p}: {name} needs both lora_A and lora_B")
        if name not in named:
            raise BadInput(f"{p}: LoRA targets {name!r}, which the native model does not have")
        layer = named[name]
        # A layer an earlier LoRA already wrapped takes this one on top: FastVideo
        # accumulates the merged deltas (several LoRAs at once).
        stacked = isinstance(layer, BaseLayerWithLoRA)
        if not stacked:
            layer = get_lora_layer(layer)
            if layer is None:
                raise BadInput(f"{p}: {name!r} is not a linear layer FastVideo can wrap with LoRA")
            replace_submodule(model, name, layer)
        alpha = parts.get("lora_alpha")
        w = layer.weight
        with torch.no_grad():
            layer.set_lora_weights(parts["lora_A"].to(w), parts["lora_B"].to(w),
                                   lora_alpha=None if alpha is None else float(alpha), strength=strength,
                                   accumulate=stacked)
        done.append(name)
    return done


def set_bsa(model, params: dict | None, device=None) -> None:
    """FastVideo's own block-sparse attention switch, as its LongCat pipeline uses it:
    None -> ``model.disable_bsa()``; a dict -> ``model.enable_bsa()`` and these
    ``bsa_params`` set on every block's ``self_attn`` ({} keeps the ones the model
    was built with from its config). The native forward then calls FastVideo's
    vendored ``flash_attn_bsa_3d`` (Triton; interpreted on a CPU)."""
    if params is None:
        model.disable_bsa()
        return
    import fastvideo.models.dits.longcat as fv_longcat
    bsa_mod = __import__(fv_longcat.flash_attn_bsa_3d.__module__, fromlist=["_"])
    triton_cpu.check(bsa_mod.create_mask_from_indices_kernel, "FastVideo's block-sparse attention", device)
    import torch
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32 and torch.device(device or "cpu").type == "cpu":
        # Measured: under Triton's interpreter both the original's and FastVideo's BSA kernel
        # return values ~1e9 for bf16 inputs of order 1 (float32 agrees with a dense masked
        # attention to 2e-7). A comparison would only measure the interpreter.
        raise BadInput(f"block-sparse attention in {str(dtype).replace('torch.', '')} cannot be checked on the "
                       "CPU: Triton's interpreter computes the low-precision BSA kernel wrongly (the original's "
                       "too); use --dtype fp32 on the CPU, or --device cuda")
    model.enable_bsa()
    for block in model.blocks:
        if params:
            block.self_attn.bsa_params = dict(params)
        elif block.self_attn.bsa_params is None:
            raise BadInput("block-sparse attention switched on, but the converted config.json has no bsa_params")


def run(model, inp, dtype, device, *, kv_cache: dict | None = None, **overrides):
    """One native forward with FastVideo's argument order -> (output, kv or None).

    Hidden states and text are cast to the model dtype here (the native patch
    embedding has no cast of its own); the timestep stays float32, as a
    scheduler hands it over."""
    import torch
    a = inp.call(dtype, device, kv_cache=kv_cache, **overrides)
    with torch.no_grad(), forward_context():
        out = model(a.pop("hidden_states").to(dtype), a.pop("encoder_hidden_states").to(dtype),
                    a.pop("timestep").float(), **a)
    return out if isinstance(out, tuple) else (out, None)


# ---------------------------------------------------------------------------
# parity --fastvideo KEY=VALUE: FastVideo fields for every run of FastVideo.
# ---------------------------------------------------------------------------

def load_native_via_fastvideo(converted, *, dtype, device, overrides: dict):
    """The native DiT as FastVideo's ``TransformerLoader`` builds it from CONVERTED's transformer/
    with ``overrides`` (its precision, offload, FSDP, compile, quantisation and
    attention-backend handling), instead of ``build_native_model`` + ``load_state``."""
    args = fastvideo_args(converted, dtype=dtype, device=device, overrides=overrides)
    from fastvideo.models.loader.component_loader import TransformerLoader
    model = TransformerLoader().load(str(transformer_dir(converted)), args)
    return model.eval()
