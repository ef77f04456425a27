"""Preemption: a scheduler's stop signal becomes "finish this step, checkpoint, exit 75".

Clusters announce preemption with a signal some seconds before the hard kill (Slurm: SIGTERM,
or the ``--signal=USR1@60`` of the job; Kubernetes: SIGTERM then SIGKILL after the grace
period). :class:`PreemptionHandler` only sets a flag; the training loop polls it between
steps, saves a checkpoint, prints :func:`resume_hint` and exits with
:data:`PREEMPTED_EXIT_CODE`.
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

# 75 is EX_TEMPFAIL of sysexits.h ("temporary failure; the user is invited to retry"). It is
# distinct from the trainer's 0 (done), 1 (training failed), 2 (usage error) and from 143
# (128 + SIGTERM), which a shell or scheduler reports for a process *killed* by SIGTERM without
# saving: a job script or scheduler can requeue on 75 alone and know a checkpoint was written
# (Slurm: RequeueExit=75 in slurm.conf; Kubernetes: a podFailurePolicy rule onExitCodes [75]).
PREEMPTED_EXIT_CODE = 75

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")
# These cannot be caught (KILL, STOP) or mean a bug, not a scheduler (SEGV and friends).
_UNCATCHABLE = {"SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT"}


def validate_signal_names(names: Iterable[str]) -> tuple[signal.Signals, ...]:
    """The signals named (``"SIGTERM"``, case-insensitive); ValueError naming a bad one."""
    catchable = sorted(s.name for s in signal.Signals if s.name not in _UNCATCHABLE)
    chosen: list[signal.Signals] = []
    for raw in names:
        name = str(raw).strip().upper()
        if name in _UNCATCHABLE:
            raise ValueError(f"signal {raw!r} cannot be used to request a checkpoint")
        member = getattr(signal.Signals, name, None)
        if not isinstance(member, signal.Signals) or not name.startswith("SIG"):
            raise ValueError(
                f"unknown signal name {raw!r}: expected names like SIGTERM, SIGUSR1 "
                f"(this platform has {', '.join(catchable)})"
            )
        if member not in chosen:
            chosen.append(member)
    if not chosen:
        raise ValueError("no signal names given (e.g. SIGTERM, SIGUSR1)")
    return tuple(chosen)


class PreemptionHandler:
    """While active, the configured signals set :attr:`requested` instead of killing the run.

    The first signal sets ``requested`` and ``signal_name``; later ones are only recorded in
    ``received`` (a scheduler that repeats SIGTERM must not interrupt the save in progress).
    Handlers can only be installed from the main thread; elsewhere this is a no-op with a
    warning. The previous handlers are restored on exit.

    Handlers nest and share a request: an inner one entered while an outer one holds the
    signals starts ``requested`` if the outer one was, and passes its own request on to the
    outer one on exit (the trainer holds one over startup and shutdown, the loop its own).
    """

    def __init__(self, signals: Iterable[str] = DEFAULT_SIGNALS) -> None:
        self.signals = validate_signal_names(signals)
        self.requested = False
        self.signal_name: str | None = None
        self.received: list[str] = []
        self.active = False
        self._previous: dict[signal.Signals, Any] = {}
        self._outer: PreemptionHandler | None = None

    def __enter__(self) -> PreemptionHandler:
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "preemption signals (%s) not handled: signal handlers can only be installed "
                "from the main thread",
                ", ".join(s.name for s in self.signals),
            )
            return self
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            self._previous[sig] = previous
            outer = getattr(previous, "__self__", None)
            if isinstance(outer, PreemptionHandler) and outer is not self:
                self._outer = outer
        if self._outer is not None and self._outer.requested:
            self.requested, self.signal_name = True, self._outer.signal_name
        self.active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            # None: a handler installed outside Python; the default is the closest we can restore
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self.active = False
        outer, self._outer = self._outer, None
        if outer is not None and self.requested and not outer.requested:
            outer.requested, outer.signal_name = True, self.signal_name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if self.requested:
            log.warning("%s received again: still finishing the checkpoint", name)
            return
        self.requested, self.signal_name = True, name
        log.warning("%s received: the run stops after this step and saves a checkpoint", name)


def resume_hint(run_dir: Path, step: int | None = None) -> str:
    """The one line to print on exit: where the run stopped and how to continue it.

    ``step``: the step just checkpointed; by default the one ``latest`` names."""
    if step is None:
        from remix_rft.trainer import checkpoint as ckpt  # torch: this module imports nothing heavy

        latest = ckpt.latest_pointer(Path(run_dir))
        step = ckpt.checkpoint_step(latest) if latest is not None else None
    where = f"preempted at step {step}" if step is not None else "preempted before a checkpoint"
    return f"{where}: resume with remix train --resume {shlex.quote(str(run_dir))}"
