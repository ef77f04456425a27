"""Crash-safe file writes: a run killed at any moment leaves every file whole.

Every byte remix_rft itself writes (``metrics.jsonl`` lines, ``trainer_state.pt``, manifests,
pointer files) goes through :func:`write_all`. That single function is the seam tests replace
to simulate a full disk (ENOSPC) or a failing device (EIO) without root or a tiny filesystem:

    monkeypatch.setattr(remix_rft.trainer.io, "write_all", failing_write)

Files written by third-party code (``save_pretrained``'s safetensors) do not pass through it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BUFFER = 1 << 20  # torch.save emits many small records; batch them into large os.write calls


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``fd``, retrying short writes; OSError on failure."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _FdWriter:
    """The file object ``torch.save`` needs (``write``, ``flush``) on ``fd``, buffered, with every
    write going through :func:`write_all`. Not an ``io.BufferedWriter``: that one flushes its
    buffer again when garbage-collected, i.e. after a failure, into a closed (or reused) fd."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) >= _BUFFER:  # a large tensor: no copy into the buffer
            self.flush()
            write_all(self._fd, view)  # looked up at call time, so a monkeypatch takes effect
        else:
            self._buf += view
            if len(self._buf) >= _BUFFER:
                self.flush()
        return len(view)

    def flush(self) -> None:
        if self._buf:
            write_all(self._fd, bytes(self._buf))
            self._buf.clear()


@contextlib.contextmanager
def open_for_write(path: str | Path) -> Iterator[_FdWriter]:
    """A buffered binary file (truncated) whose bytes go through :func:`write_all`; on a clean
    exit it is flushed and fsynced, so the data is on disk before any rename that publishes it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        writer = _FdWriter(fd)
        yield writer
        writer.flush()
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make renames inside ``path`` durable (a crash after rename must not undo it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary sibling, fsync, then rename over the target.

    On failure the temporary sibling is removed and the target keeps its old content."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open_for_write(tmp) as fh:
            fh.write(text.encode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class RunDirError(ValueError):
    """``out_dir`` cannot be created or written; the message is one line naming it."""


def check_out_dir(run_dir: Path) -> None:
    """Raise :class:`RunDirError` unless ``run_dir`` exists as a writable directory or can be
    created (its nearest existing ancestor is a writable directory): ``--dry-run``'s check."""
    probe = run_dir.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"out_dir {run_dir}: cannot be created: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"out_dir {run_dir}: cannot be written: no write permission on {probe}")


def make_run_dir(run_dir: Path, config_text: str) -> None:
    """Create ``run_dir`` and write its ``config.yaml``; an OSError (permissions, a file in
    the way, a read-only or full disk) becomes one line naming out_dir."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_text)
    except OSError as err:
        reason = f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err)
        raise RunDirError(f"out_dir {run_dir}: cannot be written ({reason})") from err
