"""``remix train --dry-run``: load and check everything a run needs, print its plan, train nothing."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from remix_rft.data.builtin import is_builtin
from remix_rft.data.math_dataset import DatasetError
from remix_rft.engines.models import resolve_model_path
from remix_rft.engines.policy import load_tokenizer
from remix_rft.trainer.config import TrainConfig
from remix_rft.trainer.io import check_out_dir
from remix_rft.trainer.memory_plan import Hardware, PlanError, plan_text
from remix_rft.trainer.tasks import build_task

EXIT_USAGE = 2


def plan_lines(cfg: TrainConfig) -> list[str]:
    model_path = resolve_model_path(cfg.model)
    try:
        tokenizer = load_tokenizer(cfg.model)
        tokenizer_line = (
            f"tokenizer vocab {len(tokenizer)}, "
            f"chat template {'yes' if getattr(tokenizer, 'chat_template', None) else 'no'}"
        )
    except OSError as err:  # a hub id on a machine without the hub or a local copy
        tokenizer_line = (
            f"tokenizer NOT CHECKED: not available on this machine ({type(err).__name__})"
        )
    check_out_dir(cfg.resolved_out_dir())
    task, n_train = _task_and_train_count(cfg)
    n_eval = len(task.eval_problems())
    train_checked = task.train_problems() if isinstance(n_train, int) else []
    fresh = cfg.fresh_batch_size()
    off = cfg.offpolicy_batch_size()
    budget = cfg.rollouts_for_steps(cfg.steps)
    lines = [
        f"run            {cfg.name} -> {cfg.resolved_out_dir()}",
        f"algorithm      {cfg.algorithm}",
        f"model          {model_path} ({tokenizer_line})",
        f"task           {cfg.task.name}: "
        + (f"{n_train} train" if isinstance(n_train, int) else f"train data {n_train}")
        + f" / {n_eval} held-out problems"
        + _skipped_text(train_checked, task.eval_problems()),
        f"reward         {task.pool.spec} in "
        + (f"{task.pool.workers} worker processes" if task.pool.workers else "the trainer process")
        + f" (limit {cfg.task.reward_timeout_s:g} s per response)",
        f"steps          {cfg.steps}",
        f"per step       {cfg.prompts_per_step} prompts x {cfg.group_size} responses = {fresh} rollouts"
        f" (<= {cfg.max_new_tokens} new tokens each)",
        f"training batch {fresh} fresh + {off} reused (window {cfg.window}, "
        f"off-policy fraction {cfg.offpolicy_fraction})",
        f"UTD ratio      {_count(cfg.updates_per_step(), 'optimizer update')} per step "
        f"(minibatch {cfg.minibatch_size}, epochs {cfg.epochs}); "
        f"{cfg.planned_updates()} in the run (the {cfg.lr_schedule} lr schedule's length)",
        f"KL             beta {cfg.kl_coef}, lambda {_lambda_text(cfg)}, "
        f"estimator {cfg.kl_estimator}",
        "reincarnation  "
        + (f"at step {cfg.reincarnation_step}" if cfg.reincarnation_step else "never")
        + (
            f" (or after {cfg.reincarnation_patience} evaluations without gain)"
            if cfg.reincarnation_patience
            else ""
        ),
        f"budget         {budget} rollouts ({budget / 1e6:.3f}M), "
        f"<= {budget * cfg.max_new_tokens / 1e6:.1f}M generated tokens",
        f"evaluation     every {_eval_interval(cfg)} on {min(cfg.eval_problems, n_eval)} "
        "held-out problems",
    ]
    if cfg.reincarnates:
        lines.insert(-2, _post_reincarnation_line(cfg))
    return lines


def _skipped_text(*loaded: object) -> str:
    """`` (3 bad rows or lines skipped: task.skip_bad_rows)`` when the loads skipped any."""
    skipped = sum(int(getattr(problems, "skipped", 0)) for problems in loaded)
    return f" ({skipped} bad rows or lines skipped: task.skip_bad_rows)" if skipped else ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _post_reincarnation_line(cfg: TrainConfig) -> str:
    after = cfg.phase(reincarnated=True)
    return (
        f"after reinc.   {after.prompts_per_step} prompts x {after.group_size} responses = "
        f"{after.fresh_batch_size} rollouts, on-policy, "
        f"{_count(after.updates(after.fresh_batch_size), 'update')} per step "
        f"(minibatch {after.minibatch_size}, epochs {after.epochs}), "
        f"lr {after.lr:g}, KL beta {after.kl_coef}"
    )


def print_plan(cfg: TrainConfig, hardware: Hardware | None = None) -> int:
    try:
        lines = plan_lines(cfg)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"remix train --dry-run: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        lines += plan_text(cfg, hardware or Hardware(device=_plan_device(cfg)))
    except PlanError as err:  # a hub model outside the built-in table, without network
        lines.append(f"memory plan    NOT MADE: {err}")
    print("\n".join(lines))
    print("dry run: config and data are valid; nothing was trained")
    return 0


def _lambda_text(cfg: TrainConfig) -> str:
    """``0.5``, or the schedule's pieces: ``1.0 (steps 1-59), 0.9 (60-69), ...``."""
    schedule = cfg.kl_lambda_schedule_fn()
    if schedule is None:
        return str(cfg.kl_lambda)
    points = schedule.breakpoints(cfg.steps)
    pieces = []
    for i, (first, value) in enumerate(points):
        last = points[i + 1][0] - 1 if i + 1 < len(points) else cfg.steps
        pieces.append(f"{value:g} (steps {first}-{last})")
    return f"{cfg.kl_lambda_schedule} schedule: " + ", ".join(pieces)


def _eval_interval(cfg: TrainConfig) -> str:
    if cfg.eval_every_rollouts:
        return f"{cfg.eval_every_rollouts} rollouts"
    return f"{cfg.eval_every} steps"


def _plan_device(cfg: TrainConfig) -> str:
    """The plan is per GPU unless the run is pinned to the CPU."""
    return "cpu" if cfg.device == "cpu" else "cuda"


def _is_hub_name(source: str) -> bool:
    """A dataset named on the Hugging Face hub: what ``data/math_dataset.py`` hands to
    ``datasets.load_dataset`` (not shipped, not a local file, not a file name)."""
    path = Path(source).expanduser()
    return (
        bool(source) and not is_builtin(source) and not path.exists()
        and path.suffix not in (".json", ".jsonl", ".parquet")
        and not source.startswith((".", "/", "~"))
    )  # fmt: skip


def _task_and_train_count(cfg: TrainConfig) -> tuple[Any, int | str]:
    """The task, and its training problems' count, or why a hub dataset was not checked
    (a machine without the hub can still check the rest of the plan)."""
    try:
        task = build_task(cfg.task, cfg.model)
        return task, len(task.train_problems())
    except DatasetError as err:
        if not (_is_hub_name(cfg.task.train_path) and cfg.task.eval_path):
            raise
        why = str(err).splitlines()[0][:160]
    # the reward and the held-out set, checked with the eval data standing in
    task = build_task(dataclasses.replace(cfg.task, train_path=cfg.task.eval_path), cfg.model)
    return task, f"NOT CHECKED ({why})"
