"""The rollout interface: one small API that training and evaluation both sample through.

A rollout engine turns chat-formatted prompt strings into sampled responses with the
log-probability of every sampled token *under the distribution actually sampled from*
(after temperature), and finish reasons; it takes new weights after an optimizer step
and, on GPUs, can release its memory while the trainer updates (sleep/wake).

Engines register by name (``hf``, ``hf-static``, ``vllm``); the trainer and ``remix
eval`` pick one with ``rollout_engine`` / ``--engine`` through
:func:`remix_rft.engines.catalog.build_engine`. Adding an engine is one class decorated
with :func:`register_engine` (and, for a built-in one, an import in ``catalog``).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """An engine that is not installed, cannot serve a model, or cannot take an input."""


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample; ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1  # responses per prompt, returned prompt-major (all n of prompt 0 first)
    seed: int | None = None  # None: continue the engine's random stream
    logprobs: bool = True  # sampled-token log-probs (NaN where an engine skips them)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Generation:
    """Responses of a batch of prompts; every list is indexed by sample."""

    prompt_ids: list[torch.Tensor]
    response_ids: list[torch.Tensor]  # includes the EOS token when there is one
    logprobs: list[torch.Tensor]  # float32, one per response token
    finished: list[bool]  # ended with EOS within the token budget
    texts: list[str]
    seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.response_ids)

    def num_tokens(self) -> int:
        return sum(int(r.numel()) for r in self.response_ids)

    @property
    def finish_reasons(self) -> list[str]:
        """``stop`` (EOS) or ``length`` (token budget spent), per sample."""
        return ["stop" if done else "length" for done in self.finished]

    def record_speed(self) -> Generation:
        self.stats["time/gen_tokens_per_s"] = self.num_tokens() / max(self.seconds, 1e-9)
        return self


@dataclass(frozen=True)
class EngineOptions:
    """Settings an engine is built with (those of a GPU engine are ignored by ``hf``)."""

    model_path: str  # what the engine loads at start (weights are pushed after that)
    dtype: str = "float32"
    seed: int = 0
    max_model_len: int = 0  # prompt + response tokens (0: the model's own limit)
    gpu_memory_utilization: float = 0.3  # vLLM: share of GPU memory (of host RAM on CPU)
    sleep_between_rollouts: bool = True  # vLLM on CUDA: free memory during the update
    sleep_level: int = 2  # vLLM: 2 discards the weights (the push overwrites them), 1 offloads
    weight_sync_bucket_mb: float = 1024.0  # weights gathered and pushed at most this much at once
    enforce_eager: bool = False  # vLLM: no CUDA graphs (always eager on CPU)
    batch_size: int = 0  # hf: prompts per generate call (0: all at once)


class RolloutEngine(ABC):
    """Generate responses with the current policy weights."""

    name: str = ""
    weights_lost: bool = False  # True after a sleep that discarded the weights: sync first

    @abstractmethod
    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> Generation:
        """``settings.n`` responses for each prompt string, prompt-major."""

    def sync_weights(self, model: Any) -> None:
        """Load ``model``'s current weights (a collective under FSDP2: every rank calls it).

        Engines that sample from the training module itself have nothing to do.
        """
        return None

    def sleep(self) -> None:
        """Release memory while the trainer updates (engines without memory of their own: no-op)."""
        return None

    def wake(self) -> None:
        """Undo :meth:`sleep` before the next :meth:`sync_weights` / :meth:`generate`."""
        return None

    def close(self) -> None:
        """Free everything the engine holds."""
        return None

    @contextmanager
    def awake(self) -> Iterator[RolloutEngine]:
        self.wake()
        try:
            yield self
        finally:
            self.sleep()


EngineFactory = Callable[..., RolloutEngine]
ENGINES: dict[str, EngineFactory] = {}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Class decorator: make an engine available as ``rollout_engine: NAME``."""

    def add(factory: EngineFactory) -> EngineFactory:
        if name in ENGINES:
            raise ValueError(f"rollout engine {name!r} is registered twice")
        ENGINES[name] = factory
        return factory

    return add
