"""The training loop (docs/design.md §1) — top to bottom, for GRPO, PPO, ReMix.

    producer: prompts → engine (π ≤ η versions old) → scores → advantages → fresh samples
    learner:  mixed batch (fresh + replay) → log π_k, log π_base, values → U updates →
              publish weights → (evaluate, reincarnate, checkpoint)

On-policy GRPO/PPO are the special case window = 1 (no replay); synchronous rollouts
the special case η = 0, generated inline (``rollouts.py``). The parts: ``producer.py``
(generation and scoring), ``engine_link.py`` (the engine and rollout source, weight
publication), ``update.py`` (the π_k pass and the optimizer updates), ``reporting.py``
(evaluation, the metrics and samples rows), ``reincarnation.py``, ``state.py`` (what a
checkpoint holds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from remix_rft.data import replay
from remix_rft.data.batch import TrainBatch, collate
from remix_rft.data.buffer import ReplayBuffer, Sample
from remix_rft.data.replay import MixedBatch
from remix_rft.data.tasks import Task
from remix_rft.engines import distributed
from remix_rft.engines.catalog import build_engine
from remix_rft.engines.generation import pad_token_id
from remix_rft.engines.models import resolve_model_path
from remix_rft.engines.policy import load_tokenizer
from remix_rft.engines.rollout import RolloutEngine
from remix_rft.trainer import ranks, reincarnation, resume_config, rows, setup
from remix_rft.trainer import state as saved_state
from remix_rft.trainer.config import PhaseSettings, TrainConfig, dump_config
from remix_rft.trainer.engine_link import EngineLink
from remix_rft.trainer.io import atomic_write_json, atomic_write_text
from remix_rft.trainer.metrics import MetricsLog
from remix_rft.trainer.preemption import PreemptionHandler
from remix_rft.trainer.producer import Producer, PromptFormatter, Rollout, balance_groups
from remix_rft.trainer.reporting import Reporting, StepCallback
from remix_rft.trainer.rollouts import RolloutSource
from remix_rft.trainer.runlock import run_lock
from remix_rft.trainer.samples import (
    SAMPLES_FILE,
    SampleRow,
    SamplesLog,
    TruncationWatch,
    train_rows,
)
from remix_rft.trainer.setup import prepare_run_dir
from remix_rft.trainer.state import Counters
from remix_rft.trainer.tasks import build_task, probe_reward
from remix_rft.trainer.trackers import open_trackers
from remix_rft.trainer.update import NonFiniteTrainingError, Precomputed, Updater
from remix_rft.trainer.update_stats import StepStats

log = logging.getLogger(__name__)

SaveCallback = Callable[[int, Path], None]  # (step, checkpoint directory)
__all__ = ["NonFiniteTrainingError", "Trainer", "prepare_run_dir", "resume", "train"]


class Trainer(EngineLink, Reporting):
    """The learner and its loop; the generation side (engine, rollout source, weight
    publication) is in ``engine_link.py``, evaluation and the rows it logs in ``reporting.py``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.on_save: SaveCallback | None = None  # the Python API's hook (remix_rft/api.py)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        # One process unless launched by torchrun (engines/distributed.py: FSDP2, DCP).
        self.dist = distributed.setup(cfg.device, timeout_minutes=cfg.dist_timeout_minutes)
        ranks.check_config(cfg, self.dist.world_size)
        self.producer_process = self.launch_producer()
        try:
            self.build(cfg, run_dir)
        except BaseException:
            if self.producer_process is not None:
                self.producer_process.stop()
            raise

    def build(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.task: Task = build_task(cfg.task, cfg.model)
        probe_reward(self.task)  # a broken reward function stops the run here, in seconds
        self.train_problems = list(self.task.train_problems())
        self.eval_problems = list(self.task.eval_problems())[: cfg.eval_problems]
        self.tokenizer = load_tokenizer(cfg.model)
        self.pad_id = pad_token_id(self.tokenizer)
        self.prompt_text = PromptFormatter(self.tokenizer, cfg.task.instruction)
        self.state, self.schedule = setup.build_state(
            cfg, self.dist, len(self.train_problems), self.tokenizer
        )
        self.updater = Updater(cfg, self.state, self.dist)
        self.engine: RolloutEngine = build_engine(
            cfg.rollout_engine, policy=self.policy, tokenizer=self.tokenizer,
            options=self.engine_options(), env=self.dist,
        )  # fmt: skip
        self.engine_stale = True  # a copy-holding engine loaded the model file, not ours
        self.producer = Producer(cfg, self.task, self.train_problems, self.prompt_text)
        self.rollouts: RolloutSource | None = None  # started at the first iteration
        self.rollout_span = (0, 0)  # `rollouts` before and after the current iteration
        trackers = open_trackers(cfg.report_to, run_dir, cfg.name, cfg.to_dict())
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", trackers)
        self.samples: SamplesLog | None = SamplesLog(run_dir / SAMPLES_FILE, trackers)
        self.pending_samples: list[SampleRow] = []  # written after this step's metrics row
        self.truncation = TruncationWatch(
            cfg.truncation_warn_fraction, cfg.truncation_warn_steps, cfg.max_new_tokens
        )
        if self.dist.enabled:  # ranks sample different responses; only rank 0 writes
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
            if not self.dist.is_main:
                self.metrics = ranks.NullMetrics()  # type: ignore[assignment]
                self.samples = None

    # ---- what the trainer's parts share -----------------------------------------------
    @property
    def policy(self) -> Any:
        return self.state.policy

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        return self.state.scheduler

    @property
    def buffer(self) -> ReplayBuffer:
        return self.state.buffer

    @property
    def counters(self) -> Counters:
        return self.state.counters

    def phase(self) -> PhaseSettings:
        """Reuse before reincarnation; on-policy with the ``post_reincarnation_*`` settings
        (the on-policy method's fresh batch, updates, lr and β) after it."""
        return self.cfg.phase(self.state.reincarnated)

    def evaluates_at(self, step: int) -> bool:
        return bool(self.eval_problems) and self.cfg.is_eval_step(step, self.rollout_span)

    # ---- one iteration, phase by phase -------------------------------------------------
    def mixed_batch(self, fresh: list[Sample], step: int) -> MixedBatch:
        """Fresh samples plus past ones of the last ν − 1 iterations (ReMix), chosen by the
        ``replay_strategy`` (docs/design.md §2.11)."""
        self.buffer.evict(step)  # the fresh version counts towards the window
        n_past = self.dist.local_offpolicy(self.phase().offpolicy_batch_size)
        return replay.mix(self.cfg.replay_strategy, fresh, self.buffer, n_past, step)

    def precompute(self, batch: TrainBatch, step: int) -> Precomputed:
        """Quantities fixed for the whole iteration: μ, log π_k, log π_base, values."""
        return self.updater.precompute(batch, step, evaluating=self.evaluates_at(step))

    def update(self, batch: TrainBatch, pre: Precomputed, step: int) -> StepStats:
        return self.updater.update(batch, pre, step)

    def iteration(self, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        rollout = self.source().next(step, self.phase())
        if self.cfg.dynamic_sampling:  # ranks filtered their own groups: same count on each
            rollout = balance_groups(rollout, self.dist, self.phase().group_size)
        fresh, c = rollout.samples, self.counters
        before = c.rollouts
        c.rollouts += self.dist.sum_int(rollout.generated)  # dropped groups count too
        self.rollout_span = (before, c.rollouts)  # eval_every_rollouts: a multiple crossed?
        c.tokens += self.dist.sum_int(rollout.num_tokens)
        if not fresh:  # dynamic sampling found no group with signal: nothing to learn from
            log.warning("step %d: every generated group was uniform; no update", step)
            self.publish(step, changed=False)  # the version advances, the weights do not
            c.step = step
            return self.dist.reduce_row(rows.generation_row(step, c, rollout))
        mixed = self.mixed_batch(fresh, step)
        batch = collate(mixed.samples, self.pad_id)
        pre = self.precompute(batch, step)
        skipped_before, updates_before = c.skipped_updates, c.updates
        stats = self.dist.merge_stats(self.update(batch, pre, step))
        self.publish(step, changed=c.updates > updates_before)
        for i, s in enumerate(mixed.fresh):  # μ as the update resolved it, for when it is reused
            s.behavior_logprobs = pre.behavior[i, : s.response_ids.numel()].clone()
        self.buffer.add(mixed.fresh)  # fresh samples a strategy left out are not stored
        self.buffer.evict(step)
        c.step = step  # after the update: critic warm-up and error messages count from 0
        self.pending_samples = train_rows(step, fresh, self.tokenizer, self.cfg.log_samples)
        row = self.step_row(step, rollout, batch, pre, stats)
        row.update(replay.replay_metrics(mixed, fresh, step, self.cfg.window))
        row["offpolicy/fraction"] = len(mixed.replayed) / len(batch)
        row["offpolicy/samples"] = len(mixed.replayed)
        row["nonfinite/skipped_updates"] = c.skipped_updates - skipped_before
        row["time/step_s"] = time.perf_counter() - started
        return self.dist.reduce_row(row)

    def step_row(
        self, step: int, rollout: Rollout, batch: TrainBatch, pre: Precomputed, stats: StepStats
    ) -> dict[str, Any]:
        learner = rows.LearnerView(
            utd=self.phase().updates(len(batch) * self.dist.world_size),
            buffer_versions=len(self.buffer.versions()),
            lr=self.scheduler.get_last_lr()[0],
            kl_lambda=self.cfg.kl_lambda_at(step),
        )
        return rows.step_row(step, self.counters, rollout, batch, pre, stats, learner)

    def reincarnate(self, step: int) -> None:
        reincarnation.reincarnate(self.cfg, self.state, self.schedule, step)
        if self.rollouts is not None:  # requests planned with the old phase's batch
            self.rollouts.restart()

    def save(self, step: int, score: float | None = None) -> None:
        """Checkpoint ``step``; ``score``: its eval accuracy (None: not evaluated), by which
        ``keep_best_checkpoint`` keeps the best checkpoint besides the last ``keep_checkpoints``."""
        sampler = self.source().sampler_state()
        self.state.producer_rng = self.source().rng_state()  # async: the producer's stream
        path = saved_state.save(
            self.state, self.run_dir, step, self.dist, keep=self.cfg.keep_checkpoints,
            sampler=sampler, keep_best=self.cfg.keep_best_checkpoint, score=score,
        )  # fmt: skip
        if self.on_save is not None:
            self.on_save(step, path)

    def load(self, checkpoint: Path) -> None:
        saved_state.load(self.state, checkpoint, self.dist, self.cfg.dtype)

    # ---- the loop ------------------------------------------------------------------
    def run(self, on_step: StepCallback | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps``; on a preemption signal (``cfg.preempt_signals``) stop after
        the current iteration, checkpoint it and return the summary with ``preempted`` set."""
        cfg, c = self.cfg, self.counters
        session_start, wall_before = time.perf_counter(), c.wall_time_s
        self.schedule.total = cfg.planned_updates(c.reincarnated_at)  # a resumed run's phase

        def wall() -> float:
            return wall_before + time.perf_counter() - session_start

        # Installed for the whole loop: a signal only sets a flag, polled between iterations,
        # and a second one during the save that follows is recorded, not acted on.
        with PreemptionHandler(cfg.preempt_signals) as pre:
            self.source()  # an asynchronous producer starts up while the base is evaluated
            # a signal during startup: c.step is the checkpoint just loaded (or 0, nothing done)
            if c.step < cfg.steps and self.preemption_requested(pre):
                return self.stop_preempted(pre, c.step)
            if c.step == 0 and c.base_eval_accuracy is None and self.eval_problems:
                self.evaluate_base(wall, on_step)
            for step in range(c.step + 1, cfg.steps + 1):
                row = self.iteration(step)
                evaluated = self.evaluates_at(step)
                if evaluated:
                    self.record_evaluation(row)
                if reincarnation.due(cfg, self.state, step, evaluated):
                    self.reincarnate(step)
                    row["reincarnated"] = True
                c.wall_time_s = wall()
                row["time/total_s"] = c.wall_time_s
                self.log_row(row)
                new_best = cfg.keep_best_checkpoint and evaluated and c.evals_since_best == 0
                saved = step % cfg.save_every == 0 or step == cfg.steps or new_best
                if saved:
                    self.save(step, score=row.get("eval/accuracy"))
                if on_step:
                    on_step(row)
                if self.preemption_requested(pre) and step < cfg.steps:
                    if not saved:
                        self.save(step, score=row.get("eval/accuracy"))
                    return self.stop_preempted(pre, step)
            self.metrics.close()  # trackers flush and finish
            summary = self.summary()
            if self.dist.is_main:
                atomic_write_json(self.run_dir / "summary.json", summary)
            return summary

    def close(self) -> None:
        """Stop the producer, then release the rollout engine (last: vLLM's shutdown also
        ends the process group)."""
        if self.rollouts is not None:
            self.rollouts.close()
        elif self.producer_process is not None:  # stopped before its first iteration
            self.producer_process.stop()
        self.engine.close()


# ---- entry points ----------------------------------------------------------------
def train(
    cfg: TrainConfig, on_step: StepCallback | None = None, on_save: SaveCallback | None = None
) -> dict[str, Any]:
    """Start a new run in ``cfg.out_dir`` and train it to ``cfg.steps``; ``on_step`` gets each
    metrics row, ``on_save`` each checkpoint written."""
    resolve_model_path(cfg.model)  # a missing model fails before the run directory exists
    env = distributed.setup(cfg.device, timeout_minutes=cfg.dist_timeout_minutes)
    ranks.check_config(cfg, env.world_size)
    with run_lock(env, cfg.resolved_out_dir()):  # before the check that the run is new
        run_dir = env.on_main(lambda: prepare_run_dir(cfg))  # rank 0 writes; errors reach all
        with open_trainer(cfg, run_dir) as trainer:
            trainer.on_save = on_save
            return trainer.run(on_step)


@contextmanager
def open_trainer(cfg: TrainConfig, run_dir: Path) -> Iterator[Trainer]:
    """A trainer closed (producer stopped, engine released) however the block ends. Inside it
    a preemption signal is only recorded: during startup the run stops before its first
    iteration, during shutdown a repeated notice cannot cut it short."""
    with PreemptionHandler(cfg.preempt_signals):
        trainer = Trainer(cfg, run_dir)
        try:
            yield trainer
        finally:
            trainer.close()


def resume(
    run_dir: Path,
    cfg: TrainConfig,
    on_step: StepCallback | None = None,
    on_save: SaveCallback | None = None,
    allow_config_change: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """Continue a run from its newest checkpoint that verifies (or from the start if it has
    none); a newer one that is incomplete or corrupt is skipped, saying so on stderr.
    Settings that differ from the run's are listed, and refused where they change what the
    run is unless ``allow_config_change`` names them (``resume_config.py``)."""
    env = distributed.setup(cfg.device, timeout_minutes=cfg.dist_timeout_minutes)
    with run_lock(env, run_dir):
        checkpoint, changes = resume_config.prepare_resume(env, run_dir, cfg, allow_config_change)
        with open_trainer(cfg, run_dir) as trainer:
            trainer.on_save = on_save
            if checkpoint is not None:
                trainer.load(checkpoint)
                if trainer.state.reincarnated:  # the post-reincarnation lr, older ones too
                    reincarnation.apply_phase_lr(cfg, trainer.state)
                log.info("resuming %s from %s (step %d)", run_dir, checkpoint.name,
                         trainer.counters.step)  # fmt: skip
            trainer.metrics.truncate_after(trainer.counters.step if checkpoint else -1)
            if trainer.samples is not None:
                trainer.samples.truncate_after(trainer.counters.step if checkpoint else -1)
            if trainer.dist.is_main:
                if changes:  # the config it ran under so far, kept
                    resume_config.keep_history(run_dir, trainer.counters.step)
                atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            return trainer.run(on_step)
