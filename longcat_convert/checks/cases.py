"""Case files: there, a golden case (.safetensors with its .json), of the kind the run takes
(DiT, trajectory or component case), and recorded for SOURCE's model — from the JSON and
the safetensors header only, no torch."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from ..shards import ShardedReader
from .paths import COMPONENT_FOLDERS, Original, here

KIND_WORDS = {"dit": "DiT case (one forward's act.* activations)", "trajectory": "trajectory case (traj.* keys)",
              "component": "component case"}


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
        raise BadInput(f"{flag} {p}: no such case file{here(p)}")
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


