"""What SOURCE means: a LongCat-Video model folder, a bare ``dit/`` folder, or a
Hugging Face repo id resolved through the local cache first.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInput
from .shards import INDEX_SUFFIX, PICKLE_SUFFIXES

COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[\w]$")


@dataclass
class Source:
    spec: str                          # what the user typed
    kind: str                          # "model" | "dit" | "hub"
    dit: Path
    root: Path | None = None           # the model folder (None for a bare dit/)
    loras: list[Path] = field(default_factory=list)
    components: dict[str, Path] = field(default_factory=dict)
    repo_id: str | None = None
    revision: str | None = None        # resolved commit for hub sources
    notes: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.dit / "config.json"

    def describe(self) -> dict:
        d = {"spec": self.spec, "kind": self.kind, "dit": str(self.dit)}
        if self.repo_id:
            d.update(repo_id=self.repo_id, revision=self.revision)
        return d


def _is_dit_folder(p: Path) -> bool:
    return (p / "config.json").is_file() or any(p.glob("*.safetensors")) or any(p.glob("*" + INDEX_SUFFIX)) \
        or any(x.suffix in PICKLE_SUFFIXES for x in p.iterdir())


def from_folder(path: Path, spec: str | None = None, *, kind: str | None = None) -> Source:
    spec = spec or str(path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise BadInput(f"{path}: pickle checkpoints are refused (they can run code when loaded); "
                           "convert it to safetensors first")
        raise BadInput(f"{path}: expected a LongCat-Video model folder (with dit/) or a dit/ folder, not a file")
    if not path.is_dir():
        raise BadInput(f"{path}: no such folder{local_note(path)}")
    if (path / "dit").is_dir():
        src = Source(spec, kind or "model", path / "dit", root=path)
        src.loras, notes = find_loras(path / "lora")
        src.notes += notes
        src.components = {c: path / c for c in COMPONENTS if (path / c).is_dir()}
        return src
    if _is_dit_folder(path):
        return Source(spec, kind or "dit", path)
    raise BadInput(f"{path}: no dit/ folder; SOURCE must be a LongCat-Video model folder (holding dit/), "
                   "a dit/ folder, or a Hugging Face repo id")


def find_loras(folder: Path) -> tuple[list[Path], list[str]]:
    if not folder.is_dir():
        return [], []
    loras, notes = [], []
    for p in sorted(folder.iterdir()):
        if p.suffix in PICKLE_SUFFIXES:
            raise BadInput(f"{p}: pickle LoRA files are refused (they can run code when loaded); "
                           "convert it to safetensors first")
        if p.is_file() and p.suffix == ".safetensors":
            loras.append(p)
        elif not p.name.startswith("."):
            notes.append(f"{p}: not a .safetensors LoRA; left out")
    return loras, notes


def resolve(spec: str, *, revision: str | None = None, components: bool = True, loras: bool = True,
            weights: bool = True) -> Source:
    """A local folder when ``spec`` names one, else a Hugging Face repo id.

    ``weights=False`` (for ``plan``) fetches only dit/'s JSON files from the Hub."""
    path = Path(spec).expanduser()
    if path.exists() or not is_repo_id(spec):
        return from_folder(path, spec)
    try:
        return from_hub(spec, revision=revision, components=components, loras=loras, weights=weights)
    except BadInput as e:
        # Say that the local path is not there too: a mistyped relative path (or one run
        # from another folder) reads as a Hub lookup otherwise.
        why = str(e)
        why = why[len(spec) + 2:] if why.startswith(f"{spec}: ") else why
        raise BadInput(f"{spec}: no such folder{local_note(path)}; as a Hugging Face repo id: {why}") from None


def local_note(path: Path) -> str:
    """" (relative to /cwd)" for a relative path: where it was looked for."""
    return "" if Path(path).is_absolute() else f" (relative to {os.getcwd()})"


def is_repo_id(spec: str) -> bool:
    return bool(_REPO_ID.match(spec)) and not spec.startswith((".", "/", "~"))


# -- Hugging Face Hub ----------------------------------------------------------

def _truthy(v: str | None) -> bool:
    return (v or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> str | None:
    """The cache folder as the environment says now (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def allow_patterns(*, components: bool, loras: bool, weights: bool = True) -> list[str]:
    if not weights:
        return ["dit/*.json", "model_index.json"]
    pats = ["dit/*", "model_index.json"]
    if loras:
        pats.append("lora/*")
    if components:
        pats += [f"{c}/*" for c in COMPONENTS]
    return pats


def _complete(snapshot: Path) -> bool:
    """dit/config.json and every shard its index names are present."""
    dit = snapshot / "dit"
    if not (dit / "config.json").is_file():
        return False
    indexes = list(dit.glob("*" + INDEX_SUFFIX))
    if not indexes:
        return any(dit.glob("*.safetensors"))
    try:
        files = set(json.loads(indexes[0].read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True  # let the reader report the broken index with its own message
    return all((dit / f).is_file() for f in files)


def from_hub(repo_id: str, *, revision: str | None = None, components: bool = True,
             loras: bool = True, weights: bool = True) -> Source:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise BadInput(f"{repo_id}: no such folder, and huggingface_hub is not installed to fetch it")
    pats = allow_patterns(components=components, loras=loras, weights=weights)
    kw = dict(revision=revision, cache_dir=hub_cache_dir(), allow_patterns=pats)
    offline = hub_offline()
    path: str | None = None
    try:
        path = snapshot_download(repo_id, local_files_only=True, **kw)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        if offline:
            raise BadInput(f"{repo_id}: not in the Hugging Face cache "
                           f"({hub_cache_dir() or 'default cache'}); HF_HUB_OFFLINE is set, so nothing is downloaded "
                           f"({type(e).__name__})")
    except Exception as e:  # IncompleteSnapshotError and friends
        if offline:
            raise BadInput(f"{repo_id}: cached snapshot is incomplete and HF_HUB_OFFLINE is set ({e})")
    complete = (lambda p: (p / "dit" / "config.json").is_file()) if not weights else _complete
    if path is None or (not offline and not complete(Path(path))):
        try:
            path = snapshot_download(repo_id, **kw)
        except Exception as e:  # network, auth, not found: one line for the user
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BadInput(f"{repo_id}: cannot fetch from the Hugging Face Hub ({type(e).__name__}: {msg})")
    snapshot = Path(path)
    if not (snapshot / "dit").is_dir():
        raise BadInput(f"{repo_id}: the repository has no dit/ folder; is it a LongCat-Video release?")
    src = from_folder(snapshot, repo_id, kind="hub")
    src.repo_id = repo_id
    src.revision = snapshot.name
    if not components:
        src.components = {}
    if not loras or not weights:
        src.loras = []
    return src


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def cached_sha256(path: Path) -> str | None:
    """The sha256 a Hugging Face cache already names a file by (LFS blobs are stored
    under their sha256), or None. Not recomputed: it is what the Hub published."""
    try:
        if not path.is_symlink():
            return None
        target = path.resolve()
    except OSError:
        return None
    if target.parent.name == "blobs" and _HEX64.match(target.name):
        return target.name
    return None
