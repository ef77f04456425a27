"""Preemption: a scheduler's stop signal becomes "finish this step, checkpoint, exit 75".

Clusters announce preemption with a signal some seconds before the hard kill (Slurm: SIGTERM,
or the ``--signal=USR1@60`` of the job; Kubernetes: SIGTERM then SIGKILL after the grace
period). :class:`PreemptionHandler` only sets a flag; the training loop polls it between
steps, saves a checkpoint, prints :func:`resume_hint` and exits with
:data:`PREEMPTED_EXIT_CODE`.

Ctrl-C (SIGINT) is always one of them: the first one stops the run as a preemption would (the
step finishes and is saved), a second one during that save is only recorded, a third one
aborts (KeyboardInterrupt; the partial checkpoint is removed, the previous one is kept).

Helper processes (the asynchronous producer) are started by :func:`children_ignore` with
these signals ignored: a signal to the whole process group (what Slurm, Kubernetes and a
terminal send) reaches them too, and they must keep serving the learner until it has saved,
then be stopped by it (docs/design.md §1.6).
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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
INTERRUPT = signal.SIGINT  # always a preemption signal: Ctrl-C saves the step
ABORT_AFTER_INTERRUPTS = 3  # the third Ctrl-C aborts the save (a human, not a scheduler)


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


def handled_signals(names: Iterable[str]) -> tuple[signal.Signals, ...]:
    """The signals a run treats as preemption: those named, and SIGINT (Ctrl-C)."""
    chosen = validate_signal_names(names)
    return chosen if INTERRUPT in chosen else (*chosen, INTERRUPT)


@contextmanager
def children_ignore(names: Iterable[str]) -> Iterator[None]:
    """Processes started inside the block ignore the preemption signals from their first
    instruction (an ignored disposition survives ``exec``; a handler does not).

    The signals are blocked in this thread while their disposition is SIG_IGN, so one sent
    to this process meanwhile is not lost: it is delivered to the restored handler when they
    are unblocked. The children inherit the block too; :func:`unblock` lifts it in them.
    Outside the main thread (no handlers can be set there) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = set(handled_signals(names))
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def ignore_in_this_process(names: Iterable[str]) -> None:
    """In a helper process: ignore the preemption signals (again, in case it was started
    without :func:`children_ignore`) and unblock them (pending ones are discarded)."""
    sigs = set(handled_signals(names))
    for sig in sigs:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)


class PreemptionHandler:
    """While active, the configured signals set :attr:`requested` instead of killing the run.

    The first signal sets ``requested`` and ``signal_name``; later ones are only recorded in
    ``received`` (a scheduler that repeats SIGTERM must not interrupt the save in progress),
    except a third SIGINT, which raises KeyboardInterrupt (a person insisting on Ctrl-C).
    SIGINT is handled whatever ``signals`` names (:func:`handled_signals`).
    Handlers can only be installed from the main thread; elsewhere this is a no-op with a
    warning. The previous handlers are restored on exit.

    Handlers nest and share a request: an inner one entered while an outer one holds the
    signals starts ``requested`` if the outer one was, and passes its own request on to the
    outer one on exit (the trainer holds one over startup and shutdown, the loop its own).
    """

    def __init__(self, signals: Iterable[str] = DEFAULT_SIGNALS) -> None:
        self.signals = handled_signals(signals)
        self.requested = False
        self.interrupts = 0  # SIGINTs so far, shared with nested handlers
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
        if self._outer is not None:
            self.interrupts = self._outer.interrupts
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
        if outer is not None:
            outer.interrupts = max(outer.interrupts, self.interrupts)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        self.interrupts += signum == INTERRUPT
        if self.requested:
            if self.interrupts >= ABORT_AFTER_INTERRUPTS:
                log.error("SIGINT received %d times: aborting without a checkpoint of this step",
                          self.interrupts)  # fmt: skip
                raise KeyboardInterrupt
            log.warning("%s received again: still finishing the checkpoint", name)
            return
        self.requested, self.signal_name = True, name
        more = " (Ctrl-C twice more aborts)" if signum == INTERRUPT else ""
        log.warning("%s received: the run stops after this step and saves a checkpoint%s",
                    name, more)  # fmt: skip


def resume_hint(run_dir: Path, step: int | None = None) -> str:
    """The one line to print on exit: where the run stopped and how to continue it.

    ``step``: the step just checkpointed; by default the one ``latest`` names."""
    if step is None:
        from remix_rft.trainer import checkpoint as ckpt  # torch: this module imports nothing heavy

        latest = ckpt.latest_pointer(Path(run_dir))
        step = ckpt.checkpoint_step(latest) if latest is not None else None
    where = f"preempted at step {step}" if step is not None else "preempted before a checkpoint"
    return f"{where}: resume with remix train --resume {shlex.quote(str(run_dir))}"
