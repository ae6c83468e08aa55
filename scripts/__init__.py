"""Developer scripts, run from the repository root (`python -m scripts.<name>`), not installed:
the golden-data generators, the upstream adapter (scripts/upstream.py, which
`golden-check --reference upstream` loads by file path) and synthetic checkpoints
for tests and benchmarks (scripts/synth.py)."""
