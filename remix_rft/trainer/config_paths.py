"""Relative paths written in a config file are relative to that file's directory.

A config names files it reads: the model or critic directory, the train and eval data and the
reward function's file. Written in a YAML file, a relative one is resolved against the file's
directory, so a config works from any working directory (``remix train
examples/countdown/countdown-remix-grpo.yaml`` finds ``data/train.jsonl`` beside it); given as a
``key=value`` override on the command line it stays relative to the working directory, as a
shell user expects. ``out_dir``, where the run writes, follows the working directory either way
(like its default ``runs/<name>``). See docs/design.md §4 ("relative paths of a config").

A path found only relative to the working directory (configs written before this rule) is still
used, with a warning; one found in neither place, that cannot be a hub id or a dataset name, is
a :class:`ConfigError` naming the key and both bases.
"""

from __future__ import annotations

import logging
from pathlib import Path

from remix_rft.data.builtin import is_builtin
from remix_rft.reward_fns import is_file_spec
from remix_rft.trainer.config_fields import ConfigError, TrainConfig

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def _model_is_path(value: str) -> bool:
    """``./x``, ``/x``, ``a/b/c``: not a hub id (``org/name``) nor ``embedded``."""
    return value.startswith((".", "/", "~")) or value.count("/") >= 2


def _data_is_path(value: str) -> bool:
    """A data file by its name; ``org/name`` may be a Hugging Face dataset id."""
    return value.endswith(DATA_SUFFIXES) or value.startswith((".", "/", "~"))


def resolve_path(key: str, value: str, base: Path, must_be_path: bool) -> str:
    """``value`` resolved against ``base`` (the config file's directory) when it is a
    relative path found there; else as found relative to the working directory (with a
    warning); else unchanged, or a ConfigError when it can only be a path."""
    if not value or Path(value).expanduser().is_absolute() or value.startswith("~"):
        return value
    beside_config = base / value
    if beside_config.exists():
        return str(beside_config)
    in_cwd = Path.cwd() / value
    if in_cwd.exists():
        log.warning(
            "config key '%s': %s is not in the config file's directory %s; using %s relative "
            "to the working directory (write it relative to the config file)",
            key, value, base, in_cwd,
        )  # fmt: skip
        return str(in_cwd)
    if must_be_path:
        raise ConfigError(
            f"config key '{key}': {value} not found relative to the config file's directory "
            f"({beside_config} does not exist; relative paths in a config file are resolved "
            "against its directory)"
        )
    return value


def _reward_spec(key: str, spec: str, base: Path) -> str:
    """``path/file.py:fn`` with the file resolved; ``module:fn`` unchanged."""
    target, sep, name = spec.rpartition(":")
    if not sep or not is_file_spec(target):
        return spec
    return f"{resolve_path(key, target, base, must_be_path=True)}:{name}"


PATH_KEYS = ("model", "critic_model", "task.train_path", "task.eval_path", "task.reward_fn")


def _resolve_key(key: str, value: str, base: Path) -> str:
    if key == "task.reward_fn":
        return _reward_spec(key, value, base)
    if key.startswith("task."):
        return value if is_builtin(value) else resolve_path(key, value, base, _data_is_path(value))
    return resolve_path(key, value, base, _model_is_path(value))


def resolve_config_paths(cfg: TrainConfig, base: Path, skip: set[str] | None = None) -> None:
    """Resolve, in place, the relative paths the config file wrote (see the module doc),
    less the keys in ``skip`` (those the command line overrides)."""
    base = base.resolve()
    for key in PATH_KEYS:
        if skip and key in skip:
            continue
        owner, attr = (
            (cfg.task, key.removeprefix("task.")) if key.startswith("task.") else (cfg, key)
        )
        setattr(owner, attr, _resolve_key(key, getattr(owner, attr), base))
    if not (skip and "task.reward_funcs" in skip):  # TRL-protocol functions: file specs too
        funcs = cfg.task.reward_funcs
        cfg.task.reward_funcs = [_reward_spec("task.reward_funcs", s, base) for s in funcs]
