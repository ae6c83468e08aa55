"""The one mechanism for patching FastVideo at run time (fixes, CPU adjustments,
recorders, attention logs, the features wrapper): layers on an attribute, that stack
and come off in any order.

An attribute of an owner (a class, a module or an object) patched here holds a stack:
the value that was there first (the *base*) and the layers put on it, oldest first.
Its value is always the layers applied in order to the base::

    value = base
    for layer in layers:
        value = layer.make(value)

so a layer wraps whatever the layers under it left, and removing any layer, in any
order, rebuilds the value from the base and the layers that remain. When the last
layer comes off, the base goes back exactly: the same object, or no attribute at all
where the owner had none of its own (an inherited method, an instance attribute that
shadows a class's).

API (every function returns an ``Undo``: call it to remove that layer; calling it again
does nothing):

- ``wrap(owner, name, make, key=None)``: a layer ``make(previous) -> value``. For a
  class, ``previous`` is the raw attribute (the function, ``staticmethod`` or
  ``classmethod`` object; an inherited one found along the MRO); for a module or an
  object, the value itself.
- ``replace(owner, name, value, key=None)``: a layer that ignores what is under it.
- ``key``: a layer with a key already on that attribute's stack is not added again:
  the second ``wrap``/``replace`` with the key counts one more user, and the layer
  comes off when every user has undone it (installing a fix twice is harmless).
- ``layers(owner, name) -> [key or None, ...]``: the stack, oldest first (for tests).
- ``original(owner, name)``: the value under every layer.
- ``Patches``: a group of layers undone together (newest first), usable as a context
  manager: ``with Patches() as p: p.wrap(cls, "forward", make)``.
- ``patched(owner, name, make)``: one layer for a ``with`` scope.

Example, a recorder around a module-level function for a run (what parity/features.py's
``build_pipeline`` wrapper is)::

    import fastvideo.pipelines as fvp
    from fixes import patching

    def recording(build):                  # make(previous) -> the value put on
        def build_pipeline(*args, **kwargs):
            pipe = build(*args, **kwargs)
            built.append(pipe)
            return pipe
        return build_pipeline

    with patching.Patches() as p:
        p.wrap(fvp, "build_pipeline", recording, key="features: record pipelines")
        ...                                # other layers on fvp.build_pipeline (fixes) keep working

``make`` may be called again whenever a layer under it comes off, so it must only
build a value from ``previous`` (no side effects). An attribute changed behind the
mechanism's back (a plain ``setattr`` over a patched one) is refused with a
RuntimeError when the stack is next touched rather than silently dropped.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

_MISSING = object()


class Undo:
    """Removes one layer; idempotent."""

    def __init__(self, fn: Callable[[], None]):
        self._fn = fn

    def __call__(self) -> None:
        if self._fn is not None:
            self._fn()                  # raises (and stays to be undone) where the attribute was changed behind
            self._fn = None


class _Layer:
    __slots__ = ("make", "key", "users")

    def __init__(self, make, key):
        self.make, self.key, self.users = make, key, 1


class _Stack:
    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name
        own = vars(owner) if hasattr(owner, "__dict__") else {}
        self.base = own.get(name, _MISSING)
        self.inherited = _raw_inherited(owner, name) if self.base is _MISSING else _MISSING
        self.layers: list[_Layer] = []
        self.current = self.base

    def check(self) -> None:
        own = vars(self.owner).get(self.name, _MISSING) if hasattr(self.owner, "__dict__") else _MISSING
        if own is not self.current:
            raise RuntimeError(f"{_label(self.owner)}.{self.name} was changed outside fixes.patching; "
                               "patch FastVideo through fixes.patching only")

    def rebuild(self) -> None:
        if not self.layers:
            if self.base is _MISSING:
                if self.name in vars(self.owner):
                    delattr(self.owner, self.name)
            else:
                setattr(self.owner, self.name, self.base)
            self.current = self.base
            return
        value = self.base if self.base is not _MISSING else self.inherited
        for layer in self.layers:
            value = layer.make(value)
        setattr(self.owner, self.name, value)
        self.current = value


def _label(owner) -> str:
    return getattr(owner, "__qualname__", None) or getattr(owner, "__name__", None) or type(owner).__name__


def _raw_inherited(owner, name: str):
    """What ``owner.name`` resolves to when ``owner`` has no attribute of its own: a class's
    raw attribute along its MRO, or the attribute of an object's class."""
    if isinstance(owner, type):
        for klass in owner.__mro__[1:]:
            if name in vars(klass):
                return vars(klass)[name]
        raise AttributeError(f"{_label(owner)} has no attribute {name!r} to patch")
    value = getattr(owner, name, _MISSING)
    if value is _MISSING:
        raise AttributeError(f"{_label(owner)} has no attribute {name!r} to patch")
    return value


_STACKS: dict[tuple[int, str], _Stack] = {}


def _stack(owner, name: str) -> _Stack:
    st = _STACKS.get((id(owner), name))
    if st is None or st.owner is not owner:
        st = _STACKS[(id(owner), name)] = _Stack(owner, name)
    return st


def wrap(owner, name: str, make: Callable[[Any], Any], key: Any = None) -> Undo:
    """Put ``make(previous)`` on ``owner.name`` -> the undo of this layer."""
    st = _stack(owner, name)
    st.check()
    if key is not None:
        for layer in st.layers:
            if layer.key == key:
                layer.users += 1
                return Undo(lambda: _release(st, layer))
    layer = _Layer(make, key)
    st.layers.append(layer)
    try:
        st.rebuild()
    except BaseException:
        st.layers.remove(layer)
        st.rebuild()
        raise
    return Undo(lambda: _release(st, layer))


def replace(owner, name: str, value: Any, key: Any = None) -> Undo:
    """Make ``owner.name`` ``value`` (a layer that ignores the ones under it) -> its undo."""
    return wrap(owner, name, lambda _previous: value, key=key)


def _release(st: _Stack, layer: _Layer) -> None:
    layer.users -= 1
    if layer.users > 0:
        return
    st.check()
    st.layers.remove(layer)
    st.rebuild()
    if not st.layers:
        _STACKS.pop((id(st.owner), st.name), None)


def original(owner, name: str):
    """What ``owner.name`` was before the mechanism's layers (its current value if it has none)."""
    st = _STACKS.get((id(owner), name))
    if st is not None and st.owner is owner and st.layers:
        return st.base if st.base is not _MISSING else st.inherited
    return getattr(owner, name)


def layers(owner, name: str) -> list:
    """The keys of the layers on ``owner.name``, oldest first (None for a layer without one)."""
    st = _STACKS.get((id(owner), name))
    return [layer.key for layer in st.layers] if st is not None and st.owner is owner else []


class Patches:
    """Layers put on together and undone together, newest first."""

    def __init__(self):
        self._undo: list[Undo] = []

    def wrap(self, owner, name: str, make, key=None) -> Undo:
        u = wrap(owner, name, make, key=key)
        self._undo.append(u)
        return u

    def replace(self, owner, name: str, value, key=None) -> Undo:
        u = replace(owner, name, value, key=key)
        self._undo.append(u)
        return u

    def add(self, undo: Callable[[], None]) -> None:
        """Another undo to run with this group's (a hook's ``remove``, say)."""
        self._undo.append(undo if isinstance(undo, Undo) else Undo(undo))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    __call__ = undo

    def __enter__(self) -> "Patches":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()


@contextlib.contextmanager
def patched(owner, name: str, make, key=None):
    """One layer for a ``with`` scope."""
    u = wrap(owner, name, make, key=key)
    try:
        yield
    finally:
        u()
