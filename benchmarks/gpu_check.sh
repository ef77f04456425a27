#!/usr/bin/env bash
# The GPU measurements of issues #12, #15 and #38 in one run, on one CUDA machine (no
# downloads: random-init Qwen2 shapes), about 8 minutes:
#   bash benchmarks/gpu_check.sh            # #38's checks + the CUDA tests, <= 8 minutes
#   ALL=1 bash benchmarks/gpu_check.sh      # + the #12/#15 measurements (3 and 4 below)
# Results under $OUT (default /tmp/gpu-check).
# 1. issue #38 (benchmarks/memory_plan_check.py --device cuda): the memory plan's
#    prediction beside the measured peak of one training step at 8,448 tokens (1.5B shape,
#    bf16, gradient checkpointing) and of one weight publication at the 1.5B shape, the
#    full fp32 gather vs streamed bf16 buckets (where the streamed path is installed);
# 2. issue #38: where vLLM imports, its sleep / wake / push cycle at sleep levels 1 and 2
#    (benchmarks/vllm_cycle.py: device memory and time per stage, greedy outputs equal);
# 3. generated tokens/s of the rollout engines (HF; vLLM where installed), bf16,
#    16 prompts x 8 samples x 256 tokens, embedded + Qwen2-0.5B/1.5B shapes (random init);
# 4. one training micro-step's peak memory/time at the 1.5B shape with the real
#    vocabulary, before/after the chunked log-prob head (bf16), with and without
#    gradient checkpointing;
# 5. the CUDA tests (bf16 training end to end with the hf and hf-static engines).
# Without a CUDA device it stops at once with exit status 2.
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check}
if ! command -v nvidia-smi >/dev/null 2>&1 || \
   ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device (nvidia-smi missing or torch.cuda.is_available() is False); run it on a GPU machine" >&2
  exit 2
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 180 "$PY" benchmarks/memory_plan_check.py --device cuda --json "$OUT/memory_plan.json" 2>&1 \
  | grep -v -i "warn" | tail -n 8 | tee "$OUT/memory_plan.txt"
if "$PY" -c "import vllm" 2>/dev/null; then
  timeout 180 "$PY" benchmarks/vllm_cycle.py 2>&1 | grep "^|" | tee "$OUT/vllm_cycle.txt"
else
  echo "vLLM sleep/wake/push cycle: skipped (vllm not importable)" | tee "$OUT/vllm_cycle.txt"
fi
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/test_distributed.py 2>&1 | grep -v -i "warn\|Loading weights" | tail -n 60 | tee "$OUT/gpu_tests.txt"
[ "${ALL:-0}" = 1 ] || exit 0
timeout 200 "$PY" benchmarks/rollout_speed.py --shapes embedded,qwen2-0.5b,qwen2-1.5b \
  --engines hf --prompts 16 --samples 8 --tokens 256 --dtype bfloat16 --rounds 2 \
  --json "$OUT/rollout_speed.json" 2>&1 | grep -v -i warn | tail -n 8 | tee "$OUT/rollout_speed.txt"
for gc in "" "--gradient-checkpointing"; do
  timeout 120 "$PY" benchmarks/logprob_memory.py --device cuda --dtype bfloat16 --shape 1.5b \
    --before-tokens 4096 --chunks 1024 $gc 2>&1 | grep -B2 -A8 "^| method" | tee -a "$OUT/logprob_memory.txt"
done
