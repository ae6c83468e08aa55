"""The sequence-parallel runner (``parity --sp N``): the reference runs once, here;
the native side runs under FastVideo's own sequence parallelism in N processes
(parity/launcher.py starts them, parity/sp_worker.py is one of them), plus one
process of its own running the same native model alone (FastVideo's SP size 1)
as the baseline. Runs come back as outcomes labelled ``1proc`` and ``rank<r>``;
their rows are judged by the mode (parity/modes.py) like any other rows.

GNU OpenMP runs parallel regions slower in a forked process, so ``auto`` forks
only where each rank gets one thread (where forked and fresh ranks time alike),
and a forked baseline's forward times are taken from the same model run again in
the launching process, with all cores. The timeout bounds each launch (the
baseline, then the N ranks).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import fixes
from longcat_convert.errors import BadInput

from . import native as nat
from .correspondence import LayerPair
from .forward import ReferenceForward, Rows, Step, plan, reference_forward, step_settings, to_rows
from .inputs import Inputs
from .launcher import Launcher, cpu_cores
from .setup import Setup
from .sides import Sides, bsa_for
from .sp_stats import cp_split_hw

DEFAULT_TIMEOUT = 600.0
START_METHODS = ("auto", "fork", "spawn")
# Timed forwards per job after the recorded one (median): 10 when a forward takes under
# 50 ms, 3 under 0.5 s, 1 under 60 s, else the recorded forward's time stands.
REPEATS = ((50.0, 10), (500.0, 3), (60_000.0, 1))
BSA_SP_NOTE = ("BSA under SP: FastVideo's LongCatSelfAttention hands flash_attn_bsa_3d the latent shape with H and W "
               "divided by cp_split_hw ({split} at SP {n}), while each rank's q/k/v still hold the whole sequence")


def check(setup: Setup, sp: int, start: str, timeout: float) -> str:
    """The SP settings the input checks cannot see (the GPUs this machine has) -> the start
    method to use. The flags themselves (mode, ranks, timeout, start method, the heads
    against the ranks) are checked once, before torch, by longcat_convert/checks/."""
    if setup.device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < sp:
            raise BadInput(f"--sp {sp} --device {setup.device}: NCCL needs {sp} GPUs, one per rank; "
                           f"this machine has {n}")
        return "spawn"
    if start == "auto":
        # Fork only where each rank runs one thread: GNU OpenMP runs parallel regions
        # slower in a forked process (measured: 2x on tiny-a's 10 ms forwards, 17% at
        # 2048 tokens, with 2 threads; the same at 1 thread).
        return "fork" if hasattr(os, "fork") and cpu_cores() // sp <= 1 else "spawn"
    return start


def prepare(setup: Setup, sp: int, start: str, report: dict) -> tuple[int, dict]:
    """-> (cores, torch threads per run: the baseline all cores, each rank cores // sp)."""
    if start == "fork":
        nat.ensure_runtime(setup.device)     # imported once here, inherited by every forked process
    cores = cpu_cores()
    threads = {"baseline": cores, "sp": max(1, cores // sp)}
    if start == "fork" and threads["sp"] > 1:
        report["notes"].append(f"--sp-start fork with {threads['sp']} threads per rank: OpenMP runs parallel regions "
                               "slower in a forked process, so the ranks' forward times are pessimistic")
    return cores, threads


BSA_SP_SHARDED_NOTE = ("BSA under SP with the sp-whole-sequence fix: each rank holds 1/{n} of the tokens; the kernel runs "
                       "after the all-to-all on the whole latent grid with 1/{n} of the heads")


def bsa_note(sp: int) -> str:
    if "sp-whole-sequence" in fixes.active():
        return BSA_SP_SHARDED_NOTE.format(n=sp)
    return BSA_SP_NOTE.format(split="x".join(map(str, cp_split_hw(sp))), n=sp)


@dataclass
class Job:
    """One forward for the ranks: its reference half already run here."""
    step: Step
    inp: Inputs
    bsa: dict | None
    ref: ReferenceForward
    feeds: dict
    kv_given: dict | None = None

    @property
    def label(self) -> str:
        return self.step.label

    def payload(self) -> dict:
        return dict(label=self.label, inp=replace(self.inp, golden={}), overrides=self.step.overrides, bsa=self.bsa,
                    record=self.ref.nat_names, proj=self.ref.nat_proj, feeds=self.feeds,
                    kv_given=self.kv_given, kv_from=None if self.kv_given is not None else self.step.cache_from)


def reference_jobs(setup: Setup, sides: Sides, inp: Inputs, pairs: list[LayerPair], report: dict, sp: int,
                   kv_cache_frames: int) -> list[Job]:
    """The forwards of one input, as the in-process runner plans them, with their
    reference halves run here."""
    jobs, ref_kv = [], {}
    for step in plan(inp, kv_cache_frames):
        kv = ref_kv.get(step.cache_from)
        with bsa_for(setup, sides, inp.bsa, report, T=step.T, num_cond_latents=step.num_cond_latents,
                     continuation=step.continuation, extra_notes=[bsa_note(sp)]) as bsa:
            ref = reference_forward(setup, sides, inp, pairs, kv=kv, overrides=step.overrides)
        ref_kv[step.label] = ref.kv
        if not step.returns_cache:
            ref.kv = None
        layer = setup.mode == "layer"
        feeds = {k: v.cpu() for k, v in ref.feeds(pairs, layer).items()}
        job = Job(step, inp, bsa, ref, feeds)
        if layer and kv is not None:
            job.kv_given = {i: (k.cpu(), v.cpu()) for i, (k, v) in kv.items()}
        jobs.append(job)
    return jobs


def job_rows(job: Job, pairs: list[LayerPair], result: dict, label: str) -> Rows:
    """A run's result for one job as rows (case ``<job>:<run>``)."""
    res = result["jobs"][job.label]
    rows = to_rows(f"{job.label}:{label}", pairs, job.ref, res["acts"], res["kv"])
    rows.settings = step_settings(job.step, job.bsa)
    return rows


def launch(setup: Setup, work: Path, payloads: list[dict], conv, *, sp: int, start: str, timeout: float,
           threads: dict) -> dict[str, dict]:
    """The 1-process baseline, then the ``sp`` ranks, each running ``payloads`` on the
    native model built from the converted folder (``conv``: converted LoRAs) ->
    outcomes by run label (``1proc``, ``rank<r>``)."""
    work.mkdir()
    torch.save({"jobs": payloads}, work / "payload.pt")
    spec = dict(dir=str(work), payload=str(work / "payload.pt"), converted=str(Path(setup.converted).resolve()),
                dtype=str(setup.dtype).replace("torch.", ""), device=setup.device, loras=conv,
                threads=threads, repeats=REPEATS, fixes=fixes.active(),   # spawned ranks install them
                init={"baseline": str(work / "init-baseline"), "sp": str(work / "init-sp")})
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    launcher = Launcher(work, work / "spec.json", start, timeout)
    outcomes = {"1proc": launcher.run("baseline", 1)[0]}
    if start == "fork" and outcomes["1proc"]["ok"]:
        _time_here(spec, payloads, setup.device, threads["baseline"], outcomes["1proc"]["result"])
    outcomes.update({f"rank{o['rank']}": o for o in launcher.run("sp", sp)})
    return outcomes


def _time_here(spec: dict, payloads: list[dict], device: str, threads: int, result: dict) -> None:
    """Fork start: the baseline's forward times come from the same model run again in
    this process, with all cores (a forked process's OpenMP runs them slower, see
    ``check``); its activations, attention calls and memory from its own process."""
    from .sp_worker import native_work
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        here = native_work(spec, payloads, device, 1, {})
    finally:
        torch.set_num_threads(prev)
    for label, job in here["jobs"].items():
        result["jobs"][label]["ms"] = job["ms"]
    result["timed_in"] = "the launching process"


def run_order(outcomes: dict[str, dict]) -> list[str]:
    """The baseline, the ranks that finished, then the failed ones in the order they failed."""
    failed = [label for label, o in outcomes.items() if label != "1proc" and not o["ok"]]
    failed.sort(key=lambda label: outcomes[label]["error"]["time"])
    return ["1proc"] + [label for label, o in outcomes.items() if label != "1proc" and o["ok"]] + failed


def failure(label: str, err: dict) -> str:
    if err["type"] in ("Timeout", "Stopped", "Exited"):
        return f"{label}: {err['message']}"
    return f"{label} raised {err['type']}: {err['message']}"


def failed_in(err: dict, job_label: str, first_label: str) -> bool:
    """Did the run that reported ``err`` fail in this job (else in another of its jobs)?"""
    return (err.get("job") or first_label) == job_label


def ref_name(pairs, native: str | None) -> str | None:
    """The reference layer name of the native module a rank failed in."""
    if not native:
        return None
    if native.endswith(".self_attn.to_out"):
        native = native[: -len(".to_out")]
    return next((p.name for p in pairs if p.native == native), None)
