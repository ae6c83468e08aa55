"""The work each process of a sequence-parallel run did, and the report's ``sp``
section (its schema: parity/report.py): attention calls and work per kind,
forward time, peak memory, against the one-process baseline."""
from __future__ import annotations

import statistics


def cp_split_hw(sp: int) -> list[int]:
    """The (H, W) split FastVideo's LongCat self-attention computes for BSA under SP
    (the factor pair of ``sp`` closest to square, smaller first)."""
    pairs = [[i, sp // i] for i in range(1, int(sp ** 0.5) + 1) if sp % i == 0]
    return min(pairs, key=lambda x: abs(x[0] - x[1]))


def _by_kind(calls: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for c in calls:
        k = out.setdefault(c["kind"], {"calls": 0, "work": 0})
        k["calls"] += 1
        k["work"] += c["work"]
        for f in ("batch", "heads", "q_len", "k_len", "head_dim", "tokens_in", "latent_shape_q"):
            if f in c:
                vals = k.setdefault(f, [])
                if c[f] not in vals:
                    vals.append(c[f])
    return out


def _run_stats(results: list[dict]) -> dict:
    """One run (the baseline, or one rank) over every launch: forward ms (sum over its
    forwards of the median of each), peak memory, attention calls and work."""
    jobs = [j for r in results for j in r["jobs"].values()]
    calls = [c for j in jobs for c in j["attention"]]
    mem = [r["memory"] for r in results]
    return {"forward_ms": sum(statistics.median(j["ms"]) for j in jobs),
            "timed_in": results[0].get("timed_in", "its own process"),
            "forwards": len(jobs),
            "threads": results[0]["threads"],
            "peak_memory_mib": round(max(m["peak_mib"] - m["start_mib"] for m in mem), 1),
            "memory_kind": mem[0]["kind"],
            "attention_calls": len(calls),
            "attention": _by_kind(calls),
            "attention_work": sum(c["work"] for c in calls)}


def summarize(runs: dict[str, list[dict]], *, sp: int, start: str, backend: str, device: str, timeout: float,
              threads: dict, cores: int) -> dict:
    """The report's ``sp`` section (see parity/report.py)."""
    out = {"world_size": sp, "backend": backend, "start": start, "device": device, "timeout_s": timeout,
           "cores": cores, "threads": {"baseline": threads["baseline"], "rank": threads["sp"]},
           "baseline": None, "ranks": [], "attention_work_ratio": None, "attention_work_ratio_by_kind": {},
           "speedup": None, "memory_ratio": None, "every_rank_whole_sequence": None, "finding": None}
    base_o = runs.get("1proc", [])
    base = _run_stats([o["result"] for o in base_o]) if base_o and all(o["ok"] for o in base_o) else None
    out["baseline"] = base if base else {"error": _first_error(base_o)}
    ranks_ok = True
    for r in range(sp):
        os_ = runs.get(f"rank{r}", [])
        if not os_ or not all(o["ok"] for o in os_):
            ranks_ok = False
            bad = {"rank": r, "ok": False, "error": _first_error(os_)}
            calls = [c for o in os_ if not o["ok"] for c in o["error"].get("attention", [])]
            if calls:     # what it did before it failed
                bad["attention_before_failure"] = _by_kind(calls)
            out["ranks"].append(bad)
            continue
        st = _run_stats([o["result"] for o in os_])
        st = {"rank": r, "ok": True, **st}
        if base and base["attention_work"]:
            st["attention_work_ratio"] = st["attention_work"] / base["attention_work"]
            st["attention_work_ratio_by_kind"] = {
                k: v["work"] / base["attention"][k]["work"] if k in base["attention"] and base["attention"][k]["work"]
                else None for k, v in st["attention"].items()}
        out["ranks"].append(st)
    if not (base and ranks_ok):
        return out
    ranks = out["ranks"]
    out["attention_work_ratio"] = max(r.get("attention_work_ratio") or 0.0 for r in ranks)
    kinds = sorted({k for r in ranks for k in r.get("attention_work_ratio_by_kind", {})})
    out["attention_work_ratio_by_kind"] = {
        k: max((r["attention_work_ratio_by_kind"].get(k) or 0.0) for r in ranks) for k in kinds}
    slowest = max(r["forward_ms"] for r in ranks)
    out["speedup"] = base["forward_ms"] / slowest if slowest > 0 else None
    if base["peak_memory_mib"] > 0:
        out["memory_ratio"] = max(r["peak_memory_mib"] for r in ranks) / base["peak_memory_mib"]
    whole = bool(base["attention_work"]) and all(
        r["attention_work"] >= base["attention_work"] * (1 - 1e-9) for r in ranks)
    out["every_rank_whole_sequence"] = whole
    if whole:
        out["finding"] = _finding(out, base, ranks, sp)
    return out


def _first_error(outcomes: list[dict]) -> str:
    for o in outcomes:
        if not o["ok"]:
            e = o["error"]
            return f"{e['type']}: {e['message']}"
    return "did not run"


def _fmt_vals(v) -> str:
    return "/".join(str(x) for x in v) if isinstance(v, list) else str(v)


def _finding(out: dict, base: dict, ranks: list[dict], sp: int) -> str:
    dist = ranks[0]["attention"].get("self_attn.distributed")
    by_kind = ", ".join(f"{k} {v:.2f}x" for k, v in out["attention_work_ratio_by_kind"].items())
    head = "FastVideo's native LongCat DiT does not shard the sequence under sequence parallelism: every rank holds all the tokens; "
    if dist and "tokens_in" in dist:
        head += (f"DistributedAttention receives the same {_fmt_vals(dist['tokens_in'])} tokens on each of the {sp} ranks "
                 f"and its all-to-all gives every rank {_fmt_vals(dist['q_len'])} tokens (each token {sp} times; the "
                 f"copies cancel in the softmax) with {_fmt_vals(dist['heads'])} of "
                 f"{_fmt_vals(base['attention']['self_attn.distributed']['heads'])} heads; every other attention runs "
                 f"whole on every rank. ")
    else:
        head += "every attention of the forward runs whole on every rank (no all-to-all on this path). "
    speed = f"{out['speedup']:.2f}x" if out["speedup"] is not None else "n/a"
    return (head + f"No rank does less attention work than one process: {out['attention_work_ratio']:.2f}x per rank "
            f"({by_kind}); speedup {speed} (1-process ms / slowest rank ms).")
