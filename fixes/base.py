"""A fix: a name, the finding it closes, one sentence of what it changes, and an
``install`` that returns its own undo."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Fix:
    finding: str                        # the known difference's id
    summary: str
    install: Callable[[], Callable[[], None]]


def wrap_method(cls, name: str, make) -> Callable[[], None]:
    """Replace ``cls.name`` by ``make(original)``; -> the undo."""
    original = cls.__dict__[name]
    setattr(cls, name, make(original))

    def undo() -> None:
        setattr(cls, name, original)
    return undo
