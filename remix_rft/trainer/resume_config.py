"""A resume's settings against the run's own (docs/design.md §1.6).

``remix train --resume RUN_DIR key=value`` (or :func:`remix_rft.trainer.loop.resume` with a
config) may change settings, but not silently: every changed key is one line on stderr, and
keys that change what the run *is* (the model, the task, the seed, the algorithm, the batch
geometry) are refused unless ``--allow-config-change KEY[,KEY]`` names them — a changed seed or
dataset would silently reorder the prompts of the steps still to come. Every config the run
ran under is kept: ``config.yaml`` is the current one, ``config.history/`` the earlier ones.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remix_rft.engines.distributed import DistEnv
from remix_rft.trainer import checkpoint as ckpt
from remix_rft.trainer import state as saved_state
from remix_rft.trainer.config import ConfigError, TrainConfig, build_config, read_yaml

CONFIG_FILE = "config.yaml"
HISTORY_DIR = "config.history"

# What a run means: its model, task and data, seed, algorithm and batch geometry. (`window`
# is refused by the replay buffer itself, with its own message.)
PROTECTED = (
    "model", "critic_model", "seed", "algorithm", "advantage_estimator", "policy_loss",
    "prompts_per_step", "group_size", "minibatch_size", "epochs", "offpolicy_fraction",
    "post_reincarnation_prompts_per_step", "post_reincarnation_group_size",
    "post_reincarnation_minibatch_size", "post_reincarnation_epochs", "task",
)  # fmt: skip
# task keys that only say how the task runs, not what it is
OPERATIONAL_TASK_KEYS = ("task.reward_workers", "task.reward_timeout_s")


@dataclass(frozen=True)
class Change:
    key: str  # flat, task keys as task.name
    old: Any
    new: Any

    @property
    def protected(self) -> bool:
        if self.key in OPERATIONAL_TASK_KEYS:
            return False
        return self.key.split(".")[0] in PROTECTED

    def line(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def _flat(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def config_changes(stored: TrainConfig, new: TrainConfig) -> list[Change]:
    """The keys whose values differ, in the config's order."""
    old_flat, new_flat = _flat(stored), _flat(new)
    return [Change(k, old_flat.get(k), v) for k, v in new_flat.items() if old_flat.get(k) != v]


def parse_allowed(spec: Iterable[str] | str | None) -> tuple[str, ...]:
    """``--allow-config-change seed,task.train_path`` -> the keys; unknown keys are refused."""
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else [k for s in spec for k in s.split(",")]
    keys = tuple(k.strip() for k in items if k.strip())
    known = set(_flat(TrainConfig())) | {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(f"--allow-config-change: unknown config key(s) {', '.join(unknown)}")
    return keys


def _allowed(change: Change, allowed: tuple[str, ...]) -> bool:
    return change.key in allowed or change.key.split(".")[0] in allowed  # "task": all of it


def check_changes(run_dir: Path, cfg: TrainConfig, allowed: tuple[str, ...]) -> list[Change]:
    """The changes against ``run_dir/config.yaml``; ConfigError naming the refused ones."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():  # a run directory from before config.yaml: nothing to compare
        return []
    try:
        stored = build_config(read_yaml(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    changes = config_changes(stored, cfg)
    refused = [c for c in changes if c.protected and not _allowed(c, allowed)]
    if refused:
        keys = ",".join(c.key for c in refused)
        raise ConfigError(
            f"resume of {run_dir}: {'; '.join(c.line() for c in refused)} would change what the "
            f"run is (model, task, seed, algorithm, batch geometry); start a new run, or resume "
            f"with --allow-config-change {keys}"
        )
    return changes


def keep_history(run_dir: Path, step: int) -> Path | None:
    """Copy the current ``config.yaml`` (the one the run ran under up to ``step``) into
    ``config.history/`` before it is replaced; the copy's path."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    history = run_dir / HISTORY_DIR
    history.mkdir(exist_ok=True)
    index = len(list(history.glob("*.yaml"))) + 1
    target = history / f"{index:03d}-until-step_{step:06d}.yaml"
    shutil.copy2(path, target)
    return target


def prepare_resume(
    env: DistEnv, run_dir: Path, cfg: TrainConfig, allow: Sequence[str] | str | None
) -> tuple[Path | None, list[Change]]:
    """Before any model is loaded: the settings compared, the checkpoint chosen (another
    world size refused), and retention applied with this run's ``keep_checkpoints`` (a run
    stopped by a full disk frees space by resuming with fewer)."""
    allowed = parse_allowed(allow)
    changes = env.on_main(lambda: check_changes(run_dir, cfg, allowed))
    # Rank 0 hashes the files; every rank gets its choice (or NoValidCheckpointError).
    choice = env.on_main(lambda: ckpt.resolve_resume_checkpoint(run_dir))
    note = choice.summary()
    if env.is_main:
        if note:
            print(f"remix train: {note}", file=sys.stderr)
        for change in changes:
            print(f"remix train: resumed with a changed setting: {change.line()}", file=sys.stderr)
    checkpoint = choice.path
    if checkpoint is not None:  # another world size is refused before any model is loaded
        saved_state.check_resume(checkpoint, env.world_size, env.enabled)
        root = ckpt.checkpoint_root(run_dir)
        env.on_main(lambda: ckpt.prune_checkpoints(
            root, cfg.keep_checkpoints, keep_best=cfg.keep_best_checkpoint, protect=checkpoint,
        ))  # fmt: skip
    return checkpoint, changes
