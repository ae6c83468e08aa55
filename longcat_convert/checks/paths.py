"""Paths and folders: what a folder holds (original checkpoint, converted folder), the two
sides' roles (swapped?), the component and LoRA folders each side needs, and every output
path (a folder or file the command will write) — all from the file system, no torch."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import config_map, sources
from ..errors import BadInput
from ..jsonfile import load_object
from ..table import Dims

COMPONENT_FOLDERS = {"text_encoder": ("text_encoder", "tokenizer"), "vae": ("vae",),
                     "pipeline": ("text_encoder", "tokenizer", "vae")}
REPORT_FILES = ("report.json", "report.md", "report.html")


def here(path: Path) -> str:
    """" (relative to /cwd)" for a relative path, so a typo run from elsewhere reads as one."""
    return "" if Path(path).is_absolute() else f" (relative to {os.getcwd()})"


def no_such_folder(role: str, spec, what: str) -> BadInput:
    return BadInput(f"{role} {spec}: no such folder{here(Path(str(spec)))}; {what}")


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



# --------------------------------------------------------------------------- output paths

def _can_write_in(folder: Path) -> bool:
    """Whether a file can be made in ``folder``: tried for real (a read-only file system, /proc
    or a root-squashed mount all pass os.access), the probe removed at once."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".lcc-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return True


def _nearest_existing(p: Path) -> Path:
    parent = p.absolute().parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    return parent


def output_folder(path, flag: str = "--report", files=REPORT_FILES, what: str = "the report") -> None:
    """An output folder (``--report``, OUTPUT): there and writable, or creatable in a writable
    folder: not an existing file, no file on the way to it, nothing written yet."""
    p = Path(str(path)).expanduser()
    if p.exists() and not p.is_dir():
        listed = f" ({', '.join(files)} go into it)" if files else ""
        raise BadInput(f"{flag} {p}: an existing file; {flag} names a folder{listed}: give a new or existing folder")
    if p.is_dir():
        for name in files:
            if (p / name).is_dir():
                raise BadInput(f"{flag} {p}: {p / name} is a folder, so {what} cannot be written; "
                               "remove it or give another folder")
        if not _can_write_in(p):
            raise BadInput(f"{flag} {p}: the folder is not writable; give a folder you can write to")
        return
    _creatable(flag, p, "the folder cannot be made", "make it", "folder")


def report_dir(path, flag: str = "--report") -> None:
    """``--report DIR`` of parity, golden-check, features and gate."""
    output_folder(path, flag)


def output_file(path, flag: str) -> None:
    """An output file (``--junit PATH``): not a folder, its folder there and writable or creatable."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise BadInput(f"{flag} {p}: a folder; {flag} names a file to write: give a file path")
    if p.exists():
        if not _can_write_in(p.parent):
            raise BadInput(f"{flag} {p}: its folder is not writable; give a path you can write to")
        return
    _creatable(flag, p, "the file cannot be written", "write it", "path")


def _creatable(flag: str, p: Path, cannot: str, verb: str, noun: str) -> None:
    """A path that is not there yet: its nearest existing folder is one, and writable."""
    parent = _nearest_existing(p)
    if not parent.is_dir():
        raise BadInput(f"{flag} {p}: {parent} is a file, so {cannot}; give another {noun}")
    if not _can_write_in(parent):
        raise BadInput(f"{flag} {p}: cannot {verb}, {parent} is not writable; give a {noun} you can write to")


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
            raise BadInput(f"{role} {text}: no such checkpoint folder{here(p)}; expected a LongCat-Video model "
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


def component_folders(component: str, src: Original, conv: Converted, what: str | None = None) -> None:
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


