"""Reading the JSON files a user hands us (configs, indexes, case files, manifests,
tolerance policies): every way one can be broken -- unreadable, not UTF-8, not JSON,
nested past the parser's recursion limit -- is one BadInput naming the file."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import BadInput


def load(path, what: str = "a JSON file", *, missing: str | None = None):
    """The parsed document at ``path``; ``what`` says what it should have been."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(missing or f"{path}: missing; expected {what}")
    except IsADirectoryError:
        raise BadInput(f"{path}: is a folder; expected {what}")
    except OSError as e:
        raise BadInput(f"{path}: cannot read ({e.strerror or e})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text (byte {e.start}); expected {what}")
    try:
        return json.loads(text)
    except RecursionError:
        raise BadInput(f"{path}: JSON nested too deeply; expected {what}")
    except ValueError as e:
        raise BadInput(f"{path}: not valid JSON ({str(e)[:120]}); expected {what}")


def load_object(path, what: str = "a JSON object", *, missing: str | None = None) -> dict:
    """Like ``load``, and the document must be a JSON object."""
    data = load(path, what, missing=missing)
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected {what}, found {kind(data)}")
    return data


def kind(v) -> str:
    """What a parsed JSON value is, in JSON's words (for messages)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"
