"""``metrics.jsonl``: one JSON object per iteration, never a repeated or skipped step."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from remix_rft.trainer import io as rio  # module attribute: tests replace rio.write_all
from remix_rft.trainer.io import atomic_write_text
from remix_rft.trainer.trackers import Tracker

log = logging.getLogger(__name__)


class MetricsWriteError(OSError):
    """A ``metrics.jsonl`` line could not be written; the file holds only whole lines."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code  # still an OSError a caller can switch on (ENOSPC: free space)

    def __reduce__(self) -> tuple[type, tuple[str, int | None]]:
        # keeps errno across pickling (env.on_main sends rank 0's exception to every rank)
        return type(self), (str(self.args[0]), self.errno)


def _append_line(path: Path, data: bytes) -> None:
    """Append ``data`` in one write (O_APPEND) and fsync; on failure truncate back to the old
    length, so a full disk (ENOSPC) or a failing device (EIO) never leaves a partial line."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        # A line torn by an earlier kill has no newline: start on a fresh line, or the new row
        # would be glued to it and dropped with it on read.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        try:
            rio.write_all(fd, data)
            os.fsync(fd)
        except OSError as err:
            _truncate(fd, size)
            raise _write_error(path, err) from err
    finally:
        os.close(fd)


def _truncate(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as err:  # the file may now end in a partial line; read() drops it
        log.warning("could not truncate metrics file back to %d bytes: %s", size, err)


def _write_error(path: Path, err: OSError) -> MetricsWriteError:
    name = errno.errorcode.get(err.errno, f"errno {err.errno}") if err.errno else "I/O error"
    return MetricsWriteError(
        f"could not append to {path}: {name} ({err.strerror or err}); the file was left "
        "holding whole lines only (the row was not written): free space / check the disk, "
        "then resume the run",
        err.errno,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """The JSONL file, and the trackers of ``report_to`` that see the same rows."""

    def __init__(self, path: str | Path, trackers: Sequence[Tracker] = ()) -> None:
        self.path = Path(path)
        self.trackers = list(trackers)

    def append(self, row: dict[str, Any]) -> None:
        """Append one line; MetricsWriteError (the file left as it was) if the write fails."""
        line = json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n"
        _append_line(self.path, line.encode())
        for tracker in self.trackers:  # only rows that are in the file reach the trackers
            tracker.log_metrics(row)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()

    def read(self) -> list[dict[str, Any]]:
        """Whole, valid lines; a torn last line (killed mid-write) is dropped with a warning."""
        if not self.path.is_file():
            return []
        rows = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: dropping a torn or corrupt line", self.path, number)
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
        return rows

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep rows up to ``step`` (the checkpoint being resumed), one per step."""
        kept: dict[int, dict[str, Any]] = {}
        for row in self.read():
            if row["step"] <= step:
                kept[row["step"]] = row
        rows = [kept[s] for s in sorted(kept)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        for tracker in self.trackers:
            tracker.resume_after(rows[-1] if rows else None)
        return rows


def reflection_rate(texts: Iterable[str], words: Iterable[str]) -> float:
    """Share of responses that contain at least one reflection word (case-insensitive)."""
    lowered = [w.lower() for w in words]
    texts = list(texts)
    if not texts or not lowered:
        return 0.0
    hits = sum(any(w in t.lower() for w in lowered) for t in texts)
    return hits / len(texts)


def group_signal(rewards: Iterable[float], groups: Iterable[int]) -> dict[str, float]:
    """Shares of prompt groups whose responses all got the same reward -- no group-relative
    signal -- and of those, the all-rewarded (reward > 0: all correct, with 0/1 verifiable
    rewards) and the all-unrewarded (all wrong) ones.

    A group-relative advantage is zero for every response of a uniform group, so these
    shares say how sparse the learning signal of a fresh batch is.
    """
    by_group: dict[int, list[float]] = {}
    for reward, group in zip(rewards, groups, strict=True):
        by_group.setdefault(group, []).append(float(reward))
    n = max(len(by_group), 1)
    uniform = [v[0] for v in by_group.values() if max(v) == min(v)]
    return {
        "groups/uniform_frac": len(uniform) / n,
        "groups/all_correct_frac": sum(r > 0 for r in uniform) / n,
        "groups/all_wrong_frac": sum(r <= 0 for r in uniform) / n,
    }
