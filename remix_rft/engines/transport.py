"""Weight publication: how a learner's new weights reach a rollout producer.

An asynchronous producer samples from its own copy of the policy. After each
iteration that changed the weights the learner *publishes* them with a version (the
iteration number); the producer *receives* the newest version between generation
calls — never in the middle of one — and tags what it generates with that version.

A transport is made in two steps, so that the producer process can start (and spend
its seconds of imports and model loading) while the learner still builds its own model:
the transport's control part is created first and handed to the process when it is
spawned; once the learner holds its weights it ``share``s them, and the producer
``attach``es the ``layout`` it is sent.

Transports register by name (``weight_transport``). Built in: ``shared-memory``, one
flat shared-memory tensor per dtype (``torch.multiprocessing``) guarded by a lock, for
a producer process on the same machine. Cross-machine placement (NCCL broadcast into
vLLM, as verl and OpenRLHF do) would be another class with the same methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

Weights = Iterable[tuple[str, torch.Tensor]]


def policy_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of the policy as a plain causal LM: LoRA merged, FSDP gathered."""
    from remix_rft.engines import lora
    from remix_rft.engines.distributed import full_state_dict

    if lora.is_lora(model):
        state = lora.merged_state_dict(model)
    else:  # a collective under FSDP2: every rank gets the full tensors for its own engine
        state = full_state_dict(model, every_rank=True)
    # vLLM keeps its own lm_head even for tied embeddings (its reload does not re-tie):
    # send it explicitly, or the output layer keeps the old weights.
    if "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    yield from state.items()


class WeightTransport(ABC):
    """Learner → producer weights, versioned. Picklable: it is handed to the producer
    process when that is spawned, before any weights exist."""

    @abstractmethod
    def share(self, weights: Weights) -> None:
        """Learner, once: lay out the transport for ``weights`` and fill it (version -1)."""

    @abstractmethod
    def layout(self) -> Any:
        """What the producer needs to ``attach`` (it crosses a queue after ``share``)."""

    @abstractmethod
    def attach(self, layout: Any) -> None:
        """Producer, once, before its first ``receive``."""

    @abstractmethod
    def publish(self, weights: Weights | None, version: int) -> None:
        """Make ``version`` the newest; ``weights`` None: unchanged since the last version."""

    @abstractmethod
    def newest(self) -> int:
        """The newest published version (-1: none yet)."""

    @abstractmethod
    def receive(self, model: Any, have: int) -> int | None:
        """Load the newest weights into ``model`` if newer than ``have``; their version."""


TransportFactory = Callable[..., WeightTransport]
TRANSPORTS: dict[str, TransportFactory] = {}


def register_transport(name: str) -> Callable[[TransportFactory], TransportFactory]:
    def add(factory: TransportFactory) -> TransportFactory:
        TRANSPORTS[name] = factory
        return factory

    return add


def build_transport(name: str, context: Any) -> WeightTransport:
    """The control part of transport ``name``, from a multiprocessing ``context``."""
    if name not in TRANSPORTS:
        raise ValueError(f"unknown weight transport {name!r}; allowed: {sorted(TRANSPORTS)}")
    return TRANSPORTS[name](context)


@dataclass(frozen=True)
class _Slot:
    dtype: torch.dtype
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


@register_transport("shared-memory")
class SharedMemoryTransport(WeightTransport):
    """One shared-memory buffer per dtype; a lock so a reader never sees half a version."""

    def __init__(self, context: Any) -> None:
        # made before the spawn: a lock and a shared value cannot cross a queue later
        self.version = context.Value("q", -1, lock=False)  # guarded by self.lock
        self.lock = context.Lock()
        self.slots: dict[str, _Slot] = {}
        self.buffers: dict[torch.dtype, torch.Tensor] = {}

    def share(self, weights: Weights) -> None:
        weights = list(weights)
        sizes: dict[torch.dtype, int] = {}
        for name, tensor in weights:
            offset = sizes.get(tensor.dtype, 0)
            self.slots[name] = _Slot(tensor.dtype, offset, tuple(tensor.shape))
            sizes[tensor.dtype] = offset + tensor.numel()
        self.buffers = {dt: torch.empty(n, dtype=dt).share_memory_() for dt, n in sizes.items()}
        for name, tensor in weights:
            self.view(name).copy_(tensor.detach())

    def layout(self) -> tuple[dict[str, _Slot], dict[torch.dtype, torch.Tensor]]:
        return self.slots, self.buffers

    def attach(self, layout: tuple[dict[str, _Slot], dict[torch.dtype, torch.Tensor]]) -> None:
        self.slots, self.buffers = layout

    def view(self, name: str) -> torch.Tensor:
        slot = self.slots[name]
        return self.buffers[slot.dtype][slot.offset : slot.offset + slot.numel].view(slot.shape)

    def publish(self, weights: Weights | None, version: int) -> None:
        with self.lock:
            for name, tensor in weights or ():
                if name not in self.slots:
                    raise KeyError(f"weight {name!r} was not in the published layout")
                self.view(name).copy_(tensor.detach())
            self.version.value = version

    def newest(self) -> int:
        return int(self.version.value)

    def receive(self, model: Any, have: int) -> int | None:
        if self.newest() <= have:
            return None
        with self.lock:
            version = int(self.version.value)
            state = {name: self.view(name) for name in self.slots}
            missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
        if missing or unexpected:
            raise ValueError(
                f"published weights do not fit the producer's model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        return version
