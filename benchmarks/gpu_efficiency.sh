#!/usr/bin/env bash
# The hard setting's efficiency benchmark (benchmarks/efficiency.py --setting hard) on a
# CUDA machine: every run is its own process on the one GPU.
#   JOBS=4 SEEDS="0 1 2 3 4" LIMIT_S=540 bash benchmarks/gpu_efficiency.sh
# Measured (benchmarks/results/efficiency-hard-lr-sweep.md): 14 processes on one H200 made
# each run slower than on one CPU core -- the tiny model's kernels from 14 CUDA contexts
# time-slice the GPU. The embedded model is cheapest on CPU, one thread per run
# (benchmarks/efficiency.py --jobs N); use this script for a few runs at most.
# Runs start until DEADLINE_S; everything stops at LIMIT_S; the run directories (metrics,
# configs, summaries, logs -- no checkpoints) are packed into $OUT/runs-hard.tgz either way,
# and `python benchmarks/efficiency.py --setting hard --report-only` tabulates them.
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/gpu-efficiency}
JOBS=${JOBS:-4}
SEEDS=${SEEDS:-0 1 2 3 4}
LIMIT_S=${LIMIT_S:-540}
DEADLINE_S=${DEADLINE_S:-$((LIMIT_S * 2 / 3))}
VARIANTS=${VARIANTS:-}
RUNS=${RUNS:-runs/efficiency-hard}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
nproc | tee -a "$OUT/machine.txt"
# shellcheck disable=SC2086  # word splitting of the lists is wanted
timeout "$LIMIT_S" python3 benchmarks/efficiency.py --setting hard --device cuda \
  --jobs "$JOBS" --seeds $SEEDS ${VARIANTS:+--variants $VARIANTS} --deadline-s "$DEADLINE_S" \
  --runs-dir "$RUNS" --out-dir "$OUT" 2>&1 | tee "$OUT/benchmark.txt"
tar czf "$OUT/runs-hard.tgz" --exclude='checkpoints' --exclude='*.pt' --exclude='*.safetensors' \
  --exclude='tensorboard' "$RUNS"
ls -la "$OUT"
