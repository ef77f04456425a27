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
flat shared-memory tensor per dtype (``torch.multiprocessing``), for a producer process on
the same machine. Weights cross as a :class:`~remix_rft.engines.weight_stream.WeightStream`
(a bucket at a time, in the engine's dtype: bf16 for bf16 runs), never as a full state dict.
Cross-machine placement (NCCL broadcast into vLLM, as verl and OpenRLHF do) would be
another class with the same methods.

No lock guards the buffers (issue #36): a lock held by a process that dies is never
released, so a producer killed mid-receive would block the learner's next publish forever.
The one writer (the learner) instead bumps a sequence counter to odd before it writes and
to even after (a seqlock); the reader copies, and retries if the counter moved or was odd.
The writer never waits; a reader that finds a write under way waits only while the writer
process is alive, and raises :class:`TransportError` once it is not.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remix_rft.engines.weight_stream import (
    DEFAULT_BUCKET_MB,
    WeightSpec,
    WeightStream,
    stream_weights,
)

Weights = Iterable[tuple[str, torch.Tensor]]
POLL_S = 0.005  # a reader's wait for a write under way


class TransportError(RuntimeError):
    """The other side of a transport died in the middle of a weight publication."""


def policy_weights(
    model: Any, *, dtype: torch.dtype | str | None = None, bucket_mb: float = DEFAULT_BUCKET_MB
) -> WeightStream:
    """(HF name, tensor) of the policy as a plain causal LM, streamed: LoRA merged per
    module, FSDP2 gathered a bucket at a time, cast to ``dtype`` (engines/weight_stream.py).
    Iterating it is a collective under FSDP2: every rank iterates it to the end."""
    return stream_weights(model, dtype=dtype, bucket_mb=bucket_mb)


def weight_specs(weights: Weights) -> tuple[list[WeightSpec], Weights]:
    """Names, dtypes and shapes of ``weights`` (a stream tells them without gathering; any
    other iterable is materialised once) and the weights to iterate afterwards."""
    if isinstance(weights, WeightStream):
        return weights.specs(), weights
    items = list(weights)
    specs = [WeightSpec(name, t.dtype, tuple(t.shape)) for name, t in items]
    return specs, items


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie — dead, not yet reaped — does not)."""
    if pid <= 0:
        return True  # nobody has written yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


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
    """One shared-memory buffer per dtype, guarded by a seqlock (see the module's docstring)."""

    def __init__(self, context: Any) -> None:
        # made before the spawn: shared values cannot cross a queue later
        self.version = context.Value("q", -1, lock=False)
        self.sequence = context.Value("q", 0, lock=False)  # odd while a publish writes
        self.writer = context.Value("q", 0, lock=False)  # pid of the publishing process
        self.slots: dict[str, _Slot] = {}
        self.buffers: dict[torch.dtype, torch.Tensor] = {}

    def share(self, weights: Weights) -> None:
        specs, weights = weight_specs(weights)
        sizes: dict[torch.dtype, int] = {}
        for spec in specs:
            offset = sizes.get(spec.dtype, 0)
            self.slots[spec.name] = _Slot(spec.dtype, offset, spec.shape)
            sizes[spec.dtype] = offset + spec.numel
        self.buffers = {dt: torch.empty(n, dtype=dt).share_memory_() for dt, n in sizes.items()}
        self.write(weights, version=-1)

    def layout(self) -> tuple[dict[str, _Slot], dict[torch.dtype, torch.Tensor]]:
        return self.slots, self.buffers

    def attach(self, layout: tuple[dict[str, _Slot], dict[torch.dtype, torch.Tensor]]) -> None:
        self.slots, self.buffers = layout

    def view(self, name: str) -> torch.Tensor:
        slot = self.slots[name]
        return self.buffers[slot.dtype][slot.offset : slot.offset + slot.numel].view(slot.shape)

    def publish(self, weights: Weights | None, version: int) -> None:
        self.write(weights or (), version)

    def write(self, weights: Weights, version: int) -> None:
        """The one writer: never waits, whatever state a dead reader left behind."""
        self.writer.value = os.getpid()
        self.sequence.value += 1  # odd: a reader now retries or waits
        try:
            for name, tensor in weights:
                if name not in self.slots:
                    raise KeyError(f"weight {name!r} was not in the published layout")
                self.view(name).copy_(tensor.detach())
                del tensor  # a streamed bucket's tensor is freed before the next is gathered
            self.version.value = version
        finally:
            self.sequence.value += 1

    def newest(self) -> int:
        return int(self.version.value)

    def receive(self, model: Any, have: int) -> int | None:
        while self.newest() > have:
            start = int(self.sequence.value)
            if start % 2:
                self.wait_for_writer()
                continue
            version = int(self.version.value)
            state = {name: self.view(name) for name in self.slots}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if int(self.sequence.value) == start:  # no write overlapped the copy
                self.check_fit(missing, unexpected)
                return version
        return None

    def wait_for_writer(self) -> None:
        writer = int(self.writer.value)
        if not pid_alive(writer):
            raise TransportError(
                f"the learner (pid {writer}) died while publishing weights (version after "
                f"{self.newest()}); the producer stops"
            )
        time.sleep(POLL_S)

    @staticmethod
    def check_fit(missing: list[str], unexpected: list[str]) -> None:
        missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
        if missing or unexpected:
            raise ValueError(
                f"published weights do not fit the producer's model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
