"""Developer scripts, run from the repository root (`python -m scripts.<name>`), not installed:
the golden-data generators (they run the upstream code through the installed adapter,
parity/upstream.py) and synthetic checkpoints for tests and benchmarks (scripts/synth.py)."""
