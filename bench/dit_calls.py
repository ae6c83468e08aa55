"""One DiT call of each side, interleaved in ONE process (``bench --sections fixes``): the
reference DiT, stock FastVideo's ``LongCatTransformer3DModel`` and the patched copy's (its
``models/dits/longcat.py``, the file every LongCat patch of the series edits, loaded beside
the stock module under another name), on the same weights and the same input. What the
machine does to a process (frequency, a neighbour's load, where memory lands) then falls
on the three alike, so their ratios resolve a few percent where separate processes do not.

    python -m bench.dit_calls SOURCE CONVERTED PATCHED_COPY --shape T,H,W --reps N --json OUT

Writes {"reference": [ms...], "stock": [...], "patched": [...]}: per rep, the median of
``--calls`` forwards of each side, the sides taking turns."""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path


def patched_model_class(copy: Path):
    """``LongCatTransformer3DModel`` of the patched copy's longcat.py, as a module of its own."""
    path = Path(copy) / "fastvideo" / "models" / "dits" / "longcat.py"
    spec = importlib.util.spec_from_file_location("lcc_bench_patched_longcat", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.LongCatTransformer3DModel


def _timed(fn, calls: int) -> float:
    ms = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ms)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dit_calls")
    ap.add_argument("source")
    ap.add_argument("converted")
    ap.add_argument("copy", type=Path)
    ap.add_argument("--shape", default="2,16,16")
    ap.add_argument("--text-len", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args(argv)

    from parity import native as nat
    from parity import refside
    nat.ensure_runtime("cpu")
    import torch
    from longcat_convert.shards import ShardedReader

    ref = refside.load_reference(refside.open_source(a.source), dtype=torch.float32, device="cpu")
    tdir = nat.transformer_dir(a.converted)
    cfg = nat.read_native_config(tdir)
    stock = nat.build_native_model(cfg, dtype=torch.float32)
    nat.load_state(stock, ShardedReader(tdir))
    patched = nat.build_native_model(cfg, dtype=torch.float32, model_cls=patched_model_class(a.copy))
    patched.load_state_dict(stock.state_dict())

    T, H, W = (int(x) for x in a.shape.split(","))
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, cfg["in_channels"], T, H, W, generator=gen)
    text = torch.randn(1, 1, a.text_len, cfg["caption_channels"], generator=gen)
    mask = torch.ones(1, a.text_len, dtype=torch.long)
    t = torch.tensor([500.0])

    def run_ref():
        with torch.no_grad():
            ref(latents, t, text, encoder_attention_mask=mask)

    def run_native(model):
        def go():
            with torch.no_grad(), nat.forward_context():
                model(latents, text[:, 0], t, encoder_attention_mask=mask)
        return go

    sides = {"reference": run_ref, "stock": run_native(stock), "patched": run_native(patched)}
    for fn in sides.values():           # warm up: first-call allocations and lazy caches
        fn()
    out = {name: [] for name in sides}
    for _ in range(a.reps):
        for name, fn in sides.items():
            out[name].append(_timed(fn, a.calls))
    a.json.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
