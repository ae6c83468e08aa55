"""Inputs checked first: everything about a command's arguments that can be checked
without importing torch or FastVideo, checked before anything heavy runs.

Each command calls its check here at the top (``parity``, ``golden_check``,
``convert``, ``export``, ``verify``); a problem is one ``BadInput`` line (exit 2)
naming the flag or file at fault and what to do. What is checked:

* every numeric flag's range (``--batch``, ``--text-len``, ``--valid``, ``--shape``,
  ``--timestep``, ``--seed``, ``--steps``, ``--guidance``, ``--shift``, ``--t-thresh``,
  ``--sp``, ``--sp-timeout``, ``--kv-cache-frames``, ``--num-cond-latents``, LoRA
  multipliers, the ``--bsa-*`` values), and flags that do not go together;
* the roles of the folders: SOURCE an original checkpoint (``dit/config.json``
  without ``_class_name: LongCatTransformer3DModel``), CONVERTED what ``convert`` wrote
  (``transformer/config.json``, ``model_index.json``), and "these look swapped" when
  the two are the other way round; a relative path that does not exist says so;
* case files: there, of the kind the mode or ``--component`` takes (a JSON naming a
  ``component``; ``traj.*`` keys: a trajectory; else a DiT case), and recorded for
  SOURCE's model (channel counts, heads and depth of the recorded tensors against
  SOURCE's ``dit/config.json``), from the safetensors headers only;
* LoRA names in SOURCE/lora and CONVERTED/lora, component folders on each side,
  ``--sp N`` against the attention heads, low precision with block-sparse attention
  on a CPU, the grids block-sparse attention tiles, ``--tolerances`` and ``--known``
  files, ``--expect`` ids, and ``--report DIR`` (not a file, creatable).

Nothing here imports torch: files are read as JSON and safetensors headers
(``longcat_convert.shards``); ``tests/test_inputs_first.py`` holds that.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import config_map, sources
from .errors import BadInput
from .jsonfile import load_object
from .shards import ShardedReader
from .table import Dims

LOW_PRECISION = ("bf16", "bfloat16", "fp16", "float16")
ATTENTION = ("sdpa", "math", "flash2", "flash3")
MAX_SEED = 2**63 - 1
MAX_STEPS = 1000                  # the scheduler's num_train_timesteps
MAX_DISTILL_STEPS = 50            # the original's distilled schedule
MAX_SP_TIMEOUT = 1e6              # seconds (about 11 days)
COMPONENT_FOLDERS = {"text_encoder": ("text_encoder", "tokenizer"), "vae": ("vae",),
                     "pipeline": ("text_encoder", "tokenizer", "vae")}
REPORT_FILES = ("report.json", "report.md", "report.html")
KIND_WORDS = {"dit": "DiT case (one forward's act.* activations)", "trajectory": "trajectory case (traj.* keys)",
              "component": "component case"}
_DEVICE = re.compile(r"^(cpu|cuda)(:\d+)?$")


# --------------------------------------------------------------------------- small parts

def _here(path: Path) -> str:
    """" (relative to /cwd)" for a relative path, so a typo run from elsewhere reads as one."""
    return "" if Path(path).is_absolute() else f" (relative to {os.getcwd()})"


def no_such_folder(role: str, spec, what: str) -> BadInput:
    return BadInput(f"{role} {spec}: no such folder{_here(Path(str(spec)))}; {what}")


def _native_class(cfg: Path) -> bool:
    try:
        d = json.loads(cfg.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(d, dict) and d.get("_class_name") == config_map.NATIVE_CLASS


def layout(path) -> str:
    """What a folder holds: ``original`` (dit/, or a dit/ folder's config.json),
    ``converted`` (transformer/, model_index.json, or a transformer/ folder's config.json
    naming LongCatTransformer3DModel), ``missing``, ``file`` or ``unknown``."""
    p = Path(str(path)).expanduser()
    try:
        if not p.exists():
            return "missing"
        if not p.is_dir():
            return "file"
        if (p / "dit").is_dir():
            return "converted" if _native_class(p / "dit" / "config.json") else "original"
        if (p / "transformer").is_dir() or (p / "model_index.json").is_file():
            return "converted"
        if (p / "config.json").is_file():
            return "converted" if _native_class(p / "config.json") else "original"
    except OSError:
        return "unknown"
    return "unknown"


def swapped(cmd: str, first_role: str, first, second_role: str, second) -> BadInput:
    """``first`` (given as first_role) is converted and ``second`` original: the other way round."""
    return BadInput(f"{first_role} and {second_role} look swapped: {first} is a converted (FastVideo-layout) folder "
                    f"and {second} an original LongCat-Video checkpoint; give the original first: "
                    f"longcat-convert {cmd} {second} {first}")


def _finite(flag: str, value, *, lo: float | None = None, hi: float | None = None, lo_open=False,
            hi_open=False, what: str = "a number") -> float:
    v = float(value)
    if not math.isfinite(v):
        raise BadInput(f"{flag} {value}: expected a finite number ({what})")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        rng = f"{left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{right}"
        raise BadInput(f"{flag} {value}: expected {what} in {rng}")
    return v


def _int_at_least(flag: str, value, lo: int, what: str, hi: int | None = None) -> int:
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"from {lo} to {hi}"
        raise BadInput(f"{flag} {value}: expected {what}, {rng}")
    return value


def ints(flag: str, text: str, n: int | None = None, what: str = "comma-separated integers") -> list[int]:
    try:
        vals = [int(x) for x in str(text).split(",")]
    except ValueError:
        raise BadInput(f"{flag} {text!r}: expected {what}")
    if n is not None and len(vals) != n:
        raise BadInput(f"{flag} {text!r}: expected {what}")
    return vals


def device(flag: str, value: str) -> None:
    if not _DEVICE.match(str(value)):
        raise BadInput(f"{flag} {value!r}: use cpu or cuda[:N]")


def report_dir(path, flag: str = "--report") -> None:
    """A folder that is there and writable, or can be made: not an existing file, no file
    on the way to it, its nearest existing parent writable."""
    p = Path(str(path)).expanduser()
    if p.exists() and not p.is_dir():
        raise BadInput(f"{flag} {p}: an existing file; {flag} names a folder (report.json, report.md and "
                       "report.html go into it): give a new or existing folder")
    if p.is_dir():
        for name in REPORT_FILES:
            if (p / name).is_dir():
                raise BadInput(f"{flag} {p}: {p / name} is a folder, so the report cannot be written; "
                               "remove it or give another folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise BadInput(f"{flag} {p}: the folder is not writable; give a folder you can write to")
        return
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise BadInput(f"{flag} {p}: {parent} is a file, so the folder cannot be made; give another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {p}: cannot make it, {parent} is not writable; give a folder you can write to")


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# --------------------------------------------------------------------------- the two sides

@dataclass
class Original:
    spec: str
    path: Path            # local folder (the hub snapshot for a repo id)
    model_dir: Path       # where lora/, vae/, ... live
    dit: Path
    cfg: dict
    dims: Dims
    bare: bool            # a dit/ folder given on its own

    @property
    def config_path(self) -> Path:
        return self.dit / "config.json"


def original(cmd: str, role: str, spec, *, other=None, other_role: str = "", hub: bool = True,
             components: bool = False) -> Original:
    """SOURCE (or CHECKPOINT): an original checkpoint's model folder or dit/ folder, or a
    Hugging Face repo id (resolved through sources.resolve, no torch)."""
    text = str(spec)
    p = Path(text).expanduser()
    if not p.exists():
        if hub and sources.is_repo_id(text):
            src = sources.resolve(text, components=components)
            p = src.root or src.dit
        else:
            raise BadInput(f"{role} {text}: no such checkpoint folder{_here(p)}; expected a LongCat-Video model "
                           "folder (holding dit/) or its dit/ folder")
    kind = layout(p)
    if kind == "file":
        raise BadInput(f"{role} {text}: a file; expected a LongCat-Video model folder (holding dit/) or its dit/ folder")
    if kind == "converted":
        if other is not None and layout(other) == "original":
            raise swapped(cmd, role, text, other_role, other)
        raise BadInput(f"{role} {text}: a converted (FastVideo-layout) folder; {role} must be the original "
                       "checkpoint (a model folder holding dit/, or its dit/ folder)")
    if (p / "dit" / "config.json").is_file():
        model_dir, dit, bare = p, p / "dit", False
    elif (p / "config.json").is_file():
        model_dir, dit, bare = p.parent, p, True
    else:
        raise BadInput(f"{role} {text}: no dit/config.json; expected a LongCat-Video model folder (holding dit/) "
                       "or its dit/ folder")
    cfg_path = dit / "config.json"
    cfg = load_object(cfg_path, "a JSON object (the checkpoint's config.json)")
    if cfg.get("_class_name") == config_map.NATIVE_CLASS:
        raise BadInput(f"{cfg_path}: this is a converted (FastVideo-layout) folder; {role} must be the original "
                       "checkpoint")
    return Original(text, p, model_dir, dit, cfg, Dims.from_original_config(cfg, str(cfg_path)), bare)


@dataclass
class Converted:
    spec: str
    root: Path                 # the output folder (model_index.json, lora/, vae/, ...)
    transformer: Path | None   # transformer/ (None when there is none)


def converted(cmd: str, role: str, spec, *, other=None, other_role: str = "", transformer: bool = True) -> Converted:
    """CONVERTED: the folder ``convert`` wrote, or its transformer/ folder."""
    text = str(spec)
    p = Path(text).expanduser()
    what = "expected the folder `longcat-convert convert` wrote (holding transformer/ and model_index.json)"
    if not p.exists():
        raise no_such_folder(role, text, what)
    kind = layout(p)
    if kind == "file":
        raise BadInput(f"{role} {text}: a file; {what}")
    if kind == "original":
        if other is not None and layout(other) == "converted":
            raise swapped(cmd, other_role, other, role, text)
        raise BadInput(f"{role} {text}: an original LongCat-Video checkpoint (dit/); {what} -- convert it first: "
                       f"longcat-convert convert {text} OUTPUT")
    root = p.parent if p.name == "transformer" else p
    tdir = p / "transformer" if (p / "transformer").is_dir() else p if (p / "config.json").is_file() else None
    if transformer:
        if tdir is None or not (tdir / "config.json").is_file():
            raise BadInput(f"{role} {text}: no transformer/config.json; {what}")
    elif not (root / "model_index.json").is_file():
        raise BadInput(f"{role} {text}: no model_index.json; {what}")
    return Converted(text, root, tdir)


def native_dims(conv: Converted, src: Original) -> None:
    """CONVERTED's transformer config names FastVideo's class and the source's shapes."""
    cfg_path = conv.transformer / "config.json"
    ncfg = config_map.load(cfg_path)
    if ncfg.get("_class_name") != config_map.NATIVE_CLASS:
        raise BadInput(f"{cfg_path}: _class_name is {ncfg.get('_class_name')!r}, expected "
                       f"{config_map.NATIVE_CLASS!r}; CONVERTED must be what `longcat-convert convert` wrote")
    ndims = Dims.from_original_config(config_map.to_original(ncfg, str(cfg_path))[0], str(cfg_path))
    if ndims != src.dims:
        raise BadInput(f"{cfg_path}: converted config {ndims} does not match the source's {src.dims}; give the "
                       f"folder converted from {src.spec} (longcat-convert convert {src.spec} OUTPUT)")


# --------------------------------------------------------------------------- cases

@dataclass
class CaseInfo:
    path: Path
    kind: str                       # dit | trajectory | component
    component: object | None        # what the JSON names (any value; a string when valid)
    meta: dict                      # the JSON ({} when there is none or it is unreadable: the reader says so)
    shapes: dict[str, tuple]        # key -> shape, from the header

    @property
    def frames(self) -> int | None:
        for key in ("input.hidden_states", "input.latents"):
            s = self.shapes.get(key)
            if s is not None and len(s) == 5:
                return s[2]
        return None


def read_case(path, flag: str = "--case") -> CaseInfo:
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise BadInput(f"{flag} {p}: no such case file{_here(p)}")
    if not p.is_file():
        raise BadInput(f"{flag} {p}: not a file; a case is a .safetensors file with its .json beside it")
    if p.suffix != ".safetensors":
        raise BadInput(f"{flag} {p}: a golden case is a .safetensors file (with its .json beside it)")
    meta: dict = {}
    mp = p.with_suffix(".json")
    if mp.is_file():
        try:
            doc = json.loads(mp.read_text())
            meta = doc if isinstance(doc, dict) else {}
        except (OSError, ValueError, RecursionError):
            meta = {}          # the case readers name what is wrong with it
    reader = ShardedReader(p)
    shapes = {k: tuple(reader.info(k).shape) for k in reader.keys()}
    comp = meta.get("component")
    from parity.case_kind import case_kind      # no torch; the one place a case's kind is decided
    kind = case_kind(comp, shapes)
    return CaseInfo(p, kind, comp, meta, shapes)


def case_for_mode(case: CaseInfo, *, mode: str, component: str | None) -> None:
    """The case's kind is what the run takes."""
    p = case.path
    if component is not None:
        if case.kind != "component":
            raise BadInput(f"--case {p}: a {KIND_WORDS[case.kind]}; --component {component} takes {component} "
                           f"cases (a .json beside it naming \"component\": \"{component}\", as in "
                           "golden/tiny-bundle/cases/)")
        if case.component != component:
            if case.component in COMPONENT_FOLDERS:
                raise BadInput(f"--case {p}: a {case.component} case; this run is --component {component} "
                               f"(give --component {case.component}, or a {component} case)")
            raise BadInput(f"{p.with_suffix('.json')}: 'component' is {case.component!r}; expected one of "
                           f"{', '.join(COMPONENT_FOLDERS)}")
        return
    if case.kind == "component":
        name = case.component if isinstance(case.component, str) else "<component>"
        raise BadInput(f"--case {p}: a {name} component case; run it with --component {name}")
    if mode == "sampling" and case.kind != "trajectory":
        raise BadInput(f"--case {p}: --mode sampling needs trajectory cases (traj.* keys); this is a DiT case")
    if mode != "sampling" and case.kind == "trajectory":
        raise BadInput(f"--case {p}: a trajectory case (traj.* keys) runs with --mode sampling")


def _component_config(model_dir: Path, folder: str, key: str) -> int | None:
    try:
        v = json.loads((model_dir / folder / "config.json").read_text()).get(key)
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    return v if type(v) is int else None


def case_for_model(case: CaseInfo, src: Original, role: str = "SOURCE") -> None:
    """The case was recorded for SOURCE's model: the channel counts, heads, head dim,
    hidden size and depth its tensors show agree with SOURCE's dit/config.json."""
    d, cfg = src.dims, src.config_path

    def mismatch(key: str, what: str, got, name: str, want, where=cfg) -> BadInput:
        return BadInput(f"{case.path}: recorded for another model: {key} has {got} {what}, but {role} {src.spec} "
                        f"has {name} {want} ({where}); give a case recorded with this model (golden/README.md "
                        "says which model each case belongs to), or the SOURCE it was recorded with")

    def channels(key: str, axis: int, name: str, want: int | None, where=cfg) -> None:
        s = case.shapes.get(key)
        if want is None or s is None or len(s) <= max(axis, -axis - 1):
            return
        if s[axis] != want:
            raise mismatch(key, "channels", s[axis], name, want, where)

    if case.kind == "component":
        if case.component == "pipeline":
            channels("input.latents", 1, "in_channels", d.cin)
            channels("input.prompt_embeds", -1, "caption_channels", d.caption)
        elif case.component == "vae":
            channels("input.latents", 1, "z_dim", _component_config(src.model_dir, "vae", "z_dim"),
                     src.model_dir / "vae" / "config.json")
        elif case.component == "text_encoder":
            channels("golden.prompt_embeds", -1, "d_model", _component_config(src.model_dir, "text_encoder", "d_model"),
                     src.model_dir / "text_encoder" / "config.json")
        return
    latents = "input.hidden_states" if case.kind == "dit" else "input.latents"
    channels(latents, 1, "in_channels", d.cin)
    for key in ("input.encoder_hidden_states", "input.prompt_embeds", "input.negative_prompt_embeds"):
        channels(key, -1, "caption_channels", d.caption)
    s = case.shapes.get(latents)
    if s is not None and len(s) == 5:
        _, ph, pw = d.patch
        if s[3] % ph or s[4] % pw:
            raise BadInput(f"{case.path}: {latents} has H, W = {s[3]}, {s[4]}, not divisible by {role} {src.spec}'s "
                           f"patch size {list(d.patch)} ({cfg}); the case was recorded for another model")
    for key, s in case.shapes.items():
        m = re.match(r"^(?:input|act|traj)\.kv_cache\.(\d+)\.[kv]$", key)
        if m and len(s) == 4:
            if s[1] != d.heads:
                raise mismatch(key, "attention heads", s[1], "num_heads", d.heads)
            if s[3] != d.head_dim:
                raise mismatch(key, "channels per head", s[3], "head dim (hidden_size / num_heads)", d.head_dim)
        m = m or re.match(r"^act\.blocks\.(\d+)(\.|$)", key)
        if m and int(m.group(1)) >= d.depth:
            raise BadInput(f"{case.path}: recorded for another model: {key} is block {int(m.group(1))}, but {role} "
                           f"{src.spec} has depth {d.depth} ({cfg}); give a case recorded with this model "
                           "(golden/README.md says which model each case belongs to), or the SOURCE it was "
                           "recorded with")
    s = case.shapes.get("act.x_embedder")
    if s is not None and len(s) == 3 and s[2] != d.hidden:
        raise mismatch("act.x_embedder", "channels", s[2], "hidden_size", d.hidden)


def case_loras(case: CaseInfo) -> list[tuple[str, object]]:
    """(path relative to the model folder, multiplier) of the LoRAs a case's JSON names
    (as far as the JSON is well formed: the case reader reports the rest)."""
    out = []
    meta = case.meta
    if meta.get("lora") and isinstance(meta["lora"], str):
        out.append((meta["lora"], meta.get("lora_multiplier", 1.0)))
    items = meta.get("loras")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                out.append((item["path"], item.get("multiplier", 1.0)))
    return out


def case_bsa(case: CaseInfo) -> bool:
    return case.meta.get("enable_bsa") is True


# --------------------------------------------------------------------------- LoRAs

def lora_spec(spec: str, default: float) -> tuple[str, float]:
    name, _, mult = str(spec).partition(":")
    if not name:
        raise BadInput(f"--lora {spec!r}: expected NAME or NAME:MULTIPLIER (NAME: a LoRA file stem in SOURCE/lora)")
    try:
        m = float(mult) if mult else float(default)
    except ValueError:
        raise BadInput(f"--lora {spec!r}: expected NAME or NAME:MULTIPLIER (a number)")
    if not math.isfinite(m):
        raise BadInput(f"--lora {spec!r}: the multiplier must be a finite number")
    return name, m


def lora_stem(name: str) -> str:
    return Path(name).stem if name.endswith(".safetensors") else Path(name).name


def lora_present(stem: str, src: Original, conv: Converted | None, why: str) -> None:
    orig = src.model_dir / "lora" / f"{stem}.safetensors"
    if not orig.is_file():
        have = sorted(p.stem for p in (src.model_dir / "lora").glob("*.safetensors")) \
            if (src.model_dir / "lora").is_dir() else []
        raise BadInput(f"{why}: {orig} does not exist; SOURCE's LoRAs: {', '.join(have) or 'none'} "
                       "(SOURCE must be the model folder holding dit/ and lora/)")
    if conv is not None:
        c = conv.root / "lora" / stem / f"{stem}.safetensors"
        if not c.is_file():
            raise BadInput(f"{why}: {c} does not exist; CONVERTED has no LoRA {stem!r} -- convert SOURCE again "
                           "(without --no-lora)")


# --------------------------------------------------------------------------- parity

def _flags(o: dict) -> dict:
    """Every flag of ``parity`` on its own (no files): ranges and combinations. -> parsed values."""
    mode, component = o.get("mode", "e2e"), o.get("component")
    out: dict = {}
    _int_at_least("--text-len", o["text_len"], 1, "a number of generated text tokens")
    _int_at_least("--batch", o["batch"], 1, "a number of generated samples")
    shape = ints("--shape", o["shape"], 3, "T,H,W (three positive integers)")
    if any(x < 1 for x in shape):
        raise BadInput(f"--shape {o['shape']}: expected T,H,W (three positive integers)")
    out["shape"] = shape
    if o.get("valid") is not None:
        valid = ints("--valid", o["valid"], None, "one number of valid text tokens, or one per sample")
        if len(valid) not in (1, o["batch"]):
            raise BadInput(f"--valid {o['valid']}: give one number, or one per sample (--batch {o['batch']})")
        bad = [v for v in valid if not 1 <= v <= o["text_len"]]
        if bad:
            raise BadInput(f"--valid {o['valid']}: valid text tokens must be in 1..{o['text_len']} (--text-len)")
    _finite("--timestep", o["timestep"], what="a timestep, e.g. 700")
    _int_at_least("--seed", o["seed"], 0, "a seed", hi=MAX_SEED)
    ncl = o.get("num_cond_latents")
    if ncl is not None and ncl < 0:
        raise BadInput(f"--num-cond-latents {ncl}: expected a number of clean leading latent frames, >= 0")
    kv = o.get("kv_cache_frames") or 0
    if kv < 0:
        raise BadInput(f"--kv-cache-frames {kv}: expected a number of cached leading frames, >= 0 (0: no cache)")
    _finite("--lora-multiplier", o["lora_multiplier"], what="a LoRA multiplier")
    out["loras"] = [lora_spec(s, o["lora_multiplier"]) for s in o.get("loras") or ()]
    bsa = _bsa_flags(o)
    out["bsa"] = bsa
    steps = _int_at_least("--steps", o["steps"], 1, "a number of inference steps", hi=MAX_STEPS)
    if o.get("distill") and steps > MAX_DISTILL_STEPS:
        raise BadInput(f"--steps {steps} with --distill: the distilled schedule has at most {MAX_DISTILL_STEPS} steps")
    _finite("--guidance", o["guidance"], what="a guidance scale")
    _finite("--shift", o["shift"], lo=0, lo_open=True, what="a scheduler shift")
    _finite("--t-thresh", o["t_thresh"], lo=0, hi=1, what="a refinement threshold")
    if o.get("loop") == "refine" and not 0 < o["t_thresh"] < 1:
        raise BadInput(f"--t-thresh {o['t_thresh']}: refinement needs t_thresh in (0, 1)")
    device("--device", o["device"])
    if o["attention"] not in ATTENTION:
        raise BadInput(f"--attention {o['attention']!r}: choose one of {', '.join(ATTENTION)}")
    t = o.get("sp_timeout", 600.0)
    if not (math.isfinite(t) and 0 < t <= MAX_SP_TIMEOUT):
        raise BadInput(f"--sp-timeout {t}: must be a positive number of seconds, at most {MAX_SP_TIMEOUT:g}")
    sp = o.get("sp")
    if sp is not None:
        if component is not None:
            raise BadInput(f"--sp runs with --mode e2e, layer or sampling, not with --component {component}")
        if mode not in ("e2e", "layer", "sampling"):
            raise BadInput(f"--sp runs with --mode e2e, layer or sampling, not {mode}")
        if sp < 2:
            raise BadInput(f"--sp {sp}: the number of sequence-parallel ranks, at least 2")
        if str(o["device"]).startswith("cuda") and o.get("sp_start") == "fork":
            raise BadInput("--sp-start fork: a CUDA context does not survive fork(); use spawn on CUDA")
    if component is not None:
        if o["dtype"] not in ("fp32", "float32"):
            raise BadInput(f"--component runs in float32 (low-precision component parity is not implemented); "
                           f"drop --dtype {o['dtype']}")
        if kv:
            raise BadInput("--kv-cache-frames is for DiT forwards (--mode e2e or layer), not --component")
    elif kv and mode == "blocks":
        raise BadInput("--kv-cache-frames needs --mode e2e or layer (blocks mode streams one forward)")
    elif kv and mode == "sampling":
        raise BadInput("--kv-cache-frames needs --mode e2e or layer; in sampling the K/V cache is the loop's "
                       "(--loop vc, --no-kv-cache)")
    if o.get("cases") and bsa:
        raise BadInput(f"{', '.join(bsa)} with --case: --bsa-* flags are for generated inputs; a case's JSON sets its "
                       "own enable_bsa/bsa_params")
    if mode == "blocks" and component is None and out["loras"]:
        raise BadInput("--mode blocks does not apply LoRAs; use --mode e2e or layer for LoRA parity")
    return out


def _bsa_flags(o: dict) -> list[str]:
    """The --bsa-* flags given, each value checked on its own."""
    given = []
    s = o.get("bsa_sparsity")
    if s is not None:
        given.append("--bsa-sparsity")
        if str(s).strip().lower() not in ("none", "null"):
            try:
                v = float(s)
            except ValueError:
                raise BadInput(f"--bsa-sparsity {s!r}: expected a number in [0, 1] or 'none'")
            if not (math.isfinite(v) and 0 <= v <= 1):
                raise BadInput(f"--bsa-sparsity {s}: bsa_params.sparsity is {v}; expected a number in [0, 1] or 'none'")
    c = o.get("bsa_cdf")
    if c is not None:
        given.append("--bsa-cdf")
        _finite("--bsa-cdf", c, lo=0, hi=1, what="a CDF threshold (bsa_params.cdf_threshold)")
    for flag, key in (("--bsa-chunk-q", "bsa_chunk_q"), ("--bsa-chunk-k", "bsa_chunk_k")):
        text = o.get(key)
        if text is None:
            continue
        given.append(flag)
        what = f"T,H,W for bsa_params.chunk_3d_shape_{flag[-1]} (three positive integers)"
        chunk = ints(flag, text, 3, what)
        if any(x < 1 for x in chunk):
            raise BadInput(f"{flag} {text}: expected {what}")
        n = chunk[0] * chunk[1] * chunk[2]
        if n & (n - 1):
            raise BadInput(f"{flag} {text}: covers {n} tokens; the original's kernels need a power of two "
                           "(e.g. 4,4,4 or 4,4,8)")
    return given


def _generated(o: dict, flags: dict, src: Original) -> None:
    """Generated inputs: the shape against SOURCE's patch size, the frame counts against T,
    and the memory the inputs and one pass of activations take."""
    T, H, W = flags["shape"]
    d = src.dims
    pt, ph, pw = d.patch
    if T % pt or H % ph or W % pw:
        raise BadInput(f"--shape {T},{H},{W} is not divisible by the patch size {list(d.patch)} of "
                       f"{src.config_path}; give multiples of it")
    ncl = o.get("num_cond_latents")
    if o.get("mode") == "sampling" and ncl is None:
        ncl = {"i2v": 1, "vc": 2}.get(o.get("loop"), 0)
    if ncl is not None and not 0 <= ncl < T:
        raise BadInput(f"--num-cond-latents {ncl}: must be in [0, T={T}) (T from --shape {T},{H},{W})")
    kv = o.get("kv_cache_frames") or 0
    if kv and not 1 <= kv < T:
        raise BadInput(f"--kv-cache-frames {kv}: must be in [1, T={T}) (T from --shape {T},{H},{W}), or 0")
    if o.get("mode") == "sampling":
        _loop_flags(o, ncl or 0)
    elif not kv:
        _bsa_grid(o, flags, src, (T, H // ph, W // pw), ncl or 0)
    B, L = o["batch"], o["text_len"]
    tokens = T * H * W // (pt * ph * pw)
    need = 4 * B * (2 * d.cin * T * H * W + 2 * L * d.caption + 16 * tokens * d.hidden + 8 * L * d.hidden)
    mem = _memory_bytes()
    if mem is not None and need > mem:
        raise BadInput(f"--shape {T},{H},{W} --batch {B} --text-len {L}: the generated inputs and one pass of "
                       f"activations would take about {need / 2**30:.3g} GiB, more than this machine's "
                       f"{mem / 2**30:.3g} GiB; give a smaller --shape, --batch or --text-len")


BSA_DEFAULT_CHUNK = [4, 4, 8]      # the original's, for a key neither the flags nor config.json give


def _bsa_grid(o: dict, flags: dict, src: Original, grid: tuple[int, int, int], ncl: int) -> None:
    """Generated inputs with block-sparse attention (--bsa-* flags, or enable_bsa in
    config.json): every grid the self-attention tiles must be a multiple of its chunk.
    One forward without a K/V cache: queries and keys on (T, h, w); with c clean
    frames, the condition (c, h, w) and the noise frames' queries (T - c, h, w)."""
    cfg_on = src.cfg.get("enable_bsa") is True
    if not (flags["bsa"] or cfg_on) or grid[0] <= 1:
        return
    base = src.cfg.get("bsa_params") if isinstance(src.cfg.get("bsa_params"), dict) else {}
    T, h, w = grid
    for flag, key, cfg_key in (("--bsa-chunk-q", "bsa_chunk_q", "chunk_3d_shape_q"),
                               ("--bsa-chunk-k", "bsa_chunk_k", "chunk_3d_shape_k")):
        if o.get(key) is not None:
            chunk, where = ints(flag, o[key], 3), flag
        elif isinstance(base.get(cfg_key), list) and len(base[cfg_key]) == 3 \
                and all(type(x) is int and x > 0 for x in base[cfg_key]):
            chunk, where = base[cfg_key], f"bsa_params.{cfg_key} in {src.config_path}"
        else:
            chunk, where = BSA_DEFAULT_CHUNK, f"the original's default {cfg_key}"
        frames = [T] if not ncl else ([ncl, T - ncl] if key == "bsa_chunk_q" else [ncl, T])
        for t in frames:
            g = (t, h, w)
            if any(a % b for a, b in zip(g, chunk)):
                what = "query" if key == "bsa_chunk_q" else "key"
                on = ", ".join(flags["bsa"]) or f"enable_bsa in {src.config_path}"
                raise BadInput(f"--shape {o['shape']} with block-sparse attention ({on}): the {what} token grid "
                               f"(T, H, W) = {g} "
                               f"is not divisible by bsa_params.{cfg_key} {list(chunk)} ({where}); give a --shape "
                               f"(or --num-cond-latents) whose grid is a multiple of the chunk, or another {flag}")


def _loop_flags(o: dict, ncl: int) -> None:
    """Generated sampling inputs: the loop flags together, as the original's loops take them."""
    loop = o.get("loop", "t2v")
    if loop == "i2v" and ncl != 1:
        raise BadInput(f"--loop i2v --num-cond-latents {ncl}: i2v conditions on exactly 1 latent frame")
    if loop == "t2v" and ncl:
        raise BadInput(f"--loop t2v --num-cond-latents {ncl}: t2v has no conditioning frames (give 0, or "
                       "--loop i2v / vc / refine)")
    if loop == "vc" and ncl < 1:
        raise BadInput("--loop vc --num-cond-latents 0: video continuation needs at least 1 conditioning frame")
    if o.get("enhance_hf") and loop != "vc":
        raise BadInput(f"--enhance-hf is for --loop vc, not --loop {loop}")
    if o.get("enhance_hf") and o.get("distill"):
        raise BadInput("--enhance-hf with --distill: the original refuses the two together")
    if loop == "refine" and o.get("distill"):
        raise BadInput("--loop refine with --distill: refinement has no distilled schedule in the original")


def parity(source, converted_spec, o: dict) -> None:
    """``longcat-convert parity SOURCE CONVERTED [options]``, checked before torch is imported."""
    mode, component = o.get("mode", "e2e"), o.get("component")
    flags = _flags(o)
    if o.get("tolerances") is not None:
        from parity.policy import Policy       # plain JSON; no torch
        Policy.load(o["tolerances"])
    if o.get("known_file") is not None or o.get("expect"):
        from parity import known               # plain JSON; no torch
        known.Catalogue.load(o.get("known_file")).check_ids(o.get("expect"))
    if o.get("fixes_spec") is not None:
        import fixes                            # names only; no torch
        fixes.parse(o["fixes_spec"])
    if o.get("report_dir") is not None:
        report_dir(o["report_dir"])
    # Where both are local, their roles first (swapped?), then CONVERTED, then a hub SOURCE.
    if layout(source) == "converted" and layout(converted_spec) == "original":
        raise swapped("parity", "SOURCE", source, "CONVERTED", converted_spec)
    conv = converted("parity", "CONVERTED", converted_spec, other=source, other_role="SOURCE",
                     transformer=component is None)
    src = original("parity", "SOURCE", source, other=converted_spec, other_role="CONVERTED",
                   components=component is not None)
    cases = [read_case(c) for c in o.get("cases") or ()]
    for c in cases:
        case_for_mode(c, mode=mode, component=component)
    if component is not None:
        _component_folders(component, src, conv)
        for c in cases:
            case_for_model(c, src)
        return
    native_dims(conv, src)
    for c in cases:
        case_for_model(c, src)
    if not cases:
        _generated(o, flags, src)
    kv = o.get("kv_cache_frames") or 0
    for c in cases:
        T = c.frames
        if kv and T is not None and not 1 <= kv < T:
            raise BadInput(f"--kv-cache-frames {kv}: must be in [1, T={T}) for --case {c.path} (its latents have "
                           f"{T} frames), or 0")
    # LoRAs: --lora replaces the ones cases name.
    if flags["loras"]:
        for name, _ in flags["loras"]:
            lora_present(lora_stem(name), src, conv, f"--lora {name}")
    else:
        for c in cases:
            for rel, _ in case_loras(c):
                lora_present(lora_stem(rel), src, conv, f"--case {c.path} (its JSON names {rel})")
    if mode == "blocks" and any(case_loras(c) for c in cases):
        raise BadInput("--mode blocks does not apply LoRAs (the case names one); use --mode e2e or layer for "
                       "LoRA parity")
    sp = o.get("sp")
    if sp is not None and src.dims.heads % sp:
        raise BadInput(f"--sp {sp}: FastVideo's DistributedAttention divides the {src.dims.heads} attention heads "
                       f"among the ranks; {src.dims.heads} is not divisible by {sp} (num_heads in "
                       f"{src.config_path}); give a divisor of {src.dims.heads}")
    if o["dtype"] in LOW_PRECISION and str(o["device"]).startswith("cpu"):
        why = None
        if flags["bsa"]:
            why = flags["bsa"][0]
        elif any(case_bsa(c) for c in cases):
            why = f"{next(c for c in cases if case_bsa(c)).path.with_suffix('.json')} sets enable_bsa"
        elif src.cfg.get("enable_bsa") is True:
            why = f"{src.config_path} sets enable_bsa"
        if why:
            raise BadInput(f"--dtype {o['dtype']} with block-sparse attention ({why}) cannot be checked on the CPU: "
                           "Triton's interpreter computes the low-precision BSA kernel wrongly (the original's too); "
                           "use --dtype fp32 on the CPU, or --device cuda")


def _component_folders(component: str, src: Original, conv: Converted, what: str | None = None) -> None:
    what = what or f"--component {component}"
    if src.bare:
        raise BadInput(f"SOURCE {src.spec}: {what} needs the model folder (with text_encoder/, vae/, ...), not a "
                       "bare dit/ folder")
    need = COMPONENT_FOLDERS[component]
    conv_need = list(need)
    if component == "pipeline":
        try:
            index = json.loads((conv.root / "model_index.json").read_text())
        except (OSError, ValueError, RecursionError):
            index = {}
        if isinstance(index, dict):
            conv_need += [k for k, v in index.items() if not k.startswith("_") and k != "transformer"
                          and isinstance(v, list) and k not in conv_need]
    src_lacks = [n for n in need if not (src.model_dir / n).is_dir()]
    conv_lacks = [n for n in conv_need if not (conv.root / n).is_dir()]
    if src_lacks:
        also = f"; CONVERTED {conv.spec} lacks {', '.join(f'{n}/' for n in conv_lacks)} too" if conv_lacks else ""
        raise BadInput(f"SOURCE {src.spec}: no {', '.join(f'{n}/' for n in src_lacks)} folder; {what} compares the "
                       f"original's {', '.join(need)} in SOURCE with CONVERTED's: give the model folder that holds "
                       f"them (as golden/tiny-bundle does){also}")
    if conv_lacks:
        raise BadInput(f"CONVERTED {conv.spec}: no {', '.join(f'{n}/' for n in conv_lacks)} folder; convert "
                       f"{src.spec} again with --components copy (or link) so that CONVERTED holds them")


# --------------------------------------------------------------------------- features

def features(source, converted_spec, *, case=None, device_name: str = "cpu", tolerances=None, report=None,
             fixes_spec=None) -> None:
    """``longcat-convert features SOURCE CONVERTED``: the flags and files, the two folders'
    roles (swapped?), the pipeline's component folders on both sides, the case's kind."""
    device("--device", device_name)
    if fixes_spec is not None:
        import fixes                            # names only; no torch
        fixes.parse(fixes_spec)
    if tolerances is not None:
        from parity.policy import Policy       # plain JSON; no torch
        Policy.load(tolerances)
    if report is not None:
        report_dir(report)
    if layout(source) == "converted" and layout(converted_spec) == "original":
        raise swapped("features", "SOURCE", source, "CONVERTED", converted_spec)
    conv = converted("features", "CONVERTED", converted_spec, other=source, other_role="SOURCE", transformer=False)
    src = original("features", "SOURCE", source, other=converted_spec, other_role="CONVERTED", components=True)
    if case is not None:
        c = read_case(case)
        if c.kind != "component" or c.component != "pipeline":
            kind = f"{c.component} case" if c.kind == "component" else KIND_WORDS[c.kind]
            raise BadInput(f"--case {c.path}: a {kind}; the feature matrix runs a pipeline case (a .json naming "
                           "\"component\": \"pipeline\", as golden/tiny-bundle/cases/pipeline_t2v.safetensors)")
        case_for_model(c, src)
    _component_folders("pipeline", src, conv, "the feature matrix")


# --------------------------------------------------------------------------- golden-check

def golden_check(checkpoint, case_paths, *, report=None, dtype: str = "fp32", device_name: str = "cpu",
                 reference: str = "ours", upstream_path=None) -> None:
    """``longcat-convert golden-check CHECKPOINT CASE...``, checked before torch is imported."""
    device("--device", device_name)
    if reference == "ours" and upstream_path is not None:
        raise BadInput("--upstream-path is only used with --reference upstream")
    if reference == "upstream" and upstream_path is None:
        raise BadInput("--reference upstream needs --upstream-path (a LongCat-Video git checkout)")
    if upstream_path is not None and not Path(str(upstream_path)).expanduser().is_dir():
        raise BadInput(f"--upstream-path {upstream_path}: no such directory{_here(Path(str(upstream_path)))}; "
                       "expected a LongCat-Video git checkout")
    if report is not None:
        report_dir(report)
    cases = [read_case(c, "CASE") for c in case_paths]
    kinds = {c.kind == "component" for c in cases}
    if len(kinds) > 1:
        raise BadInput("component cases (text_encoder, vae, pipeline) are checked apart from DiT and trajectory "
                       "cases; run golden-check once for each")
    comp = kinds == {True}
    text = str(checkpoint)
    if comp and not Path(text).expanduser().exists() and sources.is_repo_id(text):
        return            # a hub model folder: resolved (and checked) by the run
    src = original("golden-check", "CHECKPOINT", checkpoint, hub=False)
    for c in cases:
        case_for_model(c, src, "CHECKPOINT")
    if comp:
        if dtype not in ("fp32", "float32"):
            raise BadInput(f"component cases are checked in float32; drop --dtype {dtype}")
        if src.bare:
            raise BadInput(f"CHECKPOINT {checkpoint}: component cases need the model folder (with text_encoder/, "
                           "vae/, ...), not a bare dit/ folder")
        for c in cases:
            if c.component not in COMPONENT_FOLDERS:
                raise BadInput(f"{c.path.with_suffix('.json')}: 'component' is {c.component!r}; expected one of "
                               f"{', '.join(COMPONENT_FOLDERS)}")
            lacks = [n for n in COMPONENT_FOLDERS[c.component] if not (src.model_dir / n).is_dir()]
            if lacks:
                raise BadInput(f"CHECKPOINT {checkpoint}: no {', '.join(f'{n}/' for n in lacks)} folder, which the "
                               f"{c.component} case {c.path} needs; give the model folder that holds it")
        return
    for c in cases:
        for rel, _ in case_loras(c):
            if not (src.model_dir / rel).is_file():
                raise BadInput(f"{c.path}: LoRA {rel!r} not found under the model folder {src.model_dir}")


# --------------------------------------------------------------------------- converter commands

def convert(source, output) -> None:
    """``convert SOURCE OUTPUT``: SOURCE is not a converted folder (swapped with OUTPUT?)."""
    if layout(source) == "converted":
        if layout(output) == "original":
            raise swapped("convert", "SOURCE", source, "OUTPUT", output)
        raise BadInput(f"SOURCE {source}: a converted (FastVideo-layout) folder; convert takes the original "
                       f"checkpoint (to write the original layout back from it: longcat-convert export {source} "
                       "OUTPUT)")
    if layout(output) == "file":
        raise BadInput(f"OUTPUT {output}: an existing file; OUTPUT is the folder to write")


def export(native, output) -> None:
    """``export NATIVE OUTPUT``: NATIVE is a converted folder (swapped with OUTPUT?)."""
    kind = layout(native)
    if kind == "missing":
        raise no_such_folder("NATIVE", native, "expected a FastVideo LongCat folder (with transformer/) or its "
                                               "transformer/ folder")
    if kind == "original":
        if layout(output) == "converted":
            raise BadInput(f"NATIVE and OUTPUT look swapped: {native} is an original LongCat-Video checkpoint and "
                           f"{output} a converted (FastVideo-layout) folder; give the converted folder first: "
                           f"longcat-convert export {output} {native}")
        raise BadInput(f"NATIVE {native}: an original LongCat-Video checkpoint (its config.json does not name "
                       f"{config_map.NATIVE_CLASS}); export writes the original layout from a converted folder (to "
                       f"convert this one: longcat-convert convert {native} OUTPUT)")
    if layout(output) == "file":
        raise BadInput(f"OUTPUT {output}: an existing file; OUTPUT is the folder to write")


def verify(source, output, direction: str, recorded: bool) -> None:
    """``verify SOURCE OUTPUT``: the roles fit the direction OUTPUT was written in.

    ``direction``: what OUTPUT's conversion.json says, else what its layout suggests;
    ``recorded``: whether OUTPUT has a conversion.json."""
    s, o = layout(source), layout(output)
    if direction == "native->original":
        if not recorded and s == "converted" and o == "original":
            raise BadInput(f"SOURCE and OUTPUT look swapped: {source} is a converted (FastVideo-layout) folder and "
                           f"{output} an original checkpoint that `export` did not write (no conversion.json); to "
                           f"check a conversion give the original first: longcat-convert verify {output} {source}")
        if s == "original" and recorded:
            raise BadInput(f"SOURCE {source}: an original checkpoint, but OUTPUT {output} was written by export "
                           "(its conversion.json says native->original); SOURCE must be the converted folder it was "
                           "exported from")
        if s == "original" and o == "original":
            raise BadInput(f"SOURCE {source} and OUTPUT {output} are both original checkpoints; OUTPUT must be the "
                           f"folder `longcat-convert convert {source} OUTPUT` wrote")
        if s == "original":
            raise BadInput(f"OUTPUT {output}: no transformer/ folder; expected the folder `longcat-convert convert "
                           f"{source} OUTPUT` wrote")
    elif s == "converted":
        raise BadInput(f"SOURCE {source}: a converted (FastVideo-layout) folder, but OUTPUT {output} is a "
                       "conversion; SOURCE must be the original checkpoint it was converted from")
