"""The runs of ``vs_trl.py``: what every method's run shares (the methods, ``RunResult``,
the held-out evaluation, progress lines) and the run of our own trainer (GRPO, ReMix-GRPO,
sync or async). TRL's runs are in ``vs_trl_trl.py``."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from remix_rft.data.arithmetic import ArithmeticTask
from remix_rft.data.prompts import format_prompt
from remix_rft.engines.generation import generate_texts
from remix_rft.engines.models import resolve_model_path

METHODS = ("trl", "trl-remix", "ours", "remix", "remix-async")
LABELS = {
    "trl": "TRL GRPO",
    "trl-remix": "TRL + ReMixGRPOTrainer",
    "ours": "our GRPO",
    "remix": "our ReMix-GRPO",
    "remix-async": "our ReMix-GRPO, async",
}
CONFIGS = {
    "trl": "tiny-grpo",
    "trl-remix": "tiny-remix-grpo",  # its ReMix keys; TRL cannot grow the batch at reincarnation
    "ours": "tiny-grpo",
    "remix": "tiny-remix-grpo",
    "remix-async": "tiny-remix-grpo",
}
WALL_KEY = "time/wall_s"  # since training began, evaluations (and a producer's start) included
FALLBACK_MODEL = "/tmp/base"
EVAL_KEY = "eval/accuracy"
SETTINGS = ("steps", "eval_every", "eval_problems")  # the command line's, recorded with each run

Row = dict[str, Any]


@dataclass
class RunResult:
    """One training run, reduced to what the table needs."""

    method: str
    seed: int
    round: int
    rollouts_per_iter: int
    rows: list[Row] = field(default_factory=list)  # step, rollouts, time/*, eval/accuracy
    step_s: list[float] = field(default_factory=list)  # per iteration, evaluation excluded
    gen_s: list[float] = field(default_factory=list)  # generation share of each iteration
    precompute_s: list[float] = field(default_factory=list)  # ours: no-grad log π_k (+ π_base)
    rewards: list[float] = field(default_factory=list)  # mean training reward per iteration
    eval_s: float = 0.0  # total time spent evaluating
    run_s: float = 0.0  # wall-clock of the whole run, evaluation included
    threads: int = 0
    notes: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # SETTINGS: --merge reads them

    def evals(self) -> list[Row]:
        return [r for r in self.rows if EVAL_KEY in r]


# --------------------------------------------------------------------------- shared pieces


def model_path(name: str) -> str:
    try:
        return resolve_model_path(name)
    except FileNotFoundError:
        if name in ("embedded", "tiny") and Path(FALLBACK_MODEL, "config.json").is_file():
            return FALLBACK_MODEL
        raise


class HeldOut:
    """Greedy pass@1 on the first ``n`` held-out problems, exactly as our trainer evaluates."""

    def __init__(self, task: ArithmeticTask, tokenizer: Any, n: int, max_new_tokens: int) -> None:
        self.task = task
        self.tokenizer = tokenizer
        self.problems = list(task.eval_problems())[:n]
        self.prompts = [format_prompt(tokenizer, p.prompt) for p in self.problems]
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, model: Any) -> float:
        was_training = model.training
        model.eval()
        try:
            texts = generate_texts(
                model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens,
                temperature=0.0, batch_size=200,
            )  # fmt: skip
        finally:
            model.train(was_training)
        scores = [self.task.reward(t, p) for t, p in zip(texts, self.problems, strict=True)]
        return sum(scores) / max(len(self.problems), 1)


def with_training_clock(rows: list[Row], step_s: dict[int, float]) -> list[Row]:
    """``time/total_s`` = cumulative iteration time up to each row (evaluation excluded)."""
    total, out = 0.0, []
    for row in sorted(rows, key=lambda r: r["step"]):
        total += step_s.get(row["step"], 0.0)
        out.append({**row, "time/total_s": total})
    return out


def progress(method: str, seed: int, step: int, steps: int, acc: float | None, s: float | None):
    parts = [f"[{LABELS[method]} seed {seed}] step {step}/{steps}"]
    if s is not None:
        parts.append(f"{s:.2f} s/iter")
    if acc is not None:
        parts.append(f"eval {acc:.3f}")
    print("  ".join(parts), flush=True)


# --------------------------------------------------------------------------- our trainer


def run_ours(method: str, seed: int, rnd: int, args: argparse.Namespace, work: Path) -> RunResult:
    from remix_rft.trainer.config import load_config
    from remix_rft.trainer.loop import Trainer, train

    out_dir = work / f"{method}-s{seed}-r{rnd}"
    overrides = [
        f"model={model_path(args.model)}", f"seed={seed}", f"steps={args.steps}",
        f"eval_every={args.eval_every}", f"eval_problems={args.eval_problems}",
        f"save_every={args.steps}", "keep_checkpoints=1", f"threads={args.threads}",
        f"out_dir={out_dir}", f"name={method}",
    ]  # fmt: skip
    if method.endswith("-async"):  # the same CPU budget: one thread moves to the producer
        overrides += ["rollout_mode=async", f"max_staleness={args.max_staleness}",
                      f"threads={max(args.threads - 1, 1)}", "rollout_threads=1"]  # fmt: skip
    cfg = load_config(CONFIGS[method], overrides)
    res = RunResult(method, seed, rnd, cfg.fresh_batch_size())
    raw: list[Row] = []
    step_s: dict[int, float] = {}

    def on_step(row: Row) -> None:
        step = int(row["step"])
        keep = {"step": step, "rollouts": int(row.get("rollouts", 0))}
        keep[WALL_KEY] = float(row.get("time/total_s", math.nan))
        if EVAL_KEY in row:
            keep[EVAL_KEY] = float(row[EVAL_KEY])
        raw.append(keep)
        if step > 0:
            step_s[step] = float(row["time/step_s"])
            res.step_s.append(step_s[step])
            res.gen_s.append(float(row.get("time/gen_s", math.nan)))
            res.rewards.append(float(row.get("reward/mean", math.nan)))
        progress(method, seed, step, args.steps, keep.get(EVAL_KEY), step_s.get(step))

    started = time.perf_counter()
    with _timed_method(Trainer, "precompute", res.precompute_s):
        summary = train(cfg, on_step=on_step)
    res.run_s = time.perf_counter() - started
    res.rows = with_training_clock(raw, step_s)
    res.eval_s = max(summary.get("wall_time_s", res.run_s) - sum(res.step_s), 0.0)
    res.threads = torch.get_num_threads()
    return res


@contextmanager
def _timed_method(cls: type, name: str, sink: list[float]) -> Iterator[None]:
    """Record the duration of every call of ``cls.name`` into ``sink`` while active."""
    inner = getattr(cls, name)

    def timed(*a: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            sink.append(time.perf_counter() - started)

    setattr(cls, name, timed)
    try:
        yield
    finally:
        setattr(cls, name, inner)
