"""TRL's ``GRPOTrainer`` vs our GRPO and ReMix-GRPO on the embedded model and task.

The same tiny model (``remix_rft/assets/tiny``) is trained on the same embedded
arithmetic task with the settings of ``configs/tiny-grpo.yaml``: 16 prompts per
iteration x 8 responses, at most 48 new tokens, temperature 1, the config's
learning rate (constant), no KL (β = 0), ε = 0.2, one optimizer update per
generation batch, the loss averaged over all tokens of the batch (TRL's
``loss_type="dapo"`` = our ``token-mean``) and advantages scaled by the group std.
Every ``--eval-every`` iterations all runs are evaluated the same way: greedy
pass@1 on the first 200 held-out problems (``generate_texts`` + ``task.reward``).

Reported for TRL GRPO, our GRPO, our ReMix-GRPO (``tiny-remix-grpo``) and the same
ReMix-GRPO with asynchronous rollouts (``rollout_mode=async``, η = ``--max-staleness``;
with ``--threads N`` its learner gets N − 1 torch threads and its producer 1, the CPU
budget of the other runs):
seconds per iteration (mean over iterations, evaluation excluded),
rollouts-to-target and training-wall-clock-to-target (docs/design.md §5: the first
evaluation where the mean of two consecutive evaluations reaches the target),
and the final accuracy::

    pip install -e .[bench]
    python benchmarks/vs_trl.py --steps 20 --seeds 0 --rounds 2 \\
        --out benchmarks/results/vs_trl.md
    python benchmarks/vs_trl.py --steps 30 --target 0.9 --threads 2 --rounds 2 \\
        --eval-every 5   # with the async run: wall-clock to 0.9, evaluations included

``trl-remix`` is TRL's trainer with ReMix (``remix_rft.integrations.trl.ReMixGRPOTrainer``,
tiny-remix-grpo's ReMix keys). Seeds can run in parallel processes and be merged into one
table (``benchmarks/results/vs_trl_remix.md``)::

    for s in 0 1 2; do (for m in trl-remix remix trl; do python benchmarks/vs_trl.py \
        --only $m --steps 30 --eval-every 5 --threads 1 --seeds $s \
        --out /tmp/vs/$m-s$s.md --json /tmp/vs/$m-s$s.json; done) & done; wait
    python benchmarks/vs_trl.py --merge /tmp/vs/*.json --steps 30 --eval-every 5 \
        --target 0.9 --out benchmarks/results/vs_trl_remix.md

Runs are made one after the other in this process; ``--rounds 2`` repeats
every run in reversed order (A B C, C B A) so that load from other processes
on a shared machine weighs on every method alike.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(ROOT))

from remix_rft.apps.compare import plateau_accuracy, rollouts_to_target  # noqa: E402
from remix_rft.data.arithmetic import ArithmeticTask  # noqa: E402
from remix_rft.data.prompts import format_prompt  # noqa: E402
from remix_rft.engines.generation import eos_token_ids, generate_texts  # noqa: E402
from remix_rft.engines.models import resolve_model_path  # noqa: E402

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
TRL_MISSING = "TRL is not installed; install the benchmark extra: pip install -e .[bench]"

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


# --------------------------------------------------------------------------- TRL


def import_trl() -> Any:
    try:
        import trl
    except ImportError as err:
        raise SystemExit(TRL_MISSING) from err
    if not hasattr(trl, "GRPOTrainer") or not hasattr(trl, "GRPOConfig"):
        raise SystemExit(
            f"TRL {getattr(trl, '__version__', '?')} has no GRPOTrainer; "
            "pip install -e .[bench] for a recent TRL"
        )
    return trl


def trl_config(trl: Any, cfg: Any, seed: int, args: argparse.Namespace, out_dir: Path) -> Any:
    """GRPOConfig matching our config; fields this TRL version lacks are dropped with a note."""
    fields = {
        "output_dir": str(out_dir),
        "seed": seed,
        "max_steps": args.steps,
        "learning_rate": cfg.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": cfg.weight_decay,
        "adam_beta1": cfg.adam_beta1,
        "adam_beta2": cfg.adam_beta2,
        "max_grad_norm": cfg.max_grad_norm,
        "optim": "adamw_torch",  # ours: torch.optim.AdamW
        # one iteration = 16 prompts x 8 = 128 rollouts = one optimizer update on all of them
        "per_device_train_batch_size": cfg.fresh_batch_size(),
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,
        "num_iterations": 1,
        "num_generations": cfg.group_size,
        "max_completion_length": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "beta": cfg.kl_coef,
        "epsilon": cfg.clip_eps_low,
        "epsilon_high": cfg.clip_eps_high,
        "loss_type": "dapo",  # token-mean over the whole (global) batch
        "scale_rewards": "group" if cfg.scale_adv_by_std else "none",
        "mask_truncated_completions": False,
        "gradient_checkpointing": False,
        "bf16": False,
        "fp16": False,
        "use_cpu": not torch.cuda.is_available(),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "log_completions": False,
    }
    known = getattr(trl.GRPOConfig, "__dataclass_fields__", {})
    dropped = sorted(k for k in fields if known and k not in known)
    if "steps_per_generation" in dropped:  # older TRL: one generation per optimizer step anyway
        dropped.remove("steps_per_generation")
    if dropped:
        log.warning("this TRL's GRPOConfig lacks %s; using its defaults", ", ".join(dropped))
    kwargs = {k: v for k, v in fields.items() if not known or k in known}
    scale = known.get("scale_rewards")
    if scale is not None and "bool" in str(scale.type) and "str" not in str(scale.type):
        kwargs["scale_rewards"] = cfg.scale_adv_by_std  # TRL < 0.22: a bool
    if "loss_type" in dropped:
        raise SystemExit("this TRL has no loss_type; token-mean aggregation cannot be matched")
    return trl.GRPOConfig(**kwargs)


def run_trl(
    seed: int, rnd: int, args: argparse.Namespace, work: Path, method: str = "trl"
) -> RunResult:
    """TRL's GRPOTrainer, or (``trl-remix``) remix_rft.integrations.trl.ReMixGRPOTrainer with
    tiny-remix-grpo's ReMix keys on TRL's generation, rewards and optimizer."""
    trl = import_trl()
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from remix_rft.trainer.config import load_config

    cfg = load_config(CONFIGS[method], [f"seed={seed}"])
    path = model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    task = ArithmeticTask()
    problems = list(task.train_problems())
    dataset = Dataset.from_dict(
        {
            "prompt": [format_prompt(tokenizer, p.prompt) for p in problems],
            "problem_index": list(range(len(problems))),
        }
    )
    eos_ids = eos_token_ids(model, tokenizer)

    def arithmetic_reward(
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        problem_index: Sequence[int],
        **_: Any,
    ) -> list[float]:
        rewards = []
        for text, ids, idx in zip(completions, completion_ids, problem_index, strict=True):
            finished = len(ids) > 0 and int(ids[-1]) in eos_ids  # TRL cuts after the first EOS
            rewards.append(task.reward(text, problems[idx]) if finished else 0.0)
        res.rewards.append(sum(rewards) / max(len(rewards), 1))
        return rewards

    res = RunResult(method, seed, rnd, cfg.fresh_batch_size())
    evaluate = HeldOut(task, tokenizer, args.eval_problems, cfg.max_new_tokens)
    raw: list[Row] = []
    step_s: dict[int, float] = {}
    clock: dict[str, float] = {"begin": 0.0, "gen": 0.0, "train_begin": 0.0}

    class Timing(TrainerCallback):  # type: ignore[misc]
        def _eval(self, model: Any, step: int) -> None:
            started = time.perf_counter()
            acc = evaluate(model)
            res.eval_s += time.perf_counter() - started
            raw[-1][EVAL_KEY] = acc
            raw[-1][WALL_KEY] = time.perf_counter() - clock["train_begin"]
            progress(method, seed, step, args.steps, acc, step_s.get(step))

        def on_train_begin(self, a: Any, state: Any, control: Any, model: Any = None, **kw: Any):
            res.threads = torch.get_num_threads()
            clock["train_begin"] = time.perf_counter()
            raw.append({"step": 0, "rollouts": 0})
            self._eval(model, 0)

        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any):
            clock["gen"] = 0.0
            clock["begin"] = time.perf_counter()

        def on_step_end(self, a: Any, state: Any, control: Any, model: Any = None, **kw: Any):
            step = int(state.global_step)
            step_s[step] = time.perf_counter() - clock["begin"]
            res.step_s.append(step_s[step])
            res.gen_s.append(clock["gen"] if gen_wrapped else math.nan)
            raw.append({"step": step, "rollouts": step * res.rollouts_per_iter,
                        WALL_KEY: time.perf_counter() - clock["train_begin"]})  # fmt: skip
            if step % args.eval_every == 0 or step == args.steps:
                self._eval(model, step)
            else:
                progress(method, seed, step, args.steps, None, step_s[step])

    extra: dict[str, Any] = {}
    trainer_cls = trl.GRPOTrainer
    if method == "trl-remix":
        from remix_rft.integrations.trl import ReMixGRPOTrainer

        trainer_cls, extra = ReMixGRPOTrainer, {"remix": cfg}
    trainer = trainer_cls(
        model=model,
        reward_funcs=arithmetic_reward,
        args=trl_config(trl, cfg, seed, args, work / f"{method}-s{seed}-r{rnd}"),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Timing()],
        **extra,
    )
    try:  # no per-step log dicts on stdout; our progress lines say enough
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    except ImportError:
        pass
    gen_wrapped = _time_generation(trainer, clock)
    started = time.perf_counter()
    trainer.train()
    res.run_s = time.perf_counter() - started
    res.rows = with_training_clock(raw, step_s)
    if not gen_wrapped:
        res.notes = "generation time not measured (TRL internals differ)"
    return res


def _time_generation(trainer: Any, clock: dict[str, float]) -> bool:
    """Accumulate the time of TRL's generate call into ``clock['gen']`` (best effort)."""
    for name in ("_generate_single_turn", "_generate"):
        inner: Callable[..., Any] | None = getattr(trainer, name, None)
        if inner is None:
            continue

        def timed(*a: Any, _inner: Callable[..., Any] = inner, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                clock["gen"] += time.perf_counter() - started

        setattr(trainer, name, timed)
        return True
    return False


# --------------------------------------------------------------------------- report

log = logging.getLogger("vs_trl")


def progress(method: str, seed: int, step: int, steps: int, acc: float | None, s: float | None):
    parts = [f"[{LABELS[method]} seed {seed}] step {step}/{steps}"]
    if s is not None:
        parts.append(f"{s:.2f} s/iter")
    if acc is not None:
        parts.append(f"eval {acc:.3f}")
    print("  ".join(parts), flush=True)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _fmt(mean: float | None, std: float | None, digits: int, n: int) -> str:
    if mean is None:
        return "—"
    text = f"{mean:.{digits}f}"
    if n > 1 and std is not None:
        text += f" ± {std:.{digits}f}"
    return text


def _mean_or_dash(values: Sequence[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    return f"{statistics.fmean(vals):.2f}" if vals else "—"


def wall_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows with ``time/total_s`` = the wall-clock since training began, evaluations
    included: the fair clock for an asynchronous run, whose producer keeps generating while
    the learner evaluates."""
    return [{**r, "time/total_s": r.get(WALL_KEY, math.nan)} for r in rows]


def full_wall_to_target(run: RunResult, target: float | None) -> float | None:
    hit = rollouts_to_target(wall_rows(run.rows), target) if target is not None else None
    return None if hit is None or hit.wall_s is None or math.isnan(hit.wall_s) else hit.wall_s


def summarize(results: Sequence[RunResult], target: float | None) -> list[dict[str, Any]]:
    table = []
    for method in METHODS:
        runs = [r for r in results if r.method == method]
        if not runs:
            continue
        per_run_s = [statistics.fmean(r.step_s) for r in runs if r.step_s]
        all_steps = [s for r in runs for s in r.step_s]
        gen = [g for r in runs for g in r.gen_s if not math.isnan(g)]
        hits = [rollouts_to_target(r.rows, target) if target is not None else None for r in runs]
        reached = [h for h in hits if h is not None]
        finals = [r.evals()[-1][EVAL_KEY] for r in runs if r.evals()]
        bases = [r.evals()[0][EVAL_KEY] for r in runs if r.evals()]
        rewards = [statistics.fmean(r.rewards[-5:]) for r in runs if r.rewards]
        n = len(runs)
        table.append(
            {
                "method": LABELS[method],
                "runs": n,
                "rollouts_per_iter": runs[0].rollouts_per_iter,
                "s_per_iter": _mean_std(per_run_s),
                "s_per_iter_median": statistics.median(all_steps) if all_steps else None,
                "gen_s_per_iter": statistics.fmean(gen) if gen else None,
                "reached": f"{len(reached)}/{n}",
                "rollouts_to_target": _mean_std([float(h.rollouts or 0) for h in reached]),
                "wall_to_target_s": _mean_std([float(h.wall_s or 0.0) for h in reached]),
                "full_wall_to_target_s": _mean_std(
                    [w for r in runs if (w := full_wall_to_target(r, target)) is not None]
                ),
                "base_acc": _mean_std(bases),
                "final_acc": _mean_std(finals),
                "train_reward_last5": _mean_std(rewards),
            }
        )
    return table


def format_table(table: Sequence[dict[str, Any]]) -> str:
    header = [
        "method", "runs", "rollouts/iter", "s/iter (mean)", "s/iter (median)", "gen s/iter",
        "reached T", "rollouts→T", "train wall→T (s)", "wall→T incl. eval (s)", "base acc",
        "final acc",
        "train reward (last 5)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        n = row["runs"]
        med, gen = row["s_per_iter_median"], row["gen_s_per_iter"]
        cells = [
            row["method"],
            str(n),
            str(row["rollouts_per_iter"]),
            _fmt(*row["s_per_iter"], 2, n),
            "—" if med is None else f"{med:.2f}",
            "—" if gen is None else f"{gen:.2f}",
            row["reached"],
            _fmt(*row["rollouts_to_target"], 0, n),
            _fmt(*row["wall_to_target_s"], 0, n),
            _fmt(*row["full_wall_to_target_s"], 0, n),
            _fmt(*row["base_acc"], 3, n),
            _fmt(*row["final_acc"], 3, n),
            _fmt(*row["train_reward_last5"], 3, n),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_verdict(table: Sequence[dict[str, Any]]) -> str | None:
    """Our GRPO iteration against TRL's: "comparable" when the means differ by less than
    the larger spread over runs."""
    by = {row["method"]: row for row in table}
    trl, ours = by.get(LABELS["trl"]), by.get(LABELS["ours"])
    if not trl or not ours or trl["s_per_iter"][0] is None or ours["s_per_iter"][0] is None:
        return None
    (t, t_std), (o, o_std) = trl["s_per_iter"], ours["s_per_iter"]
    spread = max(t_std or 0.0, o_std or 0.0)
    if abs(o - t) <= spread:
        verdict = "comparable to"
    else:
        verdict = "faster than" if o < t else "SLOWER than"
    return (
        f"Our GRPO iteration ({o:.2f} s) is {verdict} TRL's ({t:.2f} s) on the same settings "
        f"(spread over runs ± {spread:.2f} s): TRL / ours = {t / o:.2f}x (means over "
        f"iterations; medians {trl['s_per_iter_median']:.2f} s vs "
        f"{ours['s_per_iter_median']:.2f} s)."
    )


def wall_verdicts(results: Sequence[RunResult], target: float | None) -> list[str]:
    """ReMix-GRPO's wall-clock to T (sync and async) over TRL's, evaluations included,
    paired by seed and round (the two ran back to back, so both saw the same load)."""
    trl = {(r.seed, r.round): r for r in results if r.method == "trl"}
    lines = []
    for method in ("trl-remix", "remix", "remix-async"):
        ratios = []
        for r in results:
            other = trl.get((r.seed, r.round))
            if r.method != method or other is None:
                continue
            mine, theirs = full_wall_to_target(r, target), full_wall_to_target(other, target)
            if mine is not None and theirs:
                ratios.append(mine / theirs)
        if not ratios:
            continue
        mean, std = _mean_std(ratios)
        assert mean is not None and std is not None
        lines.append(
            f"{LABELS[method]}'s wall-clock to T (evaluations included) is {mean:.2f} ± "
            f"{std:.2f}x TRL GRPOTrainer's ({len(ratios)} paired runs: "
            + ", ".join(f"{x:.2f}" for x in ratios)
            + ")."
        )
    return lines


def per_seed_lines(results: Sequence[RunResult], target: float | None) -> list[str]:
    """Rollouts to T and final accuracy of every run, by seed: the same seed gives every
    method the same model and task, so differences are read per seed (DESIGN.md §11)."""
    if target is None:
        return []
    lines = ["Per seed (round 0), rollouts→T / final accuracy (— : T not reached):", ""]
    for method in METHODS:
        runs = sorted((r for r in results if r.method == method and r.round == 0),
                      key=lambda r: r.seed)  # fmt: skip
        if not runs:
            continue
        cells = []
        for r in runs:
            hit = rollouts_to_target(r.rows, target)
            final = r.evals()[-1][EVAL_KEY] if r.evals() else math.nan
            cells.append(f"seed {r.seed}: {hit.rollouts if hit else '—'} / {final:.3f}")
        lines.append(f"- {LABELS[method]}: " + "; ".join(cells))
    return lines


def describe_model(source: str, snapshot: Path) -> str:
    weights = sorted(snapshot.glob("*.safetensors"))
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in weights)).hexdigest()[:12]
    text = f"{source} (weights sha256 {digest}"
    try:
        info = json.loads((snapshot / "build_info.json").read_text(encoding="utf-8"))
        text += f", {info.get('parameters', '?')} parameters"
    except (OSError, ValueError):
        pass
    return text + ")"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"torch {torch.__version__}"]
    for mod in ("transformers", "trl", "accelerate"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            versions.append(f"{mod} not installed")
    return (
        f"{cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}; "
        + ", ".join(versions)
    )


def write_markdown(
    path: Path,
    table: Sequence[dict[str, Any]],
    results: Sequence[RunResult],
    target: float | None,
    target_source: str,
    args: argparse.Namespace,
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    verdict = speed_verdict(table)
    order = ", ".join(f"{LABELS[r.method]} (seed {r.seed}, round {r.round})" for r in results)
    lines = [
        "# TRL GRPOTrainer vs our GRPO and ReMix-GRPO, sync and async (embedded model and task)",
        "",
        f"Command: `{shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}`",
        "",
        f"Machine: {machine()}; torch threads per run: "
        f"{sorted({r.threads for r in results})}; load average (1/5/15 min) at start "
        f"{'/'.join(f'{x:.1f}' for x in loads[0])}, at end {'/'.join(f'{x:.1f}' for x in loads[1])}"
        " (the machine is shared: other processes' load inflates all timings).",
        "",
        f"Model: {getattr(args, 'model_desc', args.model)}.",
        "",
        f"Settings: {args.steps} iterations, seeds {args.seeds}, {args.rounds} round(s); "
        f"evaluation every {args.eval_every} iterations on the first {args.eval_problems} "
        "held-out problems (greedy pass@1). Run order: " + order + ".",
        "",
        f"Target T = {target:.3f} ({target_source})." if target is not None else "No target.",
        "",
        *([args.merge_note, ""] if getattr(args, "merge_note", None) else []),
        format_table(table),
        "",
    ]
    if verdict:
        lines += [verdict, ""]
    for line in wall_verdicts(results, target):
        lines += [line, ""]
    lines += [*per_seed_lines(results, target), ""]
    lines += [
        "Columns: s/iter is the time of one iteration (generate → score → loss → one optimizer "
        "update for GRPO; ReMix also recomputes log-probs of reused samples and takes its own "
        "number of updates), evaluation and checkpointing excluded; gen s/iter is its "
        "generation share. rollouts→T and train wall→T are read at the first evaluation "
        "where the mean of two consecutive evaluations is ≥ T (docs/design.md §5); train wall is "
        "the cumulative iteration time (evaluation excluded) so the three are comparable. "
        "wall→T incl. eval is the wall-clock since training began, evaluations included: the "
        "fair clock for the asynchronous run, whose producer generates while the learner "
        "evaluates (and whose producer start-up it counts); its s/iter is the learner's "
        "iteration, waiting for data included. Means ± std are over runs that reached T.",
        "",
        "What counts as an iteration: TRL with `per_device_train_batch_size=128`, "
        "`steps_per_generation=1`, `gradient_accumulation_steps=1`, `num_iterations=1` "
        "generates 16 prompts x 8 completions and takes one optimizer step per global step, "
        "which is one of our iterations. Because its samples are exactly on-policy, TRL skips "
        "the no-grad forward pass that recomputes log π_old (`old_per_token_logps = None`) "
        "and uses the detached current log-probs; so does our trainer whenever an iteration "
        "takes a single update (`Trainer.single_update`), reused samples included. "
        "TRL computes token entropies in "
        "its loss forward; we do not. Both sample from the full distribution (TRL "
        "`top_k=0`, ours `top_k=None`). Differences that remain: TRL's dataloader order vs "
        "our prompt sampler, and TRL's per-step logging.",
        "",
        "Per-run iteration times (s, mean / min / max):",
        "",
    ]
    for r in results:
        if r.step_s:
            lines.append(
                f"- {LABELS[r.method]} seed {r.seed} round {r.round}: "
                f"{statistics.fmean(r.step_s):.2f} / {min(r.step_s):.2f} / {max(r.step_s):.2f}"
                f" over {len(r.step_s)} iterations; generation {_mean_or_dash(r.gen_s)} s/iter"
                + (
                    f", no-grad log-prob pass {_mean_or_dash(r.precompute_s)} s/iter"
                    if r.precompute_s
                    else ""
                )
                + f"; run wall-clock {r.run_s:.0f} s incl. {r.eval_s:.0f} s evaluation"
                + (f" ({r.notes})" if r.notes else "")
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="iterations per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--rounds", type=int, default=1,
        help="repeat every run this many times, alternating the order (timing fairness)",
    )  # fmt: skip
    p.add_argument(
        "--target", type=float, default=None,
        help="target accuracy (default: our GRPO's plateau, mean of its last 3 evaluations, "
        "averaged over seeds; TRL's if ours is not run)",
    )  # fmt: skip
    p.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-problems", type=int, default=200)
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads per run (async: one of them goes to the producer process)",
    )  # fmt: skip
    p.add_argument("--max-staleness", type=int, default=1, help="async runs: η")
    p.add_argument("--model", default="embedded")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/vs_trl.md"))
    p.add_argument("--json", type=Path, default=None, help="also write every run's rows here")
    p.add_argument(
        "--merge", type=Path, nargs="+", default=None, metavar="JSON",
        help="train nothing: one table from the --json files of earlier runs (e.g. one "
        "process per seed, run in parallel)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.rounds < 1:
        p.error("--steps, --eval-every and --rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    methods = [m for m in METHODS if m in args.only]
    if any(m.startswith("trl") for m in methods):
        import_trl()  # fail before anything trains
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    if args.merge:
        results = merged_results(args)
        methods = [m for m in METHODS if any(r.method == m for r in results)]
        return report(args, methods, results, (os.getloadavg(), os.getloadavg()))
    source_model = model_path(args.model)  # a missing model fails now
    loads_start = os.getloadavg()
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="vs_trl-") as tmp:
        work = Path(tmp)
        # Every run trains a private snapshot: a rebuild of the embedded model while
        # the benchmark runs must not hand later runs a different model.
        args.model = str(work / "model")
        shutil.copytree(source_model, args.model)
        args.model_desc = describe_model(source_model, Path(args.model))
        print(f"model: {args.model_desc}", flush=True)
        runs = 0
        for rnd in range(args.rounds):
            for seed in args.seeds:
                order = methods if runs % 2 == 0 else methods[::-1]
                runs += 1
                for method in order:
                    torch.set_num_threads(args.threads)
                    print(f"== {LABELS[method]}, seed {seed}, round {rnd}", flush=True)
                    if method.startswith("trl"):
                        results.append(run_trl(seed, rnd, args, work, method))
                    else:
                        results.append(run_ours(method, seed, rnd, args, work))
    return report(args, methods, results, (loads_start, os.getloadavg()))


def merged_results(args: argparse.Namespace) -> list[RunResult]:
    """The runs of earlier ``--json`` files; the settings are taken from the first run's
    (every file must have used the same ``--steps`` and ``--eval-every``)."""
    results = [
        RunResult(**row)
        for path in args.merge
        for row in json.loads(path.read_text(encoding="utf-8"))
    ]
    args.seeds = sorted({r.seed for r in results})
    args.model_desc = f"{args.model} (see the merged runs' logs for the snapshot hash)"
    args.merge_note = (
        f"Merged from {len(args.merge)} --json files (runs made in separate processes, e.g. "
        "one per seed in parallel; the load averages above are those of the merge, not of "
        "the runs, and the run order below is the files' order)."
    )
    return results


def report(
    args: argparse.Namespace,
    methods: list[str],
    results: list[RunResult],
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> int:
    """Print and write the table of ``results``."""
    target, source = args.target, "--target"
    if target is None:
        ref = "ours" if "ours" in methods else methods[0]
        plateaus = [plateau_accuracy(r.rows) for r in results if r.method == ref]
        plateaus = [p for p in plateaus if p is not None]
        if plateaus:
            target = statistics.fmean(plateaus)
            source = f"plateau of {LABELS[ref]}: mean of its last 3 evaluations, over its runs"
    table = summarize(results, target)
    print()
    print(format_table(table))
    for line in (speed_verdict(table), *wall_verdicts(results, target)):
        if line:
            print(line)
    write_markdown(args.out, table, results, target, source, args, loads)
    print(f"wrote {args.out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps([r.__dict__ for r in results], indent=1, default=str), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
