"""``samples.jsonl``: what the model generated, beside the metrics it produced.

One JSON object per logged response: ``step`` (the row of ``metrics.jsonl`` it belongs to),
``kind`` (``train``: one of the iteration's fresh responses; ``eval``: a held-out response of
that step's evaluation), ``prompt`` (as the model saw it), ``response``, ``reward``,
``truncated`` (cut at the token budget), ``advantage`` (train rows; null on eval rows),
``version`` (the policy version that generated it: train rows the iteration whose weights
sampled it, eval rows the step evaluated) and ``problem`` (the problem id; eval rows).
How many: ``log_samples`` fresh responses per iteration, every response to the first
``log_eval_problems`` held-out problems per evaluation. The trackers of ``report_to`` get
the same rows as a table (:mod:`remix_rft.trainer.trackers`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from remix_rft.data.buffer import Sample
from remix_rft.trainer.io import atomic_write_text
from remix_rft.trainer.metrics import _append_line
from remix_rft.trainer.tasks import EvalResponse
from remix_rft.trainer.trackers import Tracker

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"


@dataclass(frozen=True)
class SampleRow:
    step: int
    kind: str  # "train" or "eval"
    prompt: str
    response: str
    reward: float
    truncated: bool
    advantage: float | None
    version: int
    problem: str | None = None


def train_rows(step: int, fresh: Sequence[Sample], tokenizer: Any, count: int) -> list[SampleRow]:
    """The first ``count`` fresh samples of iteration ``step`` (the first group's first)."""

    def text(ids: Any, skip: bool = True) -> str:
        return str(tokenizer.decode(ids.tolist(), skip_special_tokens=skip))

    return [
        SampleRow(
            step=step,
            kind="train",
            prompt=text(s.prompt_ids, skip=False),  # as the model saw it, like eval rows
            response=text(s.response_ids),
            reward=float(s.reward),
            truncated=not s.finished,
            advantage=float(s.advantage),
            version=s.policy_version,
        )  # fmt: skip
        for s in fresh[:count]
    ]


def eval_rows(step: int, responses: Sequence[EvalResponse]) -> list[SampleRow]:
    return [
        SampleRow(
            step=step,
            kind="eval",
            prompt=r.prompt,
            response=r.response,
            reward=r.reward,
            truncated=r.truncated,
            advantage=None,
            version=step,
            problem=r.problem.id,
        )  # fmt: skip
        for r in responses
    ]


class SamplesLog:
    """The JSONL file, and the trackers of ``report_to`` that get the same rows as a table."""

    def __init__(self, path: str | Path, trackers: Sequence[Tracker] = ()) -> None:
        self.path = Path(path)
        self.trackers = list(trackers)

    def to_trackers(self, step: int, rows: Sequence[SampleRow]) -> None:
        """The rows of ``step`` to the trackers, before the step's metrics row (W&B files
        them with that row's history entry)."""
        if rows:
            table = [asdict(r) for r in rows]
            for tracker in self.trackers:
                tracker.log_samples(step, table)

    def append(self, rows: Sequence[SampleRow]) -> None:
        """The rows to the file, after their step's row is in ``metrics.jsonl``."""
        if rows:
            data = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows)
            _append_line(self.path, data.encode())

    def read(self) -> list[dict[str, Any]]:
        """Whole, valid lines (a line torn by a kill is dropped)."""
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
        return rows

    def truncate_after(self, step: int) -> None:
        """Keep rows up to ``step`` (the checkpoint being resumed): they are logged again."""
        if not self.path.is_file():
            return
        kept = [r for r in self.read() if r["step"] <= step]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        atomic_write_text(self.path, text)


class TruncationWatch:
    """Warns (stderr, once per streak) when more than ``fraction`` of an iteration's fresh
    responses are cut at ``max_new_tokens`` for ``steps`` iterations in a row: the rewards
    of such a run say more about the budget than about the policy."""

    def __init__(self, fraction: float, steps: int, max_new_tokens: int) -> None:
        self.fraction, self.steps, self.max_new_tokens = fraction, steps, max_new_tokens
        self.streak: list[float] = []

    def observe(self, step: int, finished_frac: float | None) -> str | None:
        """The warning given at ``step``, if any."""
        if not self.steps or finished_frac is None:
            return None
        cut = 1.0 - finished_frac
        if cut <= self.fraction:
            self.streak = []
            return None
        self.streak.append(cut)
        if len(self.streak) != self.steps:
            return None
        message = (
            f"steps {step - self.steps + 1}-{step}: {min(self.streak):.0%} or more of the "
            f"responses were cut at max_new_tokens={self.max_new_tokens} "
            f"(truncation_warn_fraction={self.fraction:g}, {self.steps} iterations in a row); "
            "raise max_new_tokens, or see samples.jsonl for what the model writes"
        )
        log.warning("%s", message)
        return message
