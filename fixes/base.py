"""A fix: a name, the finding it closes, one sentence of what it changes, an
``install`` that returns its own undo, and (fixes/series.py) the edit of
FastVideo's source that makes it upstream.

``wrap_method`` and ``replace_name`` put a layer through fixes/patching.py, the one
patch mechanism: layers on one attribute stack and come off in any order, and a
layer with a key already on the stack only counts one more user (installing a fix
twice is harmless)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import patching


@dataclass(frozen=True)
class Fix:
    finding: str                        # the known difference's id
    summary: str
    install: Callable[[], Callable[[], None]]
    patch: object = field(default=None, compare=False)     # fixes.series.Patch: the upstream edit


def wrap_method(cls, name: str, make, key=None) -> Callable[[], None]:
    """Put ``make(original)`` on ``cls.name`` (a layer keyed by ``make`` itself unless ``key``
    is given); -> the undo."""
    return patching.wrap(cls, name, make, key=key if key is not None else make)


def replace_name(module, name: str, value, key) -> Callable[[], None]:
    """Make ``module.name`` (a name the module's code looks up when it runs) ``value``; -> the undo."""
    return patching.replace(module, name, value, key=key)


def undo_all(undos: list[Callable[[], None]]) -> Callable[[], None]:
    """One undo for several, run in reverse order."""
    group = patching.Patches()
    for u in undos:
        group.add(u)
    return group.undo
