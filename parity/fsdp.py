"""FastVideo as its users run it, on a CPU: FSDP inference over N gloo processes, and the
one-process rows that go through FastVideo's FSDP code (``text_encoder_cpu_offload``, the
"FastVideo defaults" row).

Every run is FastVideo's own pipeline (``parity.features.run_fastvideo``:
``FastVideoArgs.from_kwargs`` -> ``build_pipeline`` -> ``pipeline.forward``, rows recorded by
``capture.LoopObserver``) with one run-time adjustment, ``parity.native.fsdp_mesh_on_cpu``
(``FSDP_MESH_ON_CPU``): FastVideo's FSDP device meshes are made with device type "cpu".

- ``run_fsdp``: ``use_fsdp_inference=True`` in N processes, started, watched and stopped like
  ``parity --sp N`` (parity/launcher.py; each rank is parity/sp_worker.py running
  ``rank_work``). FastVideo is handed ``num_gpus=N`` and derives the ``hsdp_*`` fields itself
  (``hsdp_replicate_dim`` 1, ``hsdp_shard_dim`` N, fastvideo_args.py check_fastvideo_args);
  ``sp_size`` is 1, so the run measures FSDP alone (FastVideo's own default, sp_size =
  num_gpus, would add sequence parallelism, whose pipeline warm-up allocates on "cuda":
  distributed/communication_op.py warmup_sequence_parallel_communication; SP is ``parity --sp``).
- ``run_single``: one process with the adjustment (the offload rows).
- ``fastvideo_defaults``: the offload flags and ``pin_cpu_memory`` as
  ``VideoGenerator.from_pretrained`` hands them to FastVideoArgs (read, not written down here).

Each rank reports its rows, what FastVideo built (parameter dtypes, the FSDP wrapping read
from the objects: FSDPModule count, mesh, MixedPrecisionPolicy, reshard), where the weights
sat and in which dtype while a wrapped block computed, its wall time and peak RSS, and its
error. A rank that raises, hangs past the timeout or is interrupted ends every rank (the
launcher's rules, as for ``--sp``); the work folder is a temporary one, removed whatever happens.

Test-only fault injection (tests/test_fsdp.py): ``LCC_FSDP_TEST_FAULT=raise:R`` makes rank R
raise on entering its first FSDP-wrapped block; ``hang:R`` makes it sleep there.

    python -m parity.fsdp CONVERTED [--world 2] [--timeout S] [--dtype fp32] [--fixes NAMES]
                          [--compare] [--report FILE]

runs it on the tiny bundle's matrix case and prints (or writes) the outcome as JSON: exit 0,
1 when a rank raised or timed out (or ``--compare`` finds a row beyond the policy), 2 on bad
input, 130 when interrupted (the ranks stopped, no report written).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import fixes
from longcat_convert.errors import BadInput

from . import native as nat
from .launcher import Launcher, cpu_cores

GROUP = "fsdp"
FAULT_ENV = "LCC_FSDP_TEST_FAULT"
DEFAULT_TIMEOUT = 600.0
START_METHODS = ("auto", "fork", "spawn")
OFFLOAD_FLAGS = ("dit_cpu_offload", "dit_layerwise_offload", "text_encoder_cpu_offload", "vae_cpu_offload",
                 "image_encoder_cpu_offload", "pin_cpu_memory")
DERIVED = ("num_gpus", "sp_size", "tp_size", "hsdp_replicate_dim", "hsdp_shard_dim", "use_fsdp_inference",
           "dit_cpu_offload", "dit_layerwise_offload", "text_encoder_cpu_offload", "pin_cpu_memory")
SP_NOTE = ("sp_size 1: FastVideo's default (sp_size = num_gpus) adds sequence parallelism, whose pipeline warm-up "
           "allocates on \"cuda\" (distributed/communication_op.py warmup_sequence_parallel_communication); "
           "SP is checked by parity --sp")


def fsdp_kwargs(world_size: int) -> dict:
    """The FastVideoArgs keywords of the FSDP run; FastVideo derives the hsdp_* fields."""
    return {"use_fsdp_inference": True, "num_gpus": int(world_size), "sp_size": 1}


def fastvideo_defaults(converted) -> dict:
    """The offload flags and pin_cpu_memory as ``VideoGenerator.from_pretrained(converted)``
    gets them: FastVideo's own translation (api/compat.py legacy_from_pretrained_to_config ->
    generator_config_to_fastvideo_args) with no keyword given, read from the FastVideoArgs."""
    nat.ensure_runtime()
    from fastvideo.api.compat import generator_config_to_fastvideo_args, legacy_from_pretrained_to_config
    args = generator_config_to_fastvideo_args(legacy_from_pretrained_to_config(str(converted), {}))
    return {k: getattr(args, k) for k in OFFLOAD_FLAGS}


# --------------------------------------------------------------------------- what FastVideo built

def _dtype(d) -> str | None:
    return None if d is None else str(d).replace("torch.", "")


def fsdp_wrapping(module) -> dict | None:
    """The FSDP wrapping of one built module, read from the objects: how many FSDPModule,
    which classes, the device mesh, the MixedPrecisionPolicy, reshard after forward, offload,
    and the parameters as stored between calls (dtype, local share of the elements)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    wrapped = [m for m in module.modules() if isinstance(m, FSDPModule)]
    if not wrapped:
        return None
    classes: dict = {}
    for m in wrapped:
        classes[type(m).__name__] = classes.get(type(m).__name__, 0) + 1
    out: dict = {"fsdp_modules": len(wrapped), "classes": classes}
    try:     # torch's FSDP2 state (torch 2.14): the param group holds the policy and the mesh
        for m in wrapped:
            group = getattr(m._get_fsdp_state(), "_fsdp_param_group", None)
            if group is None:
                continue
            mp, mesh = group.mp_policy, group.mesh_info.mesh
            out.update(mesh_shape=list(mesh.shape), mesh_dim_names=list(mesh.mesh_dim_names or ()),
                       mesh_device_type=mesh.device_type, param_dtype=_dtype(mp.param_dtype),
                       reduce_dtype=_dtype(mp.reduce_dtype), output_dtype=_dtype(mp.output_dtype),
                       cast_forward_inputs=bool(mp.cast_forward_inputs),
                       reshard_after_forward=group.post_forward_mesh_info is not None,
                       offload_policy=type(group.offload_policy).__name__)
            break
    except AttributeError as e:
        out["policy_unreadable"] = f"this torch's FSDP state differs: {e}"
    stored: dict = {}
    local = full = 0
    for p in module.parameters():
        d = _dtype(p.dtype)
        stored[d] = stored.get(d, 0) + p.numel()
        if isinstance(p, DTensor):
            local += p.to_local().numel()
            full += p.numel()
    out["stored_param_dtypes"] = stored
    if full:
        out["local_share_of_sharded_params"] = round(local / full, 4)
    return out


class StepWatch:
    """For the scope (global module hooks, removed after): every FSDP-wrapped module that holds
    no other, at its first call, records how its parameters are stored between calls (sharded
    DTensor, dtype, device) and what they are while it computes (after FSDP's unshard: dtype,
    device). ``fault``: ("raise" | "hang", rank) planted at the first such call."""

    def __init__(self, fault: tuple[str, int] | None = None):
        self.fault = fault
        self.seen: dict = {}
        self._handles: list = []

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        self._handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    @staticmethod
    def _leaf_fsdp(m) -> bool:
        from torch.distributed.fsdp import FSDPModule
        return isinstance(m, FSDPModule) and not any(isinstance(s, FSDPModule) for s in list(m.modules())[1:])

    @staticmethod
    def _params(m) -> dict:
        from torch.distributed.tensor import DTensor
        ps = list(m.parameters())
        dts: dict = {}
        for p in ps:
            dts[_dtype(p.dtype)] = dts.get(_dtype(p.dtype), 0) + p.numel()
        out = {"dtypes": dts, "devices": sorted({str(p.device) for p in ps})}
        sharded = [p for p in ps if isinstance(p, DTensor)]
        if sharded:
            out["sharded"] = f"{len(sharded)}/{len(ps)} DTensor, placements {sharded[0].placements}"
            out["local_elements"] = sum(p.to_local().numel() for p in sharded)
            out["elements"] = sum(p.numel() for p in sharded)
        else:
            out["sharded"] = f"0/{len(ps)} DTensor (whole parameters)"
        return out

    def _pre(self, m, _args):
        if not self._leaf_fsdp(m):
            return
        name = type(m).__name__
        first = name not in self.seen
        if first:
            self.seen[name] = {"between_calls": self._params(m)}
        if self.fault is not None and first and len(self.seen) == 1:
            what, rank = self.fault
            if what == "hang":
                time.sleep(3600)
            raise RuntimeError(f"planted fault on rank {rank} ({FAULT_ENV}={what}:{rank})")

    def _post(self, m, _args, _out):
        if not self._leaf_fsdp(m):
            return
        entry = self.seen.get(type(m).__name__)
        if entry is not None and "while_computing" not in entry:
            entry["while_computing"] = self._params(m)


def _observed(converted, meta, *, kwargs, sampling, dtype, device, fault=None):
    """``run_fastvideo`` inside the adjustment and a StepWatch -> (Run with its pipe released, extra)."""
    from .pipeline import run_fastvideo
    with nat.fsdp_mesh_on_cpu(device) as adjusted, StepWatch(fault) as watch:
        run = run_fastvideo(Path(converted), meta, kwargs=dict(kwargs or {}), sampling=dict(sampling or {}),
                            dtype=dtype, device=device, keep_pipe=True)
    extra: dict = {"run_time_adjustment": nat.FSDP_MESH_ON_CPU if adjusted else None}
    pipe = run.pipe
    if pipe is not None:
        wrapping = {}
        for name in ("transformer", "text_encoder", "vae"):
            m = pipe.modules.get(name)
            if isinstance(m, torch.nn.Module):
                w = fsdp_wrapping(m)
                if w:
                    wrapping[name] = w
        extra["fsdp"] = wrapping
        args = getattr(pipe, "fastvideo_args", None)
        if args is not None:
            extra["fastvideo_args"] = {k: getattr(args, k, None) for k in DERIVED}
    extra["weights_in_fsdp_blocks"] = watch.seen
    run.pipe = None
    if extra.get("fsdp"):
        run.built["fsdp"] = extra["fsdp"]
    if watch.seen:
        run.built["weights_in_fsdp_blocks"] = watch.seen
    return run, extra


def run_single(converted_root, meta, *, kwargs: dict, sampling: dict | None = None, dtype=torch.float32,
               device="cpu"):
    """One process (the offload rows, the FastVideo-defaults row): ``run_fastvideo`` with the
    adjustment -> ``features.Run``; ``built`` gains ``fsdp`` (the wrapping read from the objects)
    and ``weights_in_fsdp_blocks``; ``built_extra`` names the adjustment."""
    run, extra = _observed(converted_root, meta, kwargs=kwargs, sampling=sampling, dtype=dtype, device=device)
    run.built_extra = {"run_time_adjustment": "fsdp-mesh-on-cpu"} if extra["run_time_adjustment"] else {}
    return run


# --------------------------------------------------------------------------- N processes

@dataclass
class FsdpRun:
    """The outcome of ``run_fsdp``: one entry per rank (``ok``, ``rows``, ``built``, ``fsdp``,
    ``weights_in_fsdp_blocks``, ``fastvideo_args``, ``wall_s``, ``peak_mib``, ``error``, ...),
    the rank fault if any (``raised`` | ``timeout`` | ``exited``) and the run's settings."""
    world_size: int
    start: str
    kwargs: dict
    ranks: list[dict] = field(default_factory=list)
    fault: dict | None = None
    wall_s: float = 0.0
    adjustment: str = nat.FSDP_MESH_ON_CPU
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.fault is None and all(r["ok"] for r in self.ranks)

    def as_run(self):
        """Rank 0 as a ``features.Run`` for the matrix (its rows; the slowest rank's wall time
        and the largest peak; the first error of any rank)."""
        from .pipeline import Run
        r0 = self.ranks[0] if self.ranks else {}
        run = Run(rows=dict(r0.get("rows") or {}), built=dict(r0.get("built") or {}),
                  wall_s=max((r.get("wall_s") or 0.0) for r in self.ranks) if self.ranks else 0.0,
                  peak_mib=max((r.get("peak_mib") or 0.0) for r in self.ranks) if self.ranks else None,
                  warnings=list(r0.get("warnings") or []))
        run.built["ranks"] = [{k: r.get(k) for k in ("rank", "ok", "wall_s", "peak_mib", "threads")}
                              for r in self.ranks]
        run.built_extra = {"run_time_adjustment": "fsdp-mesh-on-cpu", "world_size": self.world_size}
        err = first_error(self)
        if err is not None:
            run.error = err
            run.rows = {}
        return run

    def summary(self) -> dict:
        return {"world_size": self.world_size, "start": self.start, "kwargs": self.kwargs, "ok": self.ok,
                "fault": self.fault, "wall_s": self.wall_s, "adjustment": self.adjustment, "notes": self.notes,
                "ranks": [{k: v for k, v in r.items() if k != "rows"} | {"rows": sorted(r.get("rows") or {})}
                          for r in self.ranks]}


def first_error(res: FsdpRun) -> dict | None:
    """The error that ended the run: FastVideo's own (phase/type/message/where) from the rank
    that failed first, else the launcher's (timeout, stopped, exited)."""
    failed = [r for r in res.ranks if not r["ok"]]
    if not failed:
        return None
    failed.sort(key=lambda r: (r.get("launcher_error") or {}).get("time", float("inf")))
    own = next((r["error"] for r in failed if r.get("error") and r["error"].get("phase")), None)
    if own is not None:
        return own
    e = failed[0].get("launcher_error") or {}
    return {"phase": "ranks", "type": e.get("type", "Exited"), "message": e.get("message", ""),
            "where": f"rank {failed[0]['rank']}"}


def exit_code(res: FsdpRun) -> int:
    """As for ``parity --sp``: 1 when a rank raised, timed out or died, else 0 (an interrupted run
    never returns: KeyboardInterrupt propagates after every rank is stopped, 130)."""
    return 1 if res.fault is not None else 0


def findings(res: FsdpRun, dtype) -> dict:
    """The catalogue's FSDP finding as the report key it points at
    (``features_findings.fsdp_computes_in_bf16``): the transformer's MixedPrecisionPolicy,
    read from a rank, computes in a lower precision than the one asked. Absent when no rank
    got as far as FastVideo's FSDP wrapping."""
    for r in res.ranks:
        w = ((r.get("fsdp") or {}).get("transformer")) or {}
        if w.get("param_dtype"):
            asked = _dtype(dtype)
            lowered = torch.finfo(getattr(torch, w["param_dtype"])).bits < torch.finfo(dtype).bits
            return {"fsdp_computes_in_bf16": lowered and w["param_dtype"] == "bfloat16",
                    "fsdp_param_dtype": w["param_dtype"], "fsdp_asked": asked}
    return {}


def start_method(start: str, world: int, device: str) -> str:
    if start not in START_METHODS:
        raise BadInput(f"start {start!r}: one of {', '.join(START_METHODS)}")
    if str(device).startswith("cuda"):
        if start == "fork":
            raise BadInput("fork start: a CUDA context does not survive fork(); use spawn on CUDA")
        return "spawn"
    if start == "auto":      # as parity --sp: fork only where each rank runs one thread (parity/sp.py check)
        return "fork" if hasattr(os, "fork") and cpu_cores() // world <= 1 else "spawn"
    return start


def run_fsdp(converted_root, meta, *, kwargs: dict | None = None, sampling: dict | None = None,
             world_size: int = 2, dtype=torch.float32, device="cpu", timeout: float = DEFAULT_TIMEOUT,
             start: str = "auto") -> FsdpRun:
    """FastVideo's pipeline with ``use_fsdp_inference`` on ``world_size`` processes (gloo on a
    CPU), each running ``run_fastvideo`` with the adjustment -> FsdpRun. ``kwargs`` go over
    ``fsdp_kwargs(world_size)``. A rank that raises or outlives ``timeout`` ends all of them
    (``fault``); Ctrl-C / SIGTERM stops them all and propagates; nothing is left on disk."""
    if int(world_size) < 2:
        raise BadInput(f"FSDP world size {world_size}: at least 2 processes")
    if not timeout > 0:
        raise BadInput(f"timeout {timeout}: must be a positive number of seconds")
    device = str(device)
    start = start_method(start, int(world_size), device)
    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < world_size:
            raise BadInput(f"FSDP over {world_size} ranks on {device}: NCCL needs one GPU per rank; this machine has {n}")
    kw = {**fsdp_kwargs(world_size), **dict(kwargs or {})}
    res = FsdpRun(world_size=int(world_size), start=start, kwargs=kw)
    if kw.get("sp_size") == 1:
        res.notes.append(SP_NOTE)
    if start == "fork":
        nat.ensure_runtime(device)          # imported once here, inherited by every forked rank
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lcc-fsdp-") as tmp:
        work = Path(tmp)
        torch.save({"meta": meta, "kwargs": kw, "sampling": dict(sampling or {})}, work / "payload.pt")
        spec = dict(dir=str(work), payload=str(work / "payload.pt"), converted=str(Path(converted_root).resolve()),
                    dtype=str(dtype).replace("torch.", ""), device=device, fixes=fixes.active(),
                    # each rank at this run's thread count: FSDP and its one-process baseline then
                    # sum in the same order, so a verdict does not follow the thread count
                    threads={GROUP: torch.get_num_threads()}, sp_size=int(kw.get("sp_size") or 1),
                    init={GROUP: str(work / "init-fsdp")}, work="parity.fsdp:rank_work")
        (work / "spec.json").write_text(json.dumps(spec, indent=1))
        outcomes = Launcher(work, work / "spec.json", start, timeout).run(GROUP, int(world_size))
        for o in outcomes:
            res.ranks.append(_rank_entry(work, o))
    res.wall_s = round(time.perf_counter() - t0, 2)
    res.fault = _fault_of(res)
    return res


def _rank_entry(work: Path, o: dict) -> dict:
    if o["ok"]:
        return {"rank": o["rank"], "ok": True, **o["result"]}
    entry = {"rank": o["rank"], "ok": False, "launcher_error": {k: v for k, v in o["error"].items()
                                                                if k in ("type", "message", "time", "where")}}
    partial = work / f"{GROUP}-{o['rank']}.partial.pt"
    if partial.is_file():                    # what the rank ran before FastVideo raised in it
        entry.update(torch.load(partial, weights_only=False))
        entry["ok"] = False
    return entry


def _fault_of(res: FsdpRun) -> dict | None:
    failed = [r for r in res.ranks if not r["ok"]]
    if not failed:
        return None
    errs = [(r["rank"], r["launcher_error"]) for r in failed]
    timeouts = [rank for rank, e in errs if e.get("type") == "Timeout"]
    if timeouts:
        return {"kind": "timeout", "ranks": timeouts, "message": errs[0][1].get("message", "")}
    raised = sorted((e.get("time", float("inf")), r["rank"], r) for r in failed
                    if (e := r["launcher_error"]).get("type") not in ("Stopped", "Exited"))
    if raised:
        _, rank, r = raised[0]
        e, own = r["launcher_error"], r.get("error")
        what = (f"FastVideo raised {own['type']}: {own['message']} (at {own['where']}, {own['phase']})" if own
                else f"raised {e.get('type')}: {e.get('message')}")
        return {"kind": "raised", "rank": rank, "message": f"rank {rank}: {what}"}
    rank, e = errs[0]
    return {"kind": "exited", "rank": rank, "message": f"rank {rank}: {e.get('message')}"}


class RankFailed(RuntimeError):
    """FastVideo raised in this rank (its error is in the rank's partial result)."""


def rank_work(spec: dict, group: str, rank: int, world: int, state: dict) -> dict:
    """One rank (called by parity/sp_worker.py): FastVideo's runtime for ``world`` processes with
    sp_size from the spec, the run's fixes, then ``run_fastvideo`` under the adjustment. When
    FastVideo raises, what the rank ran is saved beside and the rank fails, so the launcher
    stops its peers (they would wait in a collective)."""
    device = spec["device"]
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        torch.cuda.set_device(device)
    nat.ensure_runtime(device, sp_size=int(spec.get("sp_size", 1)), init_file=spec["init"][group])
    if spec.get("fixes"):
        fixes.install(spec["fixes"])     # a forked rank already has them (install skips those)
    payload = torch.load(spec["payload"], weights_only=False)
    fault = None
    what, _, who = os.environ.get(FAULT_ENV, "").partition(":")
    if what in ("raise", "hang") and who == str(rank):
        fault = (what, rank)
    state["job"] = "pipeline"
    run, extra = _observed(spec["converted"], payload["meta"], kwargs=payload["kwargs"], sampling=payload["sampling"],
                           dtype=getattr(torch, spec["dtype"]), device=device, fault=fault)
    result = {"rows": run.rows, "built": run.built, "fsdp": extra.get("fsdp"),
              "weights_in_fsdp_blocks": extra.get("weights_in_fsdp_blocks"),
              "fastvideo_args": extra.get("fastvideo_args"), "wall_s": run.wall_s, "peak_mib": run.peak_mib,
              "error": run.error, "warnings": run.warnings, "threads": torch.get_num_threads(), "pid": os.getpid(),
              "world": world}
    if run.error:
        out = Path(spec["dir"])
        tmp = out / f"{group}-{rank}.partial.pt.tmp"
        torch.save(result, tmp)
        tmp.rename(out / f"{group}-{rank}.partial.pt")
        e = run.error
        raise RankFailed(f"{e['type']}: {e['message']} (at {e['where']}, {e['phase']})")
    return result


# --------------------------------------------------------------------------- judging and the command

def judge_rows(candidate: dict, baseline: dict, *, policy, dtype, device, names=("FSDP", "one process")) -> dict:
    """The one judge (parity/judge.py) on the rows both runs recorded -> verdict (exact /
    within_tolerance / diverges), the first row beyond the policy with its size, rows judged."""
    from . import report as R
    from .judge import judge
    common = [k for k in candidate if k in baseline]
    rep = R.start("fsdp", "FSDP against one process", mode=None, policy=policy, dtype=dtype, device=device)
    judge(rep, None, {k: candidate[k] for k in common}, {k: baseline[k] for k in common}, policy=policy,
          dtype=dtype, device=device, names=names, rows=common)
    first = next((r for r in rep["layers"] if not r["passed"]), None)
    exact = bool(common) and all(candidate[k].shape == baseline[k].shape and torch.equal(candidate[k], baseline[k])
                                 for k in common)
    out = {"verdict": "exact" if exact else ("within_tolerance" if first is None else "diverges"),
           "rows": len(common)}
    if first is not None:
        out.update(first_divergent=first["name"], rel_l2=first.get("rel_l2"), max_abs=first.get("max_abs"),
                   failures=first["failures"][:2])
    return out


def matrix_meta() -> dict:
    """The feature matrix's case: the tiny bundle's generated pipeline case, shortened."""
    from .cases import generated_component
    from .pipeline import matrix_case
    return matrix_case(generated_component("pipeline", 42)).meta


def main(argv=None) -> int:
    import argparse
    from longcat_convert.errors import sigterm_as_interrupt
    p = argparse.ArgumentParser(prog="python -m parity.fsdp", description=__doc__.split("\n\n")[0])
    p.add_argument("converted")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    p.add_argument("--start", default="auto")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--fixes", default=None)
    p.add_argument("--compare", action="store_true", help="also run one process without FSDP and judge")
    p.add_argument("--report", default=None, help="write the outcome (JSON) here")
    a = p.parse_args(argv)
    from longcat_convert.dtypes import torch_dtype
    dtype = torch_dtype(a.dtype)
    try:
        with sigterm_as_interrupt():
            from .components import pipeline_root
            root = pipeline_root(Path(a.converted))
            meta = matrix_meta()
            with nat.fixes_installed(a.fixes, "cpu"):
                res = run_fsdp(root, meta, world_size=a.world, dtype=dtype, timeout=a.timeout, start=a.start)
                out = res.summary()
                out["findings"] = findings(res, dtype)
                if a.compare and res.ok:
                    from .policy import Policy
                    plain = run_single(root, meta, kwargs={}, dtype=dtype)
                    out["plain"] = {"wall_s": plain.wall_s, "peak_mib": plain.peak_mib, "error": plain.error}
                    out["against_plain"] = [judge_rows(r["rows"], plain.rows, policy=Policy.load(None), dtype=dtype,
                                                       device="cpu", names=(f"FSDP rank {r['rank']}", "one process"))
                                            for r in res.ranks]
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: aborted by Ctrl-C or SIGTERM (every rank stopped)", file=sys.stderr)
        return 130
    text = json.dumps(out, indent=1, default=str)
    if a.report:
        tmp = Path(a.report + ".tmp")
        tmp.write_text(text)
        tmp.rename(a.report)
    else:
        print(text)
    if exit_code(res):
        return 1
    if any(c["verdict"] == "diverges" for c in out.get("against_plain", [])):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
