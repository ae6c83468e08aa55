"""The report schema, in one place (its renderings: parity/render.py).

A report is a plain dict:

    {"schema": 1, "kind": "parity" | "golden-check" | "gate",
     "title": str, "mode": "e2e" | "layer" | "blocks" | None,
     "passed": bool, "first_divergent": <original module name> | None,
     "policy": {"version", "path", "limits"},
     "environment": {...}, "cases": [{"case", "passed", "first_divergent", "settings"}],
     "layers": [{"name", "native_name", "case", <metrics>, "passed", "failures"}],  # run order (parity/rows.py)
     "notes": [str],
     "compares": str,                      # e2e / layer / blocks: what the rows compare (also the first note)
     "timing": [{"case", "dit_calls", "reference_ms_per_dit_call", "native_ms_per_dit_call",
                 "reference_ms_spread", "native_ms_spread", "first_call_ms",
                 "loop_dit_s",                   # each side's DiT calls in the loop, summed (first call included)
                 "native_over_reference"}],      # sampling mode only; medians after the first (warm-up) call
     "known_differences": [{"id", "title", "why", "fastvideo_code", "isolate", "fix", "cases"}],
     "unexplained": [case], "known_catalogue": path,  # parity/known.py; cases[i].known_difference: the id
     "expected": {"ids", "passed", "message"},        # parity --expect only
     "timeouts": [{"case", "run", "message"}],        # --sp runs that ran out of time
     "sp": {...},                                                                # --sp N only
     "frames": [{"case", "pipeline", "shape", "psnr_db", "max_abs",               # --component pipeline
                 "stock": {"psnr_db", "max_abs", "seconds", "steps": {row: rel_l2}}}],  # with --fixes; not judged
     "pictures": [{"kind": "frames" | "clip" | "steps", "case", "file", ...}]}   # written with --report DIR

``pictures`` (parity/pictures.py; files under ``DIR/pictures/``, linked by report.md,
embedded in report.html): ``kind: "frames"`` (``--component pipeline``): a PNG grid,
a row per decoded frame (``frames``: their indices of ``frame_count``), ``columns``
(``original``, then per FastVideo run its frames and ``|<run> - original|``), the
difference's ``amplification`` (``white``: the difference drawn white, 1/amplification),
``runs`` [{``label``, ``psnr_db``, ``max_abs``}] (with ``--fixes``: ``FastVideo stock``
and ``FastVideo fixed``), ``headers`` (each column's header lines), ``frame_size`` [H, W],
``size`` [H, W] of the PNG; ``kind: "clip"`` (the same run): the frames played in time,
an animated GIF (``file``) whose top row is ``columns`` (``original`` and each run) with
each run's difference (``differences``) below it, on one ``amplification``; ``frames``
(indices of ``frame_count``), ``fps``, ``size`` [H, W] of a clip frame; ``mp4``: the same
clip as MP4, or null with ``mp4_note`` saying why (imageio's ffmpeg plugin missing);
``kind: "steps"`` (every case with ``step.<i>.<kind>`` rows: sampling mode, the
pipeline): an SVG of ``metric`` (``rel_l2``) per step, one curve per row kind in
``rows``, the policy's ``limit`` dashed; ``stock``: whether the stock run's curves
(``frames[i].stock.steps``) are drawn beside them, dotted. The files' bytes travel in the report dict under
``attachments`` {file: bytes} until ``render.write_reports`` writes them; report.json
never holds them.

``sp`` (``parity --sp N``, parity/sp.py and parity/sp_stats.py; cases are ``<case>:1proc`` for the
one-process baseline and ``<case>:rank<r>`` per rank): ``world_size``, ``backend``
(gloo | nccl), ``start`` (fork | spawn), ``device``, ``timeout_s``, ``cores``,
``threads`` ({baseline, rank}: torch threads per process), ``baseline`` (the same
native model alone in one process) and
``ranks`` [{``rank``, ``ok``, ``error`` (when not ok), ``forward_ms`` (sum over the
case's forwards of the median wall time of each; ``timed_in``: its own process, or for a
forked baseline the launching process), ``peak_memory_mib`` (the peak above
what the process held before it built the model), ``memory_kind`` (peak RSS
(getrusage) | cuda max_memory_allocated),
``attention_calls``, ``attention`` ({kind: {calls, work, batch, heads, q_len,
k_len, head_dim, tokens_in}}, kinds ``self_attn.distributed`` / ``.sdpa`` /
``.kv_cache`` / ``.bsa``, ``cross_attn``), ``attention_work`` (sum of
B*heads*Sq*Sk*head_dim), ``attention_work_ratio`` (/ baseline's),
``attention_work_ratio_by_kind``}], ``attention_work_ratio`` (the largest rank's),
``attention_work_ratio_by_kind``, ``speedup`` (baseline ms / slowest rank ms),
``memory_ratio`` (largest rank's memory above start / baseline's),
``every_rank_whole_sequence`` (no rank did less attention work than one process),
``finding`` (a sentence when it holds; also in ``notes``).

In sampling mode a "layer" is a row of the denoising loop (``timesteps``,
``sigmas``, ``step.<i>.dit_out``, ..., ``output.latents``; recorded by parity/loops.py, ordered by parity/rows.py),
in loop order.
"""
from __future__ import annotations

import math
import platform

SCHEMA_VERSION = 1


def environment(device: str = "cpu", dtype: str = "float32", attention: str = "sdpa") -> dict:
    import torch
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": str(device), "dtype": str(dtype), "attention_backend": attention}
    try:
        import importlib.metadata as md
        env["fastvideo"] = md.version("fastvideo")
    except Exception:
        env["fastvideo"] = None
    from fixes.series import identity
    env.update(identity())      # which FastVideo ran: its package's path and version, the patches it holds
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        env["device_name"] = platform.processor() or platform.machine()
    from longcat_convert import __version__
    env["longcat_convert"] = __version__
    return env


def start(kind: str, title: str, *, mode: str | None, policy, dtype, device, attention: str = "sdpa",
          **env_extra) -> dict:
    """A new report: the one place a report begins (its environment, its policy limits)."""
    from .policy import dtype_name
    env = environment(str(device), dtype_name(dtype), attention)
    env.update({k: str(v) for k, v in env_extra.items()})
    return new_report(kind, title, mode=mode, policy=policy, dtype=dtype, device=str(device), env=env)


def new_report(kind: str, title: str, *, mode: str | None, policy, dtype, device: str,
               env: dict) -> dict:
    return {"schema": SCHEMA_VERSION, "kind": kind, "title": title, "mode": mode,
            "passed": False, "first_divergent": None,
            "policy": {"version": policy.version, "path": policy.path,
                       "limits": policy.limits(dtype, device, "*")},
            "environment": env, "cases": [], "layers": [], "notes": []}


def add_layer(report: dict, *, name: str, metrics: dict, passed: bool, failures=(),
              native_name: str | None = None, case: str | None = None, precision: dict | None = None,
              margin: dict | None = None) -> dict:
    """One judged row. ``precision``: the dtype whose policy judged it and why
    (parity/precision.py); ``margin``: its binding limit and value / limit."""
    row = {"name": name, "native_name": native_name, "case": case}
    row.update({k: _clean(v) for k, v in metrics.items()})
    row["passed"] = bool(passed)
    row["failures"] = list(failures)
    if precision is not None:
        row["precision"] = precision
    if margin is not None:
        row["margin"] = {"limit": margin["limit"], "ratio": _clean(float(margin["ratio"]))}
    report["layers"].append(row)
    return row


def attach(report: dict, entry: dict, data: bytes | dict[str, bytes]) -> None:
    """A picture of the report: its entry in ``pictures`` (``entry["file"]``, relative to
    the report folder) and its bytes, or {file: bytes} when it has several files (a clip's
    GIF and MP4), written by ``render.write_reports``."""
    report.setdefault("pictures", []).append(entry)
    report.setdefault("attachments", {}).update(data if isinstance(data, dict) else {entry["file"]: data})


def describe_case(report: dict, case: str, **settings) -> None:
    """Declare a case with the settings it runs with (``cases[i].settings``): what a
    reader needs to reproduce it, and what known differences are matched against."""
    entry = next((c for c in report["cases"] if c["case"] == case), None)
    if entry is None:
        report["cases"].append({"case": case, "settings": settings})
    else:
        entry.setdefault("settings", {}).update(settings)


def finalize(report: dict) -> dict:
    """Set per-case and overall pass/fail and the first divergent layer (forward order)."""
    cases: dict[str | None, dict] = {}
    for row in report["layers"]:
        c = cases.setdefault(row.get("case"), {"case": row.get("case"), "passed": True, "first_divergent": None})
        if not row["passed"] and c["passed"]:
            c["passed"], c["first_divergent"] = False, row["name"]
    for c in report["cases"]:                # declared up front (describe_case): results filled in;
        c.update(cases.pop(c["case"], {"passed": False, "first_divergent": None}))   # nothing compared fails
    report["cases"] += list(cases.values())
    report["passed"] = bool(report["layers"]) and all(c["passed"] for c in report["cases"])
    first = next((c["first_divergent"] for c in report["cases"] if not c["passed"]), None)
    report["first_divergent"] = first
    return report


def _clean(v):
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)  # JSON has no inf/nan; keep them readable
    return v
