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
from dataclasses import replace
from types import SimpleNamespace

import torch

from longcat_convert.errors import BadInput
from longcat_convert.shards import ShardedReader

from . import native as nat
from . import refside
from . import report as R
from .capture import Feeder, Recorder
from .correspondence import layer_pairs
from .inputs import Inputs
from .policy import dtype_name
from .runner import LOW_PRECISION, Setup, _compare, bsa_for


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


def run_blocks(setup: Setup, inputs: list[Inputs]) -> dict:
    config, src, _ = refside.open_source(setup.source)
    dims = config.dims
    tdir = nat.transformer_dir(setup.converted)
    ncfg = nat.read_native_config(tdir)
    if nat.native_dims(ncfg) != dims:
        raise BadInput(f"{tdir / 'config.json'}: converted config does not match the source's config.json")
    if setup.loras or any(inp.loras for inp in inputs):
        raise BadInput("--mode blocks does not apply LoRAs; use --mode e2e or layer for LoRA parity")
    conv = ShardedReader(tdir)
    depth = dims.depth
    one = replace(dims, depth=1)

    def nonblock(reader):
        return [k for k in reader.keys() if not k.startswith("blocks.")]

    ref = refside.build_reference(config, depth=1, dtype=setup.dtype, device=setup.device,
                                  attention=setup.attention)
    native = nat.build_native_model(dict(ncfg, depth=1), dtype=setup.dtype, device=setup.device)
    truth = None
    if setup.dtype in LOW_PRECISION:
        truth = refside.build_reference(config, depth=1, dtype=torch.float32, device=setup.device,
                                        attention=setup.attention)
    for m, reader in ((ref, src), (native, conv), (truth, src)):
        if m is not None:
            nat.load_state(m, reader, keys=nonblock(reader), device=setup.device, strict=False)

    env = R.environment(setup.device, dtype_name(setup.dtype), setup.attention)
    report = R.new_report("parity", f"LongCat parity (blocks, {dtype_name(setup.dtype)}, {setup.device})",
                          mode="blocks", policy=setup.policy, dtype=setup.dtype, device=setup.device, env=env)
    zero_pad = config.text_tokens_zero_pad
    if not zero_pad:
        report["notes"].append("text_tokens_zero_pad=false: FastVideo's native model attends to padded text "
                               "(known difference)")
    pairs_one = layer_pairs(one)                       # names of the one-block models
    embed = [p for p in pairs_one if not p.name.startswith("blocks.") and p.kind not in ("final_layer", "output")]
    block = [p for p in pairs_one if p.name.startswith("blocks.0")]
    tail = [p for p in pairs_one if p.kind in ("final_layer", "output")]

    one_block = SimpleNamespace(ref=ref, truth=truth, native=native, config=config)
    for inp in inputs:
        with bsa_for(setup, one_block, inp, report, T=inp.hidden_states.shape[2],
                     num_cond_latents=inp.num_cond_latents):
            _stream(setup, inp, report, depth, (ref, native, truth), (src, conv), (embed, block, tail, pairs_one),
                    zero_pad)
    return R.finalize(report)


def _stream(setup: Setup, inp: Inputs, report: dict, depth: int, models, readers, groups, zero_pad) -> None:
    """One input through every block, one block of each model in memory at a time."""
    ref, native, truth = models
    src, conv = readers
    embed, block, tail, pairs_one = groups
    carried = None
    for i in range(depth):
        for m, reader in ((ref, src), (native, conv), (truth, src)):
            if m is not None:
                _load_block(m, reader, i, setup.device)
        last = i == depth - 1
        pairs = (embed if i == 0 else []) + block + (tail if last else [])
        names = [p.name for p in pairs if p.kind != "output"]
        rename = {p.name: p.name.replace("blocks.0", f"blocks.{i}", 1) for p in block}
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
        ref_acts = dict(rrec.outputs, output=r_out)
        nat_acts = dict(nrec.outputs, output=n_out)
        renamed = [replace(p, name=rename.get(p.name, p.name),
                           native=p.native.replace("blocks.0", f"blocks.{i}", 1)) for p in pairs]
        ref_acts = {rename.get(k, k): v for k, v in ref_acts.items()}
        nat_acts = {(k.replace("blocks.0", f"blocks.{i}", 1) if k.startswith("blocks.0") else k): v
                    for k, v in nat_acts.items()}
        if truth_acts is not None:
            truth_acts = {rename.get(k, k): v for k, v in truth_acts.items()}
        _compare(report, renamed, ref_acts, nat_acts, setup=setup, inp=inp, case=inp.name, zero_pad=zero_pad,
                 truth_acts=truth_acts)
        carried = rrec.outputs["blocks.0"]
        del rrec, nrec, ref_acts, nat_acts, truth_acts
        gc.collect()
