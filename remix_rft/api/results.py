"""What :meth:`remix_rft.Trainer.train` returns: the run's summary and its metrics rows, typed.

The rows are exactly the lines of the run's ``metrics.jsonl`` (the same dicts the loop
writes), so a script and ``remix train`` of the same config and seed see the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepMetrics:
    """One metrics row: the common fields typed, every logged value in ``values``."""

    step: int
    rollouts: int
    tokens: int
    eval_accuracy: float | None  # held-out accuracy, on the rows where the run evaluated
    reward_mean: float | None  # mean reward of this iteration's fresh samples (None: row 0)
    values: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StepMetrics:
        def number(key: str) -> float | None:
            value = row.get(key)
            return None if value is None else float(value)

        return cls(
            step=int(row["step"]), rollouts=int(row.get("rollouts", 0)),
            tokens=int(row.get("tokens", 0)), eval_accuracy=number("eval/accuracy"),
            reward_mean=number("reward/mean"), values=dict(row),
        )  # fmt: skip

    def __getitem__(self, key: str) -> Any:
        """Any logged metric by its ``metrics.jsonl`` name, e.g. ``row["loss/policy"]``."""
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


@dataclass(frozen=True)
class RunSummary:
    """``summary.json``: what the run is and what it reached."""

    algorithm: str
    name: str
    base_eval_accuracy: float | None
    final_eval_accuracy: float | None
    best_eval_accuracy: float | None
    rollouts: int
    tokens: int
    updates: int
    steps: int
    reincarnated_at: int | None
    wall_time_s: float
    preempted: bool = False  # stopped on a preemption signal, checkpointed (resume it)
    signal: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """The summary, every metrics row (row 0: the base model's evaluation), the run directory."""

    summary: RunSummary
    rows: list[StepMetrics]
    run_dir: Path

    def evaluations(self) -> list[tuple[int, float]]:
        """(step, held-out accuracy) of every evaluation, the base model's (step 0) first."""
        return [(r.step, r.eval_accuracy) for r in self.rows if r.eval_accuracy is not None]
