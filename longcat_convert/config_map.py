"""Config translation between the original ``dit/config.json`` and FastVideo's
``transformer/config.json``, in both directions.

The translation is a short declaration: the class names, the keys that are
renamed, and the settings the native model does not reproduce (each with the
reason, surfaced as a warning or a note). Every other key is carried as is, in
both directions, so original -> native -> original gives back the same dict.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import BadInput

ORIGINAL_CLASS = "LongCatVideoTransformer3DModel"
NATIVE_CLASS = "LongCatTransformer3DModel"
PIPELINE_CLASS = "LongCatPipeline"

# original key -> native key
RENAMED = {"num_heads": "num_attention_heads"}

# Settings whose value changes what the native model computes: (key, value) -> reason.
# Reported as warnings: the converted model will not reproduce the original's outputs.
NOT_REPRODUCED = {
    ("text_tokens_zero_pad", False):
        "text_tokens_zero_pad=false: the original attends each sample only to its valid text "
        "tokens (varlen); FastVideo's native model has no such path and attends to the padded "
        "text tokens too, so outputs differ whenever a prompt is padded",
}

# Keys FastVideo's native config does not read: carried for the way back, reported as notes.
IGNORED_BY_NATIVE = {
    "enable_flashattn3": "attention kernel choice; FastVideo selects its own attention backend",
    "enable_flashattn2": "attention kernel choice; FastVideo selects its own attention backend",
    "enable_xformers": "attention kernel choice; FastVideo selects its own attention backend",
    "cp_split_hw": "context-parallel split of the original code; FastVideo uses its own sequence parallelism",
}

# Keys a native config may hold that the original has no use for (derived or FastVideo-only).
NATIVE_ONLY = ("attention_head_dim", "num_channels_latents", "exclude_lora_layers", "_name_or_path")


def load(path: Path) -> dict:
    from .jsonfile import load_object
    return load_object(path, "a JSON object (re-download it)",
                       missing=f"{path}: missing; a LongCat-Video dit/ folder needs its config.json")


def to_native(original: dict, where: str = "dit/config.json") -> tuple[dict, list[str], list[str]]:
    """Original config -> (native config, warnings, notes)."""
    cls = original.get("_class_name")
    if cls not in (None, ORIGINAL_CLASS):
        raise BadInput(f"{where}: _class_name is {cls!r}, expected {ORIGINAL_CLASS!r}; "
                       "is this the LongCat-Video dit/config.json?")
    native: dict = {}
    for key, value in original.items():
        if key == "_class_name":
            native[key] = NATIVE_CLASS
        else:
            native[RENAMED.get(key, key)] = value
    if "_class_name" not in native:
        native = {"_class_name": NATIVE_CLASS, **native}
    warnings, notes = [], []
    for (key, value), reason in NOT_REPRODUCED.items():
        if key in original and original[key] == value:
            warnings.append(reason)
    for key, reason in IGNORED_BY_NATIVE.items():
        if key in original and original[key] not in (None, False):
            notes.append(f"{key}={json.dumps(original[key])} is carried but not used by FastVideo: {reason}")
    if original.get("enable_bsa"):
        notes.append("enable_bsa=true is carried: FastVideo runs its own block-sparse attention kernels "
                     "with these bsa_params")
    return native, warnings, notes


def to_original(native: dict, where: str = "transformer/config.json") -> tuple[dict, list[str]]:
    """Native config -> (original config, notes)."""
    cls = native.get("_class_name")
    if cls not in (None, NATIVE_CLASS):
        raise BadInput(f"{where}: _class_name is {cls!r}, expected {NATIVE_CLASS!r}; "
                       "is this a FastVideo LongCat transformer folder?")
    back = {v: k for k, v in RENAMED.items()}
    original: dict = {}
    notes = []
    for key, value in native.items():
        if key == "_class_name":
            original[key] = ORIGINAL_CLASS
        elif key in NATIVE_ONLY:
            notes.append(f"{key} dropped: the original config has no such key")
        else:
            original[back.get(key, key)] = value
    if "_class_name" not in original:
        original = {"_class_name": ORIGINAL_CLASS, **original}
    if "num_heads" not in original:
        raise BadInput(f"{where}: missing 'num_attention_heads'; cannot translate it back")
    return original, notes


def dump(cfg: dict) -> str:
    return json.dumps(cfg, indent=2) + "\n"
