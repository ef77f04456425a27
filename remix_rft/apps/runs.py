"""Training runs as read from their directories: metrics rows, summary, config.

Shared by ``remix compare`` and the plots (neither imports the other's module for it).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

EVAL_KEY = "eval/accuracy"

Row = dict[str, Any]


class RunLoadError(ValueError):
    """A run directory that cannot be read; the message names the path."""


@dataclass
class RunRecord:
    """One training run as read from its directory."""

    name: str
    path: Path
    algorithm: str
    rows: list[Row]
    summary: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        """A run without ``summary.json`` has not finished (or crashed before it)."""
        return self.summary is None

    @property
    def status(self) -> str:
        return "running" if self.running else "done"


def _read_metrics(path: Path) -> list[Row]:
    rows: list[Row] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                log.warning("%s:%d: skipping corrupt line (%s)", path, lineno, exc.msg)
                continue
            if not isinstance(obj, dict):
                log.warning(
                    "%s:%d: skipping line that is not a JSON object (%s)",
                    path,
                    lineno,
                    type(obj).__name__,
                )
                continue
            rows.append(obj)
    return rows


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        log.warning("%s: cannot read config (%s)", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _read_summary(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable summary, treating the run as still running (%s)", path, exc)
        return None
    if not isinstance(data, dict):
        log.warning("%s: summary is not a JSON object, treating the run as still running", path)
        return None
    return data


def _algorithm_name(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):  # e.g. ``algorithm: {name: grpo, ...}``
        name = value.get("name")
        if isinstance(name, str) and name:
            return name
    return None


def load_run(run_dir: str | Path) -> RunRecord:
    """Read ``metrics.jsonl``, ``config.yaml`` and (if present) ``summary.json``.

    Corrupt or truncated metric lines are skipped with a warning naming the file
    and line. Raises :class:`RunLoadError` if the directory or its
    ``metrics.jsonl`` is missing.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise RunLoadError(f"{path}: not a run directory (no such directory)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise RunLoadError(f"{metrics}: missing metrics file; is {path} a run directory?")
    try:
        rows = _read_metrics(metrics)
    except OSError as exc:
        raise RunLoadError(f"{metrics}: cannot read ({exc})") from exc
    config = _read_yaml(path / "config.yaml")
    summary = _read_summary(path / "summary.json")
    algorithm = (
        _algorithm_name((summary or {}).get("algorithm"))
        or _algorithm_name(config.get("algorithm"))
        or "?"
    )
    name = path.resolve().name or str(path)
    if summary is None:
        log.info("%s: no summary.json, run still running", path)
    return RunRecord(
        name=name, path=path, algorithm=algorithm, rows=rows, summary=summary, config=config
    )


# --------------------------------------------------------------------------- metrics


def as_number(value: Any) -> float | None:
    """A finite number, or None (booleans, strings, NaN and inf are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def as_int(value: Any) -> int | None:
    number = as_number(value)
    return None if number is None else int(number)


def ordered_rows(rows: Sequence[Row]) -> list[Row]:
    """Rows sorted by step; for a step logged twice (a resumed run) the later line wins."""
    by_step: dict[int, Row] = {}
    unstepped: list[Row] = []
    for row in rows:
        step = as_int(row.get("step"))
        if step is None:
            unstepped.append(row)
        else:
            by_step[step] = row
    if not by_step:
        return list(unstepped)
    return [by_step[s] for s in sorted(by_step)]


def eval_rows(rows: Sequence[Row]) -> list[Row]:
    """The evaluation iterations (rows with a finite ``eval/accuracy``), by step."""
    return [r for r in ordered_rows(rows) if as_number(r.get(EVAL_KEY)) is not None]
