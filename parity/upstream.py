"""Run the REAL LongCat-Video DiT from a user's checkout (``--reference upstream``).

Nothing in the checkout is edited. What this module does at run time:

* imports ``longcat_video.modules.longcat_video_dit`` from ``--upstream-path``
  (a clone of github.com/meituan-longcat/LongCat-Video), by default after
  placing a stub for ``longcat_video.block_sparse_attention.bsa_interface`` in
  ``sys.modules``: the real one builds Triton kernels at import time, and the DiT
  only needs that name when block-sparse attention is on. With ``real_bsa``
  (or the first time ``UpstreamModel.set_bsa`` switches BSA on) the REAL module
  is imported instead and bound where the upstream attention calls it; on a CPU
  its Triton kernels run through Triton's interpreter (``TRITON_INTERPRET=1``,
  set here before the upstream code, and so triton, is first imported; see
  reference/triton_cpu.py);
* builds the model from ``dit/config.json`` with ``cp_split_hw=[1, 1]`` (the
  original forward needs a value there; [1, 1] is the single-process setting)
  on the meta device and assigns the checkpoint tensors, strictly;
* unless you ask for a real flash-attn kernel that is installed, it points every
  attention module at the flash-attn-2 code path and, for the duration of each
  forward, puts a stand-in ``flash_attn`` module in ``sys.modules`` whose
  ``flash_attn_func`` / ``flash_attn_varlen_func`` compute exact attention
  (``--attention math``, the default here) or torch SDPA (``--attention sdpa``),
  per-sequence for the varlen calls. The previous ``sys.modules`` entries are
  restored afterwards.

The original cannot run bfloat16/float16 on the CPU (its float32 regions are
CUDA autocast, inactive on the CPU), so that combination is refused.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import sys
import types
import warnings
from pathlib import Path

import torch

from longcat_convert.errors import BadInput

from reference import triton_cpu
from reference.backends import get_backend
from longcat_convert.dtypes import torch_dtype
from reference.loading import open_checkpoint, parse_device, resolve_checkpoint

DIT_FILE = Path("longcat_video/modules/longcat_video_dit.py")
BSA_MODULE = "longcat_video.block_sparse_attention.bsa_interface"
ATTN_MODULE = "longcat_video.modules.attention"


def check_checkout(path) -> Path:
    if path is None:
        raise BadInput("--reference upstream needs --upstream-path PATH (a LongCat-Video git checkout)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise BadInput(f"--upstream-path {p}: no such directory")
    if not (p / DIT_FILE).is_file():
        raise BadInput(f"--upstream-path {p}: not a LongCat-Video checkout (no {DIT_FILE}); "
                       "clone https://github.com/meituan-longcat/LongCat-Video")
    return p.resolve()


def _bsa_stub() -> types.ModuleType:
    mod = types.ModuleType(BSA_MODULE)

    def flash_attn_bsa_3d(*_a, **_k):
        raise BadInput("block-sparse attention was reached in the upstream model loaded without its real BSA "
                       "module; load it with real_bsa=True (or switch BSA on through UpstreamModel.set_bsa)")
    mod.flash_attn_bsa_3d = flash_attn_bsa_3d
    mod.is_stub = True
    return mod


def use_real_bsa(device=None):
    """Import the checkout's REAL ``bsa_interface`` (replacing the stub) and bind its
    ``flash_attn_bsa_3d`` where the upstream self-attention calls it. Returns the module.
    ``import_upstream`` must have run (the package and its path are known from it)."""
    current = sys.modules.get(BSA_MODULE)
    if current is None or getattr(current, "is_stub", False):
        sys.modules.pop(BSA_MODULE, None)
        triton_cpu.prepare(device)
        # longcat_video is a namespace package: its path is found through sys.path again.
        checkout = str(Path(sys.modules[ATTN_MODULE].__file__).resolve().parents[2])
        sys.path.insert(0, checkout)
        try:
            with contextlib.redirect_stdout(sys.stderr):        # it prints a TMA banner on import
                current = importlib.import_module(BSA_MODULE)
        except ImportError as e:
            raise BadInput(f"importing the upstream block-sparse attention failed ({e}); it needs triton installed")
        finally:
            sys.path.remove(checkout)
    triton_cpu.check(current.create_mask_from_indices_kernel, "the upstream block-sparse attention", device)
    sys.modules[ATTN_MODULE].flash_attn_bsa_3d = current.flash_attn_bsa_3d
    return current


def import_upstream(checkout: Path, real_bsa: bool = False, device=None):
    """The upstream ``longcat_video_dit`` module, imported from ``checkout``; with
    ``real_bsa`` its real block-sparse attention too (else a stub, unless already real)."""
    loaded = sys.modules.get("longcat_video.modules.longcat_video_dit")
    if loaded is not None:
        if Path(loaded.__file__).resolve() == (checkout / DIT_FILE).resolve():
            if real_bsa:
                use_real_bsa(device)
            return loaded
        for name in [n for n in sys.modules if n == "longcat_video" or n.startswith("longcat_video.")]:
            del sys.modules[name]
    # The DiT's imports (diffusers) import triton: on a CPU it must come up in interpreter
    # mode for the real BSA to run later in this process; nothing else changes.
    triton_cpu.prepare(device)
    if not real_bsa:
        sys.modules[BSA_MODULE] = _bsa_stub()
    sys.path.insert(0, str(checkout))
    try:
        with contextlib.redirect_stdout(sys.stderr):            # the real BSA prints a banner on import
            mod = importlib.import_module("longcat_video.modules.longcat_video_dit")
    except ImportError as e:
        raise BadInput(f"--upstream-path {checkout}: importing the LongCat-Video DiT failed ({e}); "
                       "it needs diffusers and einops installed (and triton for its real block-sparse attention)")
    finally:
        sys.path.remove(str(checkout))
    if real_bsa:
        use_real_bsa(device)
    return mod


def _flash_standin(backend) -> types.ModuleType:
    """A ``flash_attn`` module whose two functions the upstream calls compute with ``backend``."""
    mod = types.ModuleType("flash_attn")

    def _scale_ok(q, softmax_scale):
        if softmax_scale is not None and abs(softmax_scale - q.shape[-1] ** -0.5) > 1e-12:
            raise RuntimeError("stand-in flash_attn supports softmax_scale = head_dim**-0.5 only")

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
        if dropout_p or causal:
            raise RuntimeError("stand-in flash_attn: dropout/causal not supported")
        _scale_ok(q, softmax_scale)
        # A real kernel returns fresh contiguous memory; the upstream relies on it (.view).
        return backend.dense(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2).contiguous()

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                               dropout_p=0.0, softmax_scale=None, causal=False, **_):
        if dropout_p or causal:
            raise RuntimeError("stand-in flash_attn: dropout/causal not supported")
        _scale_ok(q, softmax_scale)
        lq = torch.diff(cu_seqlens_q.long()).tolist()
        lk = torch.diff(cu_seqlens_k.long()).tolist()
        return backend.varlen(q, k, v, lq, lk).contiguous()

    mod.flash_attn_func = flash_attn_func
    mod.flash_attn_varlen_func = flash_attn_varlen_func
    return mod


class UpstreamModel:
    """The upstream model plus what golden-check needs: LoRA switching and a forward
    with the right attention in place. ``.model`` is the real upstream nn.Module."""

    def __init__(self, model, standin, device, dtype, bsa_config: tuple[bool, dict | None] = (False, None)):
        self.model, self.standin, self.device, self.dtype = model, standin, device, dtype
        self._lora_n = 0
        self._bsa_config = bsa_config        # config.json's (enable_bsa, bsa_params)

    @contextlib.contextmanager
    def attention(self):
        if self.standin is None:
            yield
            return
        saved = sys.modules.get("flash_attn")
        sys.modules["flash_attn"] = self.standin
        try:
            yield
        finally:
            if saved is None:
                sys.modules.pop("flash_attn", None)
            else:
                sys.modules["flash_attn"] = saved

    def get_submodule(self, name):
        return self.model.get_submodule(name)

    def __call__(self, **kw):
        with self.attention(), warnings.catch_warnings():
            # "CUDA not available, disabling autocast" from each float32 region on the CPU.
            warnings.simplefilter("ignore", UserWarning)
            return self.model(**kw)

    def set_bsa(self, params: dict | None) -> None:
        """Block-sparse attention for the next forwards, as the original pipeline does it:
        a dict switches it on (``dit.enable_bsa()``) with these ``bsa_params`` set on every
        block's attention ({} -> config.json's); None goes back to what config.json says
        (``dit.disable_bsa()`` unless its enable_bsa is true). The real BSA module is
        imported on first use."""
        enabled, config_params = self._bsa_config
        if params is None:
            if not enabled:
                self.model.disable_bsa()
                return
            params = {}
        params = dict(params) or (dict(config_params) if config_params else None)
        if params is None:
            raise BadInput("block-sparse attention switched on but the checkpoint's config.json has no "
                           "bsa_params; give the parameters")
        use_real_bsa(self.device)
        for block in self.model.blocks:
            block.attn.bsa_params = dict(params)
        self.model.enable_bsa()

    def set_loras(self, loras: list[tuple[Path, float]]) -> None:
        from safetensors import safe_open
        self.model.disable_all_loras()
        keys = []
        for path, mult in loras:
            with safe_open(str(path), "pt") as f:
                ranks = {f.get_slice(k).get_shape()[1] for k in f.keys() if ".lora_up." in k}
            if len(ranks) != 1:
                raise BadInput(f"{path}: the upstream LoRA loader needs one rank for all modules, found {sorted(ranks)}")
            self._lora_n += 1
            key = f"lora{self._lora_n}"
            r = ranks.pop()
            # alpha only seeds alpha_scale, which the strict load then replaces with the file's value.
            with contextlib.redirect_stdout(sys.stderr):      # its progress prints stay off stdout
                self.model.load_lora(str(path), key, multiplier=mult, lora_network_dim=r, lora_network_alpha=r)
            keys.append(key)
        if keys:
            self.model.enable_loras(keys)


def load_upstream(checkpoint, upstream_path, dtype="float32", device="cpu", attention="math",
                  real_bsa: bool = False) -> UpstreamModel:
    checkout = check_checkout(upstream_path)
    dtype, device = torch_dtype(dtype), parse_device(device)
    if device.type == "cpu" and dtype != torch.float32:
        raise BadInput("the original LongCat-Video code cannot run in low precision on the CPU (its float32 "
                       "regions are CUDA autocast); use --dtype float32 or --device cuda")
    config, reader, _ = open_checkpoint(checkpoint)       # strict keys and shapes, BSA settings checked
    _, dit = resolve_checkpoint(checkpoint)
    cfg = json.loads((dit / "config.json").read_text())
    mod = import_upstream(checkout, real_bsa=real_bsa or config.enable_bsa, device=device)
    cls = mod.LongCatVideoTransformer3DModel
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in cfg.items() if k in params}
    kwargs["cp_split_hw"] = [1, 1]
    real_flash = attention in ("flash2", "flash3")
    if real_flash:
        get_backend(attention)                         # clear error if the package is missing
        kwargs.update(enable_flashattn2=attention == "flash2", enable_flashattn3=attention == "flash3",
                      enable_xformers=False)
    else:
        kwargs.update(enable_flashattn2=True, enable_flashattn3=False, enable_xformers=False)
    with torch.device("meta"):
        model = cls(**kwargs)
    state = {k: reader.get(k).to(device=device, dtype=dtype) for k in reader.keys()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise BadInput(f"{dit}: the upstream model and the checkpoint disagree: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    model.eval()
    standin = None if real_flash else _flash_standin(get_backend(attention))
    return UpstreamModel(model, standin, device, dtype, (config.enable_bsa, cfg.get("bsa_params")))
