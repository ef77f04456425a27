"""One writer per run directory: a non-blocking ``flock`` on ``out_dir/.lock``.

Two ``remix train`` (or two ``--resume``) on one run directory would both append every step
to ``metrics.jsonl`` and overwrite each other's checkpoints. The first process to start holds
an exclusive lock on ``.lock`` for its whole life; the second is refused at once with a
message naming the holder's pid and host (written into the file). The kernel releases the
lock when the holder dies however it dies (SIGKILL included), so a stale lock cannot block a
resume. Under torchrun rank 0 holds it for the job (docs/design.md §1.6).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from remix_rft.trainer.io import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS: runs are not locked
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunLockedError(FileExistsError):
    """Another process is writing to this run directory."""


class RunLock:
    """``acquire`` (non-blocking) and ``release``; a no-op where ``fcntl`` is missing."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None or self.fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:  # a file in the way, no permission: one line, as make_run_dir
            reason = f"{err.strerror}: {err.filename}" if err.strerror and err.filename else err
            raise RunDirError(f"out_dir {self.path.parent}: cannot be written ({reason})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by {holder} (it holds "
                f"{self.path}); wait for that run to end or stop it, or choose another out_dir="
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the file stays: removing it would race a waiting acquirer
        os.close(fd)  # closing the last descriptor releases the lock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text:
            return text
    return "another process (pid not yet written)"


@contextlib.contextmanager
def run_lock(env: Any, run_dir: Path) -> Iterator[None]:
    """One writer per run directory: rank 0 of ``env`` (a DistEnv) holds the lock for the
    job; a second run is refused (RunLockedError, on every rank) before it writes anything."""
    lock = RunLock(run_dir)
    env.on_main(lock.acquire)
    try:
        yield
    finally:
        lock.release()
