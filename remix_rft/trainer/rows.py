"""The rows of ``metrics.jsonl``: what one iteration did, as the loop hands it over.

Pure functions of what the loop already holds (counters, the rollout, the batch, the
π_k pass and the update's statistics), so the loop reads as its phases and every metric
name of an iteration is written in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from remix_rft.data.batch import TrainBatch
from remix_rft.trainer.config import TrainConfig
from remix_rft.trainer.metrics import group_signal
from remix_rft.trainer.producer import Rollout
from remix_rft.trainer.state import Counters
from remix_rft.trainer.update import Precomputed
from remix_rft.trainer.update_stats import StepStats


@dataclass(frozen=True)
class LearnerView:
    """What the row reports of the learner besides the batch: its settings at this step."""

    utd: int  # updates this iteration, over all ranks
    buffer_versions: int  # policy versions held in the replay buffer
    lr: float
    kl_lambda: float


def generation_row(step: int, counters: Counters, rollout: Rollout) -> dict[str, Any]:
    """The counters and what generating this iteration's rollout cost."""
    return {
        "step": step,
        "rollouts": counters.rollouts,
        "tokens": counters.tokens,
        "updates": counters.updates,
        "time/gen_s": rollout.gen_seconds,
        "time/gen_tokens_per_s": rollout.tokens_per_s,
        "time/wait_s": rollout.wait_seconds,
        **rollout.metrics,
    }


def step_row(
    step: int,
    counters: Counters,
    rollout: Rollout,
    batch: TrainBatch,
    pre: Precomputed,
    stats: StepStats,
    learner: LearnerView,
) -> dict[str, Any]:
    """One trained iteration: generation, rewards and lengths of the fresh samples, the
    off-policy share and staleness of the batch, the learner's settings and statistics."""
    fresh = rollout.samples
    lengths = [float(s.response_ids.numel()) for s in fresh]
    staleness = [step - 1 - s.policy_version for s in fresh]
    return {
        **generation_row(step, counters, rollout),
        "utd": learner.utd,
        "reward/mean": sum(s.reward for s in fresh) / len(fresh),
        "response_length/mean": sum(lengths) / len(lengths),
        "response_length/max": max(lengths),
        "finished/frac": sum(s.finished for s in fresh) / len(fresh),
        "reflection/rate": rollout.reflection_rate,
        **group_signal((s.reward for s in fresh), (s.group for s in fresh)),
        "offpolicy/fraction": (len(batch) - len(fresh)) / len(batch),
        "offpolicy/samples": len(batch) - len(fresh),
        "buffer/versions": learner.buffer_versions,
        "async/staleness_mean": sum(staleness) / len(staleness),
        "async/staleness_max": max(staleness),
        "lr": learner.lr,
        "kl/lambda": learner.kl_lambda,
        **pre.mismatch,
        **stats.means(),
    }


def run_summary(cfg: TrainConfig, c: Counters) -> dict[str, Any]:
    """``summary.json``: what the run is and what it reached."""
    return {
        "algorithm": cfg.algorithm,
        "name": cfg.name,
        "base_eval_accuracy": c.base_eval_accuracy,
        "final_eval_accuracy": c.last_eval_accuracy,
        # null, never a sentinel, when the run was not evaluated
        "best_eval_accuracy": None if c.last_eval_accuracy is None else c.best_eval_accuracy,
        "rollouts": c.rollouts,
        "tokens": c.tokens,
        "updates": c.updates,
        "steps": c.step,
        "reincarnated_at": c.reincarnated_at or None,
        "wall_time_s": c.wall_time_s,
    }
