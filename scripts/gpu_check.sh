#!/usr/bin/env bash
# The prepared GPU check (`make gpu-check`): run it first in any session that is lent a GPU.
# Everything it measures goes to $OUT (the device tool's output folder) or reports/gpu-check,
# one log per step plus summary.txt; a step that fails is recorded and the next one runs.
# Steps: install, the GPU tests, golden cases in bf16 on CUDA (DiT, sampling, BSA with the
# compiled kernel), timings of both sides, FastVideo's VideoGenerator on the tiny bundle with
# its defaults, block-streamed parity at the released width.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-reports/gpu-check}"
mkdir -p "$OUT_DIR"
PY=.venv/bin/python
CLI=.venv/bin/longcat-convert
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1; uname -m; nproc; } > "$OUT_DIR/card.txt"

step() {            # step NAME COMMAND...: run, time, keep the log, record the exit status
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s: $*" | tee -a "$SUMMARY"
}

step install make install
step convert-tiny-a "$CLI" convert golden/tiny-a out/gpu/tiny-a --force --quiet
step convert-bundle "$CLI" convert golden/tiny-bundle out/gpu/tiny-bundle --force --quiet
step pytest-gpu "$PY" -m pytest -q -m gpu tests
for c in t2v i2v varlen t2v_lora; do
  step "dit-bf16-$c" "$CLI" parity golden/tiny-a out/gpu/tiny-a --device cuda --dtype bf16 \
      --case "golden/tiny-a/cases/$c.safetensors" --report "$OUT_DIR/dit-bf16-$c"
done
for c in traj_t2v_cfg traj_i2v traj_vc_cache; do
  step "sampling-bf16-$c" "$CLI" parity golden/tiny-a out/gpu/tiny-a --mode sampling --device cuda --dtype bf16 \
      --sigmas original --case "golden/tiny-a/cases/$c.safetensors" --report "$OUT_DIR/sampling-bf16-$c"
done
for c in golden/tiny-a/cases/bsa_*.safetensors; do
  n=$(basename "$c" .safetensors)
  step "bsa-bf16-$n" "$CLI" parity golden/tiny-a out/gpu/tiny-a --device cuda --dtype bf16 --case "$c" \
      --report "$OUT_DIR/bsa-bf16-$n"
done
step pipeline-cuda "$CLI" parity golden/tiny-bundle out/gpu/tiny-bundle --component pipeline --device cuda \
    --case golden/tiny-bundle/cases/pipeline_t2v.safetensors --report "$OUT_DIR/pipeline"
# The fixes on CUDA: every trajectory case in float32 and the full run, with --fixes all.
for c in golden/tiny-a/cases/traj_*.safetensors golden/extra/tiny-a/cases/traj_*.safetensors; do
  n=$(basename "$c" .safetensors)
  step "sampling-fixed-$n" "$CLI" parity golden/tiny-a out/gpu/tiny-a --mode sampling --device cuda --fixes all \
      --case "$c" --report "$OUT_DIR/sampling-fixed-$n"
done
step pipeline-fixed-cuda "$CLI" parity golden/tiny-bundle out/gpu/tiny-bundle --component pipeline --device cuda \
    --fixes all --case golden/tiny-bundle/cases/pipeline_t2v.safetensors --report "$OUT_DIR/pipeline-fixed"
step video-generator "$PY" - <<'PYEOF'
# FastVideo's own entry point on the converted tiny bundle with its defaults (offloads on).
import time, torch
from fastvideo import VideoGenerator
t0 = time.time()
gen = VideoGenerator.from_pretrained("out/gpu/tiny-bundle", num_gpus=1)
out = gen.generate_video("A red cat walks on the street at night.", height=32, width=48, num_frames=9,
                         num_inference_steps=4, guidance_scale=4.0, seed=42, save_video=False, return_frames=True)
print("VideoGenerator ok", type(out), f"{time.time() - t0:.1f}s")
PYEOF
step bench-sampling "$PY" -m bench.run --sections sampling fixes --blocks 2 --dtypes bf16 --reps 2 --device cuda \
    --json "$OUT_DIR/bench-sampling.json"
step blocks-released "$PY" -m bench.run --sections parity_blocks --dtypes bf16 --blocks 2 --reps 1 --device cuda \
    --json "$OUT_DIR/bench-blocks.json"
cat "$SUMMARY"
