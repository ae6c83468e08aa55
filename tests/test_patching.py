"""The one patch mechanism (fixes/patching.py): layers on one attribute stack, come off in
any order and leave exactly what was there; a keyed layer put on twice is one layer; and the
fixes, which patch through it, compose (issue 24)."""
from __future__ import annotations

import itertools
import types

import pytest

from fixes import patching
from parity_support import needs_native


class Base:
    def f(self):
        return "base"


class Child(Base):
    pass


def _tag(tag):
    def make(previous):
        def f(self):
            return f"{tag}({previous(self)})"
        return f
    return make


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_layers_stack_and_undo_in_any_order_restores_exactly(order):
    original = Base.__dict__["f"]
    undo = [patching.wrap(Base, "f", _tag(t)) for t in "abc"]
    assert Base().f() == "c(b(a(base)))"
    left = ["a", "b", "c"]
    for i in order:
        undo[i]()
        left.remove("abc"[i])
        expect = "base"
        for t in left:
            expect = f"{t}({expect})"
        assert Base().f() == expect
    assert Base.__dict__["f"] is original and patching.layers(Base, "f") == []


def test_an_inherited_method_goes_back_to_being_inherited():
    u1 = patching.wrap(Child, "f", _tag("x"))
    u2 = patching.replace(Child, "f", lambda self: "replaced")
    assert Child().f() == "replaced" and Base().f() == "base"
    u1()
    assert Child().f() == "replaced"
    u2()
    assert "f" not in Child.__dict__ and Child().f() == "base"


def test_a_keyed_layer_twice_is_one_layer_until_both_undo():
    make = _tag("k")
    u1 = patching.wrap(Base, "f", make, key="fix")
    u2 = patching.wrap(Base, "f", make, key="fix")
    assert Base().f() == "k(base)" and patching.layers(Base, "f") == ["fix"]
    u1()
    u1()                                          # an undo run twice does nothing more
    assert Base().f() == "k(base)"
    u2()
    assert Base().f() == "base" and patching.layers(Base, "f") == []


def test_module_names_and_instance_attributes():
    mod = types.ModuleType("m")
    mod.value = 1
    obj = Base()
    with patching.Patches() as group:
        group.replace(mod, "value", 2)
        group.wrap(obj, "f", lambda previous: (lambda: "instance " + previous()))
        assert mod.value == 2 and obj.f() == "instance base"
    assert mod.value == 1 and "f" not in vars(obj) and obj.f() == "base"


def test_a_change_behind_the_mechanisms_back_is_refused():
    u = patching.wrap(Base, "f", _tag("a"))
    saved = Base.__dict__["f"]
    Base.f = lambda self: "foreign"
    try:
        with pytest.raises(RuntimeError, match="outside fixes.patching"):
            u()
    finally:
        Base.f = saved
        u()
    assert Base().f() == "base"


@needs_native
@pytest.mark.parametrize("first_out", [True, False])
def test_fixes_on_one_method_compose_and_restore_in_any_order(first_out):
    """The issue's case: varlen-text and sp-whole-sequence both wrap the model's forward."""
    import fixes
    from parity import native as nat
    nat.ensure_runtime("cpu")
    import fastvideo.models.dits.longcat as lc
    before = {n: vars(lc.LongCatTransformer3DModel)[n] for n in ("forward",)}
    names = ("flash_attn_bsa_3d", "torch")
    module_before = {n: vars(lc)[n] for n in names}
    u1 = fixes.install("varlen-text")
    u2 = fixes.install("sp-whole-sequence")
    u3 = fixes.install("bsa-cond-split-dense")
    assert len(patching.layers(lc.LongCatTransformer3DModel, "forward")) == 2
    for u in ((u1, u3, u2) if first_out else (u2, u3, u1)):
        u()
    assert vars(lc.LongCatTransformer3DModel)["forward"] is before["forward"]
    assert all(vars(lc)[n] is module_before[n] for n in names) and fixes.active() == []


@needs_native
def test_installing_a_fix_twice_is_harmless():
    import fixes
    from parity import native as nat
    nat.ensure_runtime("cpu")
    from fastvideo.pipelines.stages.timestep_preparation import TimestepPreparationStage
    original = vars(TimestepPreparationStage)["forward"]
    fix = fixes.FIXES["schedule-reshift"]
    u1, u2 = fix.install(), fix.install()          # straight, past fixes.install's bookkeeping
    assert len(patching.layers(TimestepPreparationStage, "forward")) == 1
    u1()
    assert vars(TimestepPreparationStage)["forward"] is not original
    u2()
    assert vars(TimestepPreparationStage)["forward"] is original
