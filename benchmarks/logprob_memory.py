"""Issue #15 acceptance: memory and time of one training micro-step at real vocabulary size,
and the padding of a long-tailed mixed batch, before and after.

Table 1 — one micro-step (forward + backward of the Mix-PPG policy loss) on one row of
``--prompt`` + ``--tokens`` response tokens, on a random Qwen2 with the real vocabulary
(151,936) and a reduced width/depth (``--shape reduced``, fits a CPU) or Qwen2-1.5B's
shape (``--shape 1.5b``, for a GPU). "before" is ``response_logprobs`` as it was before
#15 (full logits, fp32 copies, plain autograd), copied verbatim below; "after" is
``engines/policy.py: response_stats`` (hidden states, output head on response tokens
only, ``chunk`` tokens at a time, checkpointed). Every configuration runs in its own
subprocess so peaks do not mix; peak = the process's high-water mark (CPU: max RSS;
CUDA: ``max_memory_allocated``), "step" = peak minus what was held before the step.

Table 2 — padding fraction of a mixed batch with long-tailed response lengths (lognormal,
median 1k tokens, capped at 8k: half under 1k, a few at the cap): the share of the tokens
the forward passes process that are padding.

    python benchmarks/logprob_memory.py --before-tokens 1024 2048   # CPU, fp32, reduced shape
    python benchmarks/logprob_memory.py --device cuda --dtype bfloat16 --shape 1.5b
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from remix_rft.algorithm import mix_ppg_policy_loss  # noqa: E402
from remix_rft.data.batch import (  # noqa: E402
    MicroBatching,
    TrainBatch,
    collate,
    padding_counts,
    row_lengths,
)
from remix_rft.data.buffer import Sample  # noqa: E402
from remix_rft.engines.policy import response_stats  # noqa: E402

VOCAB = 151_936
SHAPES = {
    # hidden, layers, heads, kv heads, intermediate
    "reduced": (64, 2, 4, 2, 176),  # embeddings + lm_head: 19.4M of its 19.5M parameters
    "1.5b": (1536, 28, 12, 2, 8960),  # Qwen2-1.5B / R1-Distill-Qwen-1.5B
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def legacy_response_logprobs(model, batch: TrainBatch, *, temperature: float) -> torch.Tensor:
    """``engines/policy.py: response_logprobs`` at commit d9be2cc (before #15), verbatim."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        position_ids=batch.position_ids.to(device),
        use_cache=False,
    ).logits
    width = batch.response_mask.shape[1]
    logits = logits[:, batch.prompt_len - 1 : batch.prompt_len - 1 + width].float() / temperature
    targets = batch.input_ids[:, batch.prompt_len :].to(device)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked - torch.logsumexp(logits, dim=-1)) * batch.response_mask.to(device)


def build_model(shape: str, dtype: torch.dtype, device: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads, kv, inter = SHAPES[shape]
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(config).to(dtype)


def one_row(prompt: int, response: int) -> TrainBatch:
    gen = torch.Generator().manual_seed(1)
    sample = Sample(
        prompt_ids=torch.randint(0, VOCAB, (prompt,), generator=gen),
        response_ids=torch.randint(0, VOCAB, (response,), generator=gen),
        behavior_logprobs=torch.zeros(response),
        reward=1.0, advantage=1.0, version=1, group=0, finished=True,
    )  # fmt: skip
    return collate([sample], pad_id=0)


def micro_step(model, batch: TrainBatch, method: str, chunk: int) -> None:
    """Forward + backward of the policy loss, as ``Trainer.policy_update`` does it."""
    if method == "before":
        logprob = legacy_response_logprobs(model, batch, temperature=1.0)
    else:
        logprob = response_stats(model, batch, temperature=1.0, chunk_tokens=chunk).logprobs
    mask = batch.response_mask.to(logprob.device)
    old = logprob.detach()
    out = mix_ppg_policy_loss(
        logprob, old, old, mask, mask, eps_low=0.2, eps_high=0.2, agg="token-mean"
    )
    out.loss.backward()


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def held_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def run_one(args: argparse.Namespace) -> dict:
    """One configuration, in this (fresh) process."""
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    model = build_model(args.shape, dtype, args.device)
    if args.gradient_checkpointing:  # how long responses train: activations recomputed
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    micro_step(model, one_row(8, 16), args.method, args.chunk)  # warm-up: kernels, allocator
    model.zero_grad(set_to_none=False)  # gradient buffers exist in both methods' step
    batch = one_row(args.prompt, args.tokens)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = held_bytes(args.device)
    start = time.perf_counter()
    micro_step(model, batch, args.method, args.chunk)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = peak_bytes(args.device)
    return {"peak": peak, "step": peak - before, "seconds": seconds}


def measure(args: argparse.Namespace, method: str, tokens: int, chunk: int) -> dict:
    """One configuration in a fresh subprocess (its own high-water mark)."""
    cmd = [
        sys.executable, __file__, "--one", method, "--chunk", str(chunk), "--tokens", str(tokens),
        "--device", args.device, "--dtype", args.dtype, "--shape", args.shape,
        "--prompt", str(args.prompt), "--threads", str(args.threads),
        *(["--gradient-checkpointing"] if args.gradient_checkpointing else []),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{method} at {tokens} tokens failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_table(args: argparse.Namespace) -> list[str]:
    """Before at ``--before-tokens``; if ``--tokens`` is not among them (a legacy step at
    4k tokens needs ~11 GiB, more than a shared CPU box should lend), its row is the
    linear fit of the measured ones (every [T, V] tensor of the legacy path grows with T)."""
    gib = 2**30
    lines = [
        f"One micro-step, 1 x ({args.prompt} prompt + T response) tokens, V = {VOCAB}, "
        f"shape {args.shape} (hidden, layers, heads, kv heads, intermediate = "
        f"{SHAPES[args.shape]}), {args.dtype}, {args.device}, {args.threads} threads"
        f"{', gradient checkpointing' if args.gradient_checkpointing else ''}:",
        "",
        "| method | T | chunk | peak memory (GiB) | step: peak above model (GiB) | vs before | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    before = {t: measure(args, "before", t, 0) for t in sorted(set(args.before_tokens))}
    for t, r in before.items():
        lines.append(
            f"| before | {t} | - | {r['peak'] / gib:.2f} | {r['step'] / gib:.2f} | 1 | {r['seconds']:.1f} |"
        )
    if args.tokens not in before:
        (t0, r0), (t1, r1) = list(before.items())[0], list(before.items())[-1]
        slope = {k: (r1[k] - r0[k]) / (t1 - t0) for k in ("peak", "step", "seconds")}
        before[args.tokens] = {k: r1[k] + slope[k] * (args.tokens - t1) for k in slope}
        r = before[args.tokens]
        lines.append(
            f"| before (linear fit, not run) | {args.tokens} | - | {r['peak'] / gib:.2f} | "
            f"{r['step'] / gib:.2f} | 1 | {r['seconds']:.1f} |"
        )
    runs = [(t, args.chunks[len(args.chunks) // 2]) for t in sorted(before) if t != args.tokens]
    runs += [(args.tokens, c) for c in args.chunks]
    for t, chunk in runs:
        r = measure(args, "after", t, chunk)
        lines.append(
            f"| after | {t} | {chunk} | {r['peak'] / gib:.2f} | {r['step'] / gib:.2f} | "
            f"{r['step'] / before[t]['step']:.2f}x step, {r['peak'] / before[t]['peak']:.2f}x peak | "
            f"{r['seconds']:.1f} |"
        )
    return lines


def long_tailed_samples(n: int, seed: int) -> list[Sample]:
    """Responses lognormal around 1k tokens (capped at 8k), prompts 50-400 tokens."""
    gen = torch.Generator().manual_seed(seed)
    responses = torch.exp(math.log(1000) + 0.9 * torch.randn(n, generator=gen))
    responses = responses.clamp(20, 8192).long()
    prompts = torch.randint(50, 400, (n,), generator=gen)
    return [
        Sample(
            prompt_ids=torch.zeros(int(p), dtype=torch.long),
            response_ids=torch.ones(int(r), dtype=torch.long),
            behavior_logprobs=torch.zeros(int(r)),
            reward=0.0,
            advantage=0.0,
            version=1,
            group=i,
            finished=True,
        )  # fmt: skip
        for i, (p, r) in enumerate(zip(prompts.tolist(), responses.tolist(), strict=True))
    ]


def padding_table(args: argparse.Namespace) -> list[str]:
    samples = long_tailed_samples(args.rows, seed=0)
    batch = collate(samples, pad_id=0)
    lengths = row_lengths(batch)
    responses = batch.response_mask.sum(dim=1)
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    minibatches = [order[i : i + args.minibatch] for i in range(0, len(batch), args.minibatch)]
    width = batch.input_ids.shape[1]
    real = int(lengths.sum())
    lines = [
        f"Padding of a mixed batch: {args.rows} rows, minibatches of {args.minibatch}; "
        f"responses: median {int(responses.median())}, {float((responses < 1000).float().mean()):.0%} "
        f"under 1k, {int((responses >= 7500).sum())} at 7.5k-8k; prompts 50-400 tokens.",
        "",
        "| micro-batching | layout | micro-batches | tokens processed | padding |",
        "|---|---|---|---|---|",
        f"| {args.micro_rows} rows (before #15) | whole batch padded to P_max + R_max | "
        f"{sum(-(-len(m) // args.micro_rows) for m in minibatches)} | {len(batch) * width:,} | "
        f"{1 - real / (len(batch) * width):.1%} |",
    ]
    plans = [(f"{args.micro_rows} rows", MicroBatching(rows=args.micro_rows))]
    plans += [(f"{t:,} tokens", MicroBatching(tokens=t)) for t in args.budgets]
    for name, plan in plans:
        groups = [g for m in minibatches for g in plan.split(batch, m)]
        processed = sum(padding_counts(lengths[g])[1] for g in groups)
        lines.append(
            f"| {name} | each micro-batch compact, to its longest row | {len(groups)} | "
            f"{processed:,} | {1 - real / processed:.1%} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--shape", default="reduced", choices=list(SHAPES))
    parser.add_argument("--tokens", type=int, default=4096, help="response tokens of the row")
    parser.add_argument(
        "--before-tokens", type=int, nargs="+", default=[4096],
        help="response tokens at which to run the legacy path (>= 2 values to fit --tokens)",
    )  # fmt: skip
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens of the row")
    parser.add_argument("--chunks", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute decoder activations"
    )
    parser.add_argument("--rows", type=int, default=512, help="padding table: batch rows")
    parser.add_argument("--minibatch", type=int, default=128)
    parser.add_argument("--micro-rows", type=int, default=2)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument("--skip-memory", action="store_true", help="only the padding table")
    parser.add_argument("--one", choices=["before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=1024, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.method = args.one
        print(json.dumps(run_one(args)))
        return
    if not args.skip_memory:
        print("\n".join(memory_table(args)) + "\n", flush=True)
    print("\n".join(padding_table(args)))


if __name__ == "__main__":
    main()
