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


def replace_name(module, name: str, value) -> Callable[[], None]:
    """Make ``module.name`` (a name the module's code looks up when it runs) ``value``; -> the undo."""
    previous = getattr(module, name)
    setattr(module, name, value)

    def undo() -> None:
        setattr(module, name, previous)
    return undo


def undo_all(undos: list[Callable[[], None]]) -> Callable[[], None]:
    """One undo for several, run in reverse order."""
    def restore() -> None:
        for u in reversed(undos):
            u()
    return restore
