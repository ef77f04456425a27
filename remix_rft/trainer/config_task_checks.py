"""Checks of the ``task:`` section (data, reward functions, held-out evaluation), and the
one-line error every configuration check raises (:func:`check`). The run's other keys are
checked in :mod:`remix_rft.trainer.config_checks`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from remix_rft.data.builtin import BUILTIN_DATASETS, BUILTIN_PREFIX, is_builtin
from remix_rft.reward_fns import RewardError, is_file_spec, parse_reward_spec
from remix_rft.trainer.config_fields import ConfigError, TaskConfig


def check(ok: bool, key: str, allowed: str, value: Any) -> None:
    """Raise :class:`ConfigError` naming ``key``, what is ``allowed`` and ``value`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': must be {allowed}, got {value!r}")


def relative_to_cwd(path: str | Path) -> str:
    """`` (relative to the working directory D)`` for a relative path, else nothing: where a
    command-line path was looked for (a config file's own paths follow the file)."""
    if Path(path).expanduser().is_absolute():
        return ""
    return f" (relative to the working directory {Path.cwd()})"


def _validate_reward_funcs(task: TaskConfig) -> None:
    """``task.reward_funcs`` (TRL's protocol): specs that parse, files that exist, one
    weight each (or none), and not together with ``reward_fn``; answer_key "" needs them."""
    check(not (task.reward_fn and task.reward_funcs), "task.reward_funcs",
          "empty when task.reward_fn is set (one or the other)", task.reward_funcs)  # fmt: skip
    for spec in task.reward_funcs:
        try:
            target, _ = parse_reward_spec(spec)
        except RewardError as err:
            raise ConfigError(f"config key 'task.reward_funcs': {err}") from None
        if is_file_spec(target):
            check(Path(target).expanduser().is_file(), "task.reward_funcs", "existing files",
                  target)  # fmt: skip
    check(not task.reward_weights or len(task.reward_weights) == len(task.reward_funcs),
          "task.reward_weights", f"{len(task.reward_funcs)} weights (one per reward_funcs "
          "entry) or none", task.reward_weights)  # fmt: skip
    check(bool(task.answer_key) or bool(task.reward_funcs or task.reward_fn), "task.answer_key",
          "a column name (rows without answers need task.reward_funcs or reward_fn)",
          task.answer_key)  # fmt: skip


def validate_task(task: TaskConfig) -> None:
    """Check the ``task:`` section; raise :class:`ConfigError` naming the key."""
    if task.name in ("math", "custom"):
        check(
            bool(task.train_path),
            "task.train_path",
            f"a dataset file, builtin:NAME or Hugging Face dataset id for task.name={task.name}",
            task.train_path,
        )
    for key in ("train_path", "eval_path"):
        value = getattr(task, key)
        check(
            not is_builtin(value) or value.removeprefix(BUILTIN_PREFIX) in BUILTIN_DATASETS,
            f"task.{key}",
            "a file, a Hugging Face dataset id, or one of "
            + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_DATASETS),
            value,
        )
    if task.name == "custom":
        check(
            bool(task.reward_fn or task.reward_funcs),
            "task.reward_fn",
            "path/to/file.py:function or module:function for task.name=custom",
            task.reward_fn,
        )
    _validate_reward_funcs(task)
    if task.reward_fn:
        try:
            target, _ = parse_reward_spec(task.reward_fn)
        except RewardError as err:
            raise ConfigError(f"config key 'task.reward_fn': {err}") from None
        if is_file_spec(target):
            check(
                Path(target).expanduser().is_file(), "task.reward_fn",
                f"an existing file{relative_to_cwd(target)}", target,
            )  # fmt: skip
    check(
        task.reward_workers >= -1,
        "task.reward_workers",
        "-1 (auto), 0 (in the trainer process) or a number of worker processes",
        task.reward_workers,
    )
    check(task.reward_timeout_s > 0, "task.reward_timeout_s", "> 0 seconds", task.reward_timeout_s)
    check(
        math.isfinite(task.accuracy_threshold), "task.accuracy_threshold", "a finite number",
        task.accuracy_threshold,
    )  # fmt: skip
    check(
        0 <= task.holdout_fraction < 1, "task.holdout_fraction", "in [0, 1)", task.holdout_fraction
    )
    check(task.holdout_max >= 1, "task.holdout_max", "an integer >= 1", task.holdout_max)
