"""The learner's side of generation (docs/design.md §1.7, §1.8): the rollout engine kept in
step with the policy, and the rollout source (inline or the asynchronous producer) that the
loop in ``loop.py`` draws fresh samples from and publishes new weights to.

A mixin of :class:`remix_rft.trainer.loop.Trainer`, which builds the attributes declared here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from remix_rft.data.tasks import Problem
from remix_rft.engines.distributed import DistEnv
from remix_rft.engines.rollout import EngineOptions, Generation, RolloutEngine, SamplingSettings
from remix_rft.engines.transport import policy_weights
from remix_rft.engines.weight_stream import WeightStream
from remix_rft.trainer import setup
from remix_rft.trainer.config import PhaseSettings, TrainConfig
from remix_rft.trainer.producer import Producer, PromptFormatter, needs_sampling_logprobs
from remix_rft.trainer.producer_process import ProducerSpec, producer_device
from remix_rft.trainer.rollouts import (
    AsyncRollouts,
    InlineRollouts,
    ProducerProcess,
    RolloutSource,
)
from remix_rft.trainer.state import TrainerState


class EngineLink:
    cfg: TrainConfig
    dist: DistEnv
    state: TrainerState
    policy: Any
    tokenizer: Any
    prompt_text: PromptFormatter
    train_problems: list[Problem]
    eval_problems: list[Problem]
    engine: RolloutEngine
    engine_stale: bool  # a copy-holding engine's weights are older than the policy's
    producer: Producer
    producer_process: ProducerProcess | None
    rollouts: RolloutSource | None  # started at the first iteration
    phase: Callable[[], PhaseSettings]

    def launch_producer(self) -> ProducerProcess | None:
        """The asynchronous producer's process, started first so that its start-up runs
        while this process builds the learner (``start_rollouts`` hands it the weights)."""
        if self.cfg.rollout_mode != "async":
            return None
        device = producer_device(self.cfg, self.dist.device, self.dist.enabled)
        spec = ProducerSpec(cfg=self.cfg, device=device, threads=self.cfg.rollout_threads)
        return ProducerProcess(self.cfg, spec, self.dist.rank)

    def engine_options(self) -> EngineOptions:
        def prompt_lengths() -> list[int]:
            encode = self.tokenizer
            return [
                len(encode(self.prompt_text(p), add_special_tokens=False)["input_ids"])
                for p in self.train_problems + self.eval_problems
            ]

        return setup.engine_options(self.cfg, self.dist.rank, prompt_lengths)

    def start_rollouts(self) -> RolloutSource:
        """The producer inline (sync), or in its own process holding a copy of the weights
        as they are now (a resumed run's too), continuing this process's sampling stream
        (a resumed run's: the producer's own, as the checkpoint stored it)."""
        cfg, state = self.cfg, self.state
        if cfg.rollout_mode == "sync":
            return InlineRollouts(
                self.producer, state.sampler, self.dist, self.ready_engine,
                lambda: self.record_gen_logprobs(),
            )  # fmt: skip
        assert self.producer_process is not None  # launched in __init__ for async runs
        rng = state.producer_rng if state.producer_rng is not None else torch.get_rng_state()
        return AsyncRollouts(
            cfg, state.sampler, self.dist, self.producer_process, self.weights(),
            state.counters.step, start=(rng, self.engine_options()),
        )  # fmt: skip

    def source(self) -> RolloutSource:
        if self.rollouts is None:
            self.rollouts = self.start_rollouts()
        return self.rollouts

    @contextmanager
    def ready_engine(self) -> Iterator[RolloutEngine]:
        """The engine awake, holding the weights an update may have changed since it last
        generated; it sleeps again (GPU) when the block ends, so a block should hold all
        the generation of one phase (evaluation's chunks too), not one call each."""
        self.policy.eval()
        with self.engine.awake():
            if self.engine_stale or self.engine.weights_lost:  # a collective: every rank
                self.engine.sync_weights(self.policy)
                self.engine_stale = False
            yield self.engine

    def rollout(self, prompts: list[str], settings: SamplingSettings) -> Generation:
        with self.ready_engine() as engine:
            return engine.generate(prompts, settings)

    def record_gen_logprobs(self) -> bool:
        vocab = int(self.policy.config.vocab_size)
        return needs_sampling_logprobs(self.cfg, vocab, self.phase().fresh_batch_size)

    def publish(self, step: int, changed: bool) -> None:
        """The new weights to the engines: the inline one syncs before it next generates,
        the asynchronous producer picks them up between generation calls."""
        self.engine_stale = self.engine_stale or changed
        self.source().publish(self.weights, step, changed)

    def weights(self) -> WeightStream:
        """The policy streamed in the engine's dtype, a bucket at a time (weight_stream.py)."""
        cfg = self.cfg
        return policy_weights(self.policy, dtype=cfg.dtype, bucket_mb=cfg.weight_sync_bucket_mb)
