"""The fixes in FastVideo's worker processes (``VideoGenerator``).

``VideoGenerator.from_pretrained`` builds and runs its pipeline in worker processes
it spawns (``fastvideo/worker/multiproc_executor.py``); fixes installed in the
calling process do not reach them, and FastVideo 0.2.1 has no hook that runs code in
a worker before it builds the pipeline. Its executor's ``collective_rpc`` does run a
callable in every worker (``fastvideo/utils.py: run_method`` calls it with the
worker object), and every fix acts when a stage or model method is CALLED, not when
the pipeline is built, so installing them after the workers are up is enough:

    gen = VideoGenerator.from_pretrained(path, num_gpus=1)
    fixes.install_in_workers(gen, "all")
    gen.generate_video(prompt, ...)

The fixes then stay installed in those workers until they exit.
"""
from __future__ import annotations


def install_here(_worker, spec) -> list[str]:
    """Run in a worker by ``collective_rpc``: install ``spec`` there -> the fixes active there."""
    import fixes
    fixes.install(spec)
    return fixes.active()


def install_in_workers(generator, spec) -> list[list[str]]:
    """Install ``spec`` ("all" or "NAME,...") in every worker of a ``VideoGenerator`` ->
    the fixes active in each worker (one list per worker)."""
    import fixes
    if isinstance(spec, str):
        fixes.parse(spec)                      # a bad name fails here, not in a worker
    return list(generator.executor.collective_rpc(install_here, args=(spec,)))
