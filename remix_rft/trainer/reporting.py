"""What the loop in ``loop.py`` reports (docs/design.md §1.4): held-out evaluation, the
``metrics.jsonl`` row of each step followed by its ``samples.jsonl`` rows, and the summary,
a preempted run's too.

A mixin of :class:`remix_rft.trainer.loop.Trainer`, which builds the attributes declared here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from remix_rft.data.tasks import Problem, Task
from remix_rft.engines.distributed import DistEnv
from remix_rft.engines.rollout import RolloutEngine
from remix_rft.trainer import checkpoint as ckpt
from remix_rft.trainer import rows
from remix_rft.trainer.config import TrainConfig
from remix_rft.trainer.metrics import MetricsLog
from remix_rft.trainer.preemption import PreemptionHandler
from remix_rft.trainer.producer import PromptFormatter
from remix_rft.trainer.samples import SampleRow, SamplesLog, TruncationWatch, eval_rows
from remix_rft.trainer.state import Counters
from remix_rft.trainer.tasks import HeldOut, held_out_eval

log = logging.getLogger("remix_rft.trainer.loop")  # the loop's own logger, as before the split

StepCallback = Callable[[dict[str, Any]], None]


class Reporting:
    cfg: TrainConfig
    dist: DistEnv
    task: Task
    eval_problems: list[Problem]
    prompt_text: PromptFormatter
    counters: Counters
    metrics: MetricsLog
    samples: SamplesLog | None  # None on ranks other than 0
    pending_samples: list[SampleRow]  # written after this step's metrics row
    truncation: TruncationWatch
    ready_engine: Callable[[], AbstractContextManager[RolloutEngine]]

    def evaluate(self) -> float:
        """Held-out accuracy of the current policy."""
        return self.evaluate_held_out().accuracy

    def evaluate_held_out(self) -> HeldOut:
        """Held-out accuracy and mean reward of the current policy (``tasks.held_out_eval``),
        with every response to the first ``log_eval_problems`` problems."""
        with self.ready_engine() as engine:
            return held_out_eval(
                self.cfg, self.task, self.eval_problems, self.prompt_text, engine, self.dist,
                self.counters.step, keep=self.cfg.log_eval_problems,
            )  # fmt: skip

    def record_evaluation(self, row: dict[str, Any]) -> None:
        """Evaluate now: ``eval/accuracy`` and ``eval/reward_mean`` into ``row``, the
        responses into ``samples.jsonl`` (after the row)."""
        held_out = self.evaluate_held_out()
        row["eval/accuracy"], row["eval/reward_mean"] = held_out.accuracy, held_out.reward_mean
        self.counters.record_eval(held_out.accuracy)
        self.pending_samples += eval_rows(self.counters.step, held_out.responses)

    def evaluate_base(self, wall: Callable[[], float], on_step: StepCallback | None) -> None:
        """Row 0: the base model's held-out accuracy, before any update."""
        started, c = time.perf_counter(), self.counters
        row0: dict[str, Any] = {"step": 0, "rollouts": 0, "tokens": 0}
        self.record_evaluation(row0)
        c.base_eval_accuracy = row0["eval/accuracy"]
        row0.update({"time/step_s": time.perf_counter() - started, "time/total_s": wall()})
        self.log_row(row0)
        if on_step:
            on_step(row0)

    def log_row(self, row: dict[str, Any]) -> None:
        """The metrics row, then the samples of its step; a truncation streak warned."""
        if self.samples is not None:
            self.samples.to_trackers(int(row["step"]), self.pending_samples)
        self.metrics.append(row)
        if self.samples is not None:
            self.samples.append(self.pending_samples)
        self.pending_samples = []
        if "finished/frac" in row:
            self.truncation.observe(int(row["step"]), row["finished/frac"])

    def preemption_requested(self, pre: PreemptionHandler) -> bool:
        """Whether any rank got a preemption signal: every rank stops at the same step."""
        return self.dist.max(float(pre.requested)) > 0

    def stop_preempted(self, pre: PreemptionHandler, step: int) -> dict[str, Any]:
        """After the checkpoint of ``step``: flush the trackers, the summary marked preempted."""
        self.metrics.close()
        log.warning(
            "stopped at step %d on %s; checkpoint %s", step,
            pre.signal_name or "another rank's preemption signal",
            ckpt.step_dir_name(step) if step else "not needed (nothing trained yet)",
        )  # fmt: skip
        return {**self.summary(), "preempted": True, "signal": pre.signal_name}

    def summary(self) -> dict[str, Any]:
        return rows.run_summary(self.cfg, self.counters)
