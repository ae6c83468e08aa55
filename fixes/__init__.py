"""Our corrections of FastVideo 0.2.1's LongCat port, one per known difference, in two forms.

Each fix is a small unit named after the finding it closes (the ids of
parity/known_differences.json).

At run time, for users on stock FastVideo: installed on FastVideo's real classes for a
scope and removed afterwards, so stock and fixed FastVideo can run side by side in one
process:

    from fixes import installed
    with installed("all"):                 # or "schedule-reshift,bf16-dit-input"
        pipe = build_pipeline(args)
        pipe.forward(batch, args)

``install(names)`` does the same without a scope and returns the function that undoes
it. Every fix patches through fixes/patching.py (layers that stack and come off in any
order; a fix installed twice is one layer): it wraps FastVideo methods, or layers over a
name a FastVideo module looks up, and leaves everything it does not change to FastVideo's
own code. What a fix computes itself is our code, named in its module: the original's
schedule (fixes/schedule_code.py), the masked text attention (fixes/varlen_text_code.py),
the encoder output kept as it is (text_padding.py), the token sharding and gathering under
sequence parallelism (sp_shard.py at run time; sp_shard_code.py, the helpers its upstream
patch inserts, which exchange heads for tokens inside self-attention instead). The BSA fixes compute nothing of their own: they hand
FastVideo's attention calls to FastVideo's BSA kernel. No fix copies FastVideo code.

Upstream, as a patch series (fixes/series.py): each fix's ``patch`` is its edit of
FastVideo's source (anchors: a function or class by name and the short expression
each edit replaces, and our replacement code; no FastVideo file, hunk or patch is stored
here). ``longcat-convert fixes export`` writes the series, ``fixes build`` a
patched copy of FastVideo. Run against a patched copy (``PYTHONPATH=COPY``),
``in_fastvideo()`` names the patches it holds, ``active()`` counts them as fixes in
force, and ``install`` leaves them alone (never a fix on top of its own patch).

docs/fixes.md describes each for upstream: what, why, and the evidence (the gate step
that proves it).
"""
from __future__ import annotations

import contextlib

from longcat_convert.errors import BadInput

from . import dit_dtype, kv_cache_flag, lora_cpu_copy, schedule
from . import bsa
from . import text_padding, varlen_text
from . import sp_shard
from . import fsdp_precision

# name -> module with ``install() -> restore``, in the order they are installed.
FIXES = {
    "schedule-reshift": schedule.RESHIFT,
    "use-distill-unread": schedule.DISTILL,
    "enhance-hf-unread": schedule.ENHANCE_HF,
    "bf16-dit-input": dit_dtype.FIX,
    "kv-cache-flag-unread": kv_cache_flag.FIX,
    "lora-unmerge-cpu": lora_cpu_copy.FIX,
    "varlen-text": varlen_text.FIX,
    "text-embeds-padding": text_padding.FIX,
    # before the BSA fixes: their layers on the longcat module's names sit over this one's
    # (a routed attention call reaches this fix's gathering flash_attn_bsa_3d)
    "sp-whole-sequence": sp_shard.FIX,
    "bsa-cond-split-dense": bsa.COND_SPLIT,
    "bsa-kv-cache-dense": bsa.KV_CACHE,
    "fsdp-bf16-params": fsdp_precision.FIX,
}


def parse(spec: str | None) -> list[str]:
    """``all`` | ``none`` | ``NAME,NAME,...`` -> the names, checked."""
    if spec is None or spec.strip() in ("", "none"):
        return []
    if spec.strip() == "all":
        return list(FIXES)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIXES]
    if unknown:
        raise BadInput(f"--fixes {unknown[0]}: no such fix (choose all, or some of {', '.join(FIXES)})")
    return [n for n in FIXES if n in names]


_INSTALLED: set[str] = set()


def in_fastvideo() -> list[str]:
    """The fixes the importable FastVideo holds as patches (a copy built by ``fixes build``:
    PATCHES.json beside its package); [] for stock FastVideo. Does not import FastVideo."""
    from .series import patched_fixes
    held = patched_fixes()
    return [n for n in FIXES if n in held]


def active() -> list[str]:
    """The fixes in force in this process now: installed at run time, or patched into the
    FastVideo it imports."""
    patched = set(in_fastvideo())
    return [n for n in FIXES if n in _INSTALLED or n in patched]


def install(names) -> callable:
    """Install the named fixes (a list, or a spec string) -> the function that removes them.
    A fix already installed (a forked process inherits them), or patched into the FastVideo
    this process imports, is left as it is."""
    names = parse(names) if isinstance(names, str) or names is None else list(names)
    undo = []
    patched = set(in_fastvideo()) if names else set()
    try:
        for n in names:
            if n in _INSTALLED or n in patched:
                continue
            u = FIXES[n].install()
            _INSTALLED.add(n)
            undo.append((n, u))
    except BaseException:
        for n, u in reversed(undo):
            u()
            _INSTALLED.discard(n)
        raise

    def restore() -> None:
        for n, u in reversed(undo):
            u()
            _INSTALLED.discard(n)
    return restore


@contextlib.contextmanager
def installed(names):
    restore = install(names)
    try:
        yield parse(names) if isinstance(names, str) or names is None else list(names)
    finally:
        restore()


def install_in_workers(generator, spec) -> list[list[str]]:
    """The fixes in a ``VideoGenerator``'s spawned workers (fixes/workers.py)."""
    from .workers import install_in_workers as run
    return run(generator, spec)


def describe(names) -> list[dict]:
    """What the report says of each installed fix."""
    return [{"name": n, "fixes": FIXES[n].finding, "what": FIXES[n].summary} for n in names]
