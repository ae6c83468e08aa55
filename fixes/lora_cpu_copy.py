"""``lora-unmerge-cpu`` (also closes ``lora-switch-accumulates``): the base weight a LoRA
layer keeps to restore, on a CPU.

FastVideo: ``fastvideo/layers/lora/linear.py``, ``BaseLayerWithLoRA.__init__`` keeps
``base_layer.weight.to("cpu")`` as the copy ``unmerge_lora_weights`` restores. On a
GPU that is a copy; on a CPU ``.to("cpu")`` hands back the weight itself, and
``merge_lora_weights`` adds the adapter into it in place, so the "saved" weight
holds the adapter too: ``unmerge_lora_weights`` restores nothing (the unmerged layer
then applies the LoRA on top of a weight that already holds it), and
``set_lora_adapter`` (unmerge, then merge the next) accumulates adapters. The same
aliasing a second time: ``unmerge_lora_weights`` restores with
``cpu_weight.data.to(weight)``, which on a CPU is ``cpu_weight`` itself, so the next
merge writes into the kept copy again (switching to a second adapter and back leaves
3x the first adapter where it should leave 1x).

Fix: after ``__init__``, when the kept weight shares storage with the layer's own,
keep a plain tensor copy instead (what the GPU path already holds); after
``unmerge_lora_weights``, when the restored weight shares storage with the kept copy,
the weight gets its own copy. Upstream: ``.to("cpu", copy=True)`` in ``__init__``
and ``.to(weight, copy=True)`` in ``unmerge_lora_weights``.

Proven by the gate's features step (``tiny-bundle: features --fixes all``): the rows
``unmerge_lora_weights`` and ``set_lora_adapter`` no longer diverge from their baselines.
"""
from __future__ import annotations

from .base import Fix, undo_all, wrap_method
from .series import Edit, NewFile, Patch


def _make(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        kept, weight = getattr(self, "cpu_weight", None), getattr(self.base_layer, "weight", None)
        if kept is not None and weight is not None and kept.data_ptr() == weight.data_ptr():
            # On a CPU `.to("cpu")` returned the Parameter itself, so nn.Module registered it as a
            # second parameter; the GPU path holds a plain tensor copy, and so does this.
            delattr(self, "cpu_weight")
            self.cpu_weight = kept.detach().clone()
    return __init__


def _make_unmerge(original):
    def unmerge_lora_weights(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        kept, weight = getattr(self, "cpu_weight", None), getattr(self.base_layer, "weight", None)
        if kept is not None and weight is not None and kept.data_ptr() == weight.data_ptr():
            weight.data = weight.data.clone()       # the next in-place merge must not reach the kept copy
        return out
    return unmerge_lora_weights


def _install():
    from fastvideo.layers.lora.linear import BaseLayerWithLoRA
    undo = [wrap_method(BaseLayerWithLoRA, "__init__", _make),
            wrap_method(BaseLayerWithLoRA, "unmerge_lora_weights", _make_unmerge)]
    return undo_all(undo)


FIX = Fix("lora-unmerge-cpu", "a LoRA layer on a CPU keeps a copy of its base weight to restore, not the weight "
                              "itself", _install)


PATCH = Patch(
    name="lora-unmerge-cpu",
    title="LoRA: keep a real copy of the base weight on a CPU (unmerge restores, adapters do not accumulate)",
    description="""\
        What: `BaseLayerWithLoRA.__init__` keeps `base_layer.weight.to("cpu", copy=True)` and
        `unmerge_lora_weights` restores with `.to(weight, copy=True)`.

        Why: on a CPU `.to("cpu")` hands back the weight itself, so the "saved" copy is the
        weight that `merge_lora_weights` then adds the adapter into in place: unmerging restores
        nothing, and `set_lora_adapter` (unmerge, then merge the next) accumulates adapters. The
        restore aliases a second time (`cpu_weight.data.to(weight)` is `cpu_weight` on a CPU), so
        switching to a second adapter and back leaves 3x the first adapter. On a GPU both calls
        already copy. (This also closes `lora-switch-accumulates`.)

        Evidence: longcat-convert's gate, the features step of tiny-bundle: the rows
        `unmerge_lora_weights` and `set_lora_adapter` diverge on stock FastVideo and are exact /
        within tolerance with this patch (`features-fixed`).

        Leaves alone: the GPU path (one extra copy call that was already a copy), DTensor weights.""",
    edits=(Edit("fastvideo/layers/lora/linear.py", "BaseLayerWithLoRA.__init__",
                'self.cpu_weight = base_layer.weight.to("cpu")',
                'self.cpu_weight = base_layer.weight.to("cpu", copy=True)  # a copy on a CPU too'),
           Edit("fastvideo/layers/lora/linear.py", "BaseLayerWithLoRA.unmerge_lora_weights",
                "self.base_layer.weight.data = self.cpu_weight.data.to(self.base_layer.weight, non_blocking=True)",
                "self.base_layer.weight.data = self.cpu_weight.data.to(self.base_layer.weight, non_blocking=True,\n"
                "                                                      copy=True)")),
    new_files=(NewFile("fastvideo/tests/layers/test_lora_unmerge_cpu.py", '''\
        # SPDX-License-Identifier: Apache-2.0
        """LoRA on a CPU: unmerge restores the base weight; switching adapters does not accumulate."""
        import torch

        from fastvideo.layers.linear import ReplicatedLinear
        from fastvideo.layers.lora import linear as lora_linear


        def test_unmerge_and_switch_on_cpu(monkeypatch):
            monkeypatch.setattr(lora_linear, "get_local_torch_device", lambda: torch.device("cpu"))
            torch.manual_seed(0)
            layer = lora_linear.BaseLayerWithLoRA(ReplicatedLinear(4, 4, bias=False))
            base = layer.base_layer.weight.detach().clone()
            a, b = torch.randn(2, 4), torch.randn(4, 2)
            with torch.no_grad():
                layer.set_lora_weights(a, b)
                merged = layer.base_layer.weight.detach().clone()
                layer.unmerge_lora_weights()
                torch.testing.assert_close(layer.base_layer.weight.detach(), base)
                layer.set_lora_weights(a, 2 * b)
                layer.set_lora_weights(a, b)
            torch.testing.assert_close(layer.base_layer.weight.detach(), merged)
        '''),),
    test="fastvideo/tests/layers/test_lora_unmerge_cpu.py",
)
FIX = Fix(FIX.finding, FIX.summary, FIX.install, PATCH)
