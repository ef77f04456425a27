#!/usr/bin/env bash
# The GPU measurements of issues #12 and #15 in one run, on any CUDA machine:
#   bash benchmarks/gpu_check.sh            # results under $OUT (default /tmp/gpu-check)
# 1. generated tokens/s of the rollout engines (HF; vLLM where installed), bf16,
#    16 prompts x 8 samples x 256 tokens, embedded + Qwen2-0.5B/1.5B shapes (random init);
# 2. one training micro-step's peak memory/time at the 1.5B shape with the real
#    vocabulary, before/after the chunked log-prob head (bf16), with and without
#    gradient checkpointing;
# 3. the CUDA tests (bf16 training end to end with the hf and hf-static engines).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/test_distributed.py 2>&1 | grep -v -i "warn\|Loading weights" | tail -n 60 | tee "$OUT/gpu_tests.txt"
timeout 200 python3 benchmarks/rollout_speed.py --shapes embedded,qwen2-0.5b,qwen2-1.5b \
  --engines hf --prompts 16 --samples 8 --tokens 256 --dtype bfloat16 --rounds 2 \
  --json "$OUT/rollout_speed.json" 2>&1 | grep -v -i warn | tail -n 8 | tee "$OUT/rollout_speed.txt"
for gc in "" "--gradient-checkpointing"; do
  timeout 120 python3 benchmarks/logprob_memory.py --device cuda --dtype bfloat16 --shape 1.5b \
    --before-tokens 4096 --chunks 1024 $gc 2>&1 | grep -B2 -A8 "^| method" | tee -a "$OUT/logprob_memory.txt"
done
