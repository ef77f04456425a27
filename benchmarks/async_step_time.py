"""Sync vs async iteration time at a real model shape, producer and learner on one device.

Issue #20's GPU check: GRPO iterations (``configs/tiny-grpo.yaml``'s loop: P prompts × G
samples, one update) with the HF engine at the Qwen2-0.5B or 1.5B shape (random init,
Qwen2's 151,936-token vocabulary, the embedded tokenizer), ``rollout_mode=sync`` against
``rollout_mode=async`` (the producer in its own process on the same device, staleness 1),
in rounds that alternate which mode runs first; with ``--rollout-device`` the async
producer gets a device of its own (disaggregated placement on a two-GPU machine). A random model seldom emits EOS, so
every response runs to ``--tokens`` and the rewards are ~0; neither changes the work of an
iteration (generation to the token limit, forward and backward over every response).

Reported per mode: mean iteration time after ``--warmup`` iterations (the learner's,
waiting for data included), generation seconds and the learner's wait per iteration, and
the async ÷ sync ratio per round, then mean ± spread. Evaluation is reduced to a few
problems and excluded from the iteration time.

    python benchmarks/async_step_time.py --shape qwen2-0.5b --device cuda --dtype bfloat16
    python benchmarks/async_step_time.py --shape qwen2-0.5b --device cuda --rollout-device cuda:1
    python benchmarks/async_step_time.py --shape embedded --device cpu --steps 6 --tokens 32

The first command is sized to one 10-minute call of a lent GPU (2 rounds of 2 runs of
8 iterations, 16 × 8 samples of 256 tokens; about 6 minutes on an H100 by our estimate,
not yet run there). The table goes to stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rollout_speed import SHAPES, make_model_dir
from tables import publish

REPO = Path(__file__).resolve().parents[1]
MODES = ("sync", "async")


@dataclass(frozen=True)
class Timing:
    step_s: float
    gen_s: float
    wait_s: float
    wall_s: float  # the whole run, start-up and evaluations included


def train_overrides(args: argparse.Namespace, model_dir: str, mode: str, out: Path) -> list[str]:
    async_keys = ["rollout_mode=async", "max_staleness=1"] if mode == "async" else []
    if mode == "async" and args.rollout_device:
        async_keys.append(f"rollout_device={args.rollout_device}")
    return [
        f"model={model_dir}", f"device={args.device}", f"dtype={args.dtype}",
        f"steps={args.steps}", f"prompts_per_step={args.prompts}", f"group_size={args.samples}",
        f"minibatch_size={args.prompts * args.samples}", f"max_new_tokens={args.tokens}",
        "eval_every=100000", "eval_problems=8", "eval_max_new_tokens=8",
        f"save_every={args.steps}", "keep_checkpoints=1", "report_to=[]",
        f"out_dir={out}", "seed=0", *async_keys, *args.extra,
    ]  # fmt: skip


def run_once(args: argparse.Namespace, model_dir: str, mode: str, out: Path) -> Timing:
    cmd = [sys.executable, "-m", "remix_rft", "train", "configs/tiny-grpo.yaml",
           *train_overrides(args, model_dir, mode, out)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if int(r.get("step", 0)) > args.warmup]
    if not steps:
        raise SystemExit(f"{mode}: no iteration after --warmup {args.warmup}; raise --steps")

    def mean(key: str) -> float:
        return statistics.fmean(float(r.get(key) or 0.0) for r in steps)

    return Timing(mean("time/step_s"), mean("time/gen_s"), mean("time/wait_s"), wall)


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def report(args: argparse.Namespace, runs: dict[str, list[Timing]]) -> str:
    ratios = [a.step_s / s.step_s for s, a in zip(runs["sync"], runs["async"], strict=True)]
    lines = [
        f"Sync vs async GRPO iterations, shape `{args.shape}`, device {args.device} "
        f"({device_name(args.device)}), {args.dtype}, {args.prompts} × {args.samples} samples "
        f"of {args.tokens} tokens, {args.steps} iterations per run ({args.warmup} warm-up "
        f"excluded), {args.rounds} rounds alternating the order; {platform.machine()}.",
        "",
        "| mode | s / iteration | generation s / iteration | learner wait s / iteration | run wall-clock (s) |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for mode in MODES:
        got = runs[mode]
        lines.append(
            f"| {mode} | {spread([t.step_s for t in got])} | {spread([t.gen_s for t in got])} | "
            f"{spread([t.wait_s for t in got])} | {spread([t.wall_s for t in got])} |"
        )
    per_round = ", ".join(f"{r:.2f}" for r in ratios)
    lines += [
        "",
        f"async ÷ sync s / iteration: {spread(ratios)} (per round {per_round}).",
        "",
        "Reproduce: `python benchmarks/async_step_time.py " + " ".join(sys.argv[1:]) + "`",
    ]
    return "\n".join(lines)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()} CPU cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["embedded", *SHAPES], default="qwen2-0.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="first iterations excluded")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rollout-device", default="",
                        help="async only: the producer's own device (e.g. cuda:1 on a "
                        "two-GPU machine; default: the learner's)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/async-step-time.md")
    parser.add_argument("extra", nargs="*", help="more key=value overrides for both runs")
    args = parser.parse_args(argv)
    runs: dict[str, list[Timing]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(args.shape, Path(tmp), args.dtype)
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                timing = run_once(args, model_dir, mode, Path(tmp) / f"{mode}-{r}")
                runs[mode].append(timing)
                print(f"round {r} {mode}: {timing.step_s:.2f} s / iteration "
                      f"(run {timing.wall_s:.0f} s)", flush=True)  # fmt: skip
    table = report(args, runs)
    publish(table, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
