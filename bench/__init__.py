"""`make bench`: conversion speed and memory against `cp` on synthetic checkpoints
with the released model's widths (see bench/run.py)."""
