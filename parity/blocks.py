"""Block-streamed parity (``--mode blocks``) for checkpoints too big to hold
twice: each implementation is built with ONE block, and block i's weights are
loaded into it from the shards (lazily, only that block's tensors) for pass i.

Pass i runs both one-block models on the same inputs, feeding block 0 of each
the reference's output of block i-1 (pass 0: the reference's patch
embedding), and records the block and its attention / cross-attention / FFN
under the name ``blocks.<i>``. Embedders are compared in pass 0; the final
layer in the last pass, fed the reference's last block output. Peak memory is
one block of each model plus the embedders, the final layer and activations,
whatever the depth.
"""
from __future__ import annotations

import gc

import torch

from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader

from . import native as nat
from . import refside
from .capture import Feeder, Recorder
from .correspondence import layer_pairs
from .forward import Rows
from .inputs import Inputs
from .setup import Setup
from .sides import Sides, one_block_dims


def _block_keys(reader: ShardedReader, i: int) -> tuple[list[str], dict[str, str]]:
    prefix = f"blocks.{i}."
    keys = [k for k in reader.keys() if k.startswith(prefix)]
    return keys, {k: "blocks.0." + k[len(prefix):] for k in keys}


def _load_block(model, reader, i, device) -> None:
    keys, rename = _block_keys(reader, i)
    want = {k for k in model.state_dict() if k.startswith("blocks.0.")}
    got = set(rename.values())
    if got != want:
        missing = sorted(k.replace("blocks.0.", f"blocks.{i}.", 1) for k in want - got)
        unknown = sorted(k.replace("blocks.0.", f"blocks.{i}.", 1) for k in got - want)
        raise BadInput(f"{reader.path}: block {i} keys do not match the model: missing {missing[:4]}, "
                       f"unknown {unknown[:4]}")
    nat.load_state(model, reader, keys=keys, rename=rename, device=device, strict=False)


def stream(setup: Setup, sides: Sides, inp: Inputs):
    """One input through every block, one block of each model in memory at a time:
    yields the Rows of each pass (judge and drop them before the next)."""
    ref, native, truth = sides.ref, sides.native, sides.truth
    src, conv = sides.readers
    pairs_one = layer_pairs(one_block_dims(sides))       # names of the one-block models
    embed = [p for p in pairs_one if not p.name.startswith("blocks.") and p.kind not in ("final_layer", "output")]
    block = [p for p in pairs_one if p.name.startswith("blocks.0")]
    tail = [p for p in pairs_one if p.kind in ("final_layer", "output")]
    depth = sides.dims.depth
    carried = None
    for i in range(depth):
        for m, reader in ((ref, src), (native, conv), (truth, src)):
            if m is not None:
                _load_block(m, reader, i, setup.device)
        last = i == depth - 1
        pairs = (embed if i == 0 else []) + block + (tail if last else [])
        names = [p.name for p in pairs if p.kind != "output"]
        kv = {0: inp.kv_cache[i]} if inp.kv_cache else None
        ref_feed = {"blocks.0": carried} if carried is not None else {}
        # Feeder before Recorder: the recorded input must be the one the block got.
        rec_names = list(dict.fromkeys(names + ["blocks.0", "final_layer"]))
        with Feeder(ref, ref_feed), Recorder(ref, rec_names, inputs=True) as rrec:
            r_out, _ = refside.run(ref, inp, setup.dtype, setup.device, kv_cache=kv)
        feeds = {"blocks.0": rrec.inputs["blocks.0"]}
        if last:
            feeds["final_layer"] = rrec.inputs["final_layer"]
        nat_feeds = {p.native: t for p in pairs_one for n, t in feeds.items() if p.name == n}
        with Recorder(native, [p.native for p in pairs if p.kind != "output"]) as nrec, \
                Feeder(native, nat_feeds):
            n_out, _ = nat.run(native, inp, setup.dtype, setup.device, kv_cache=kv)
        truth_acts = None
        if truth is not None:
            with Recorder(truth, names) as trec, Feeder(truth, feeds):
                t_out, _ = refside.run(truth, inp, torch.float32, setup.device, kv_cache=kv)
            truth_acts = dict(trec.outputs, output=t_out)

        def here(name: str) -> str:           # blocks.0... of the one-block model -> blocks.<i>...
            return name.replace("blocks.0", f"blocks.{i}", 1) if name.startswith("blocks.0") else name
        ref_acts = dict(rrec.outputs, output=r_out)
        nat_acts = dict(nrec.outputs, output=n_out)
        rows = Rows(inp.name, {here(p.name): ref_acts[p.name] for p in pairs if p.name in ref_acts})
        rows.native = {here(p.name): nat_acts[p.native] for p in pairs if p.native in nat_acts}
        rows.native_names = {here(p.name): here(p.native) for p in pairs}
        if truth_acts is not None:
            rows.truth = {here(p.name): truth_acts[p.name] for p in pairs if p.name in truth_acts}
        carried = rrec.outputs["blocks.0"]
        del rrec, nrec, ref_acts, nat_acts, truth_acts
        yield rows
        del rows
        gc.collect()


def check_inputs(setup: Setup, inputs: list[Inputs]) -> None:
    if setup.loras or any(inp.loras for inp in inputs):
        raise BadInput("--mode blocks does not apply LoRAs; use --mode e2e or layer for LoRA parity")
