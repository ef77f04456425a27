"""What `remix eval` records and reports: its settings, the resumable responses file (one
scored response per line, the settings on the first) and the avg@K / pass@K metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remix_rft.data.prompts import DEFAULT_MATH_INSTRUCTION
from remix_rft.data.tasks import Problem

log = logging.getLogger(__name__)

DISPLAY_NAMES = {
    "aime24": "AIME24",
    "amc23": "AMC23",
    "math500": "MATH500",
    "minerva": "Minerva",
    "olympiadbench": "Olympiad",
}
META_KEY = "_settings"


class EvalError(ValueError):
    """A user error: bad settings, missing data, a responses file from other settings."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides the responses; a resume must match it."""

    model: str
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 32768
    instruction: str = DEFAULT_MATH_INSTRUCTION
    seed: int = 0

    def validate(self) -> None:
        if self.samples < 1:
            raise EvalError(f"--samples must be >= 1, got {self.samples}")
        if self.temperature < 0:
            raise EvalError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EvalError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise EvalError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def metric_names(self) -> tuple[str, ...]:
        if self.samples == 1:
            return ("pass@1",)
        return (f"avg@{self.samples}", f"pass@{self.samples}")


Key = tuple[str, str, int]  # (benchmark, problem id, sample index)


# ---------------------------------------------------------------------------- responses file


def responses_path(out: Path) -> Path:
    """``results.json`` -> ``results.responses.jsonl`` beside it."""
    return out.with_name(out.stem + ".responses.jsonl")


def read_responses(path: Path) -> tuple[dict[str, Any] | None, dict[Key, dict[str, Any]]]:
    """The settings line and the scored records of a responses file.

    A last line cut short by a kill is dropped and the file truncated to its last
    complete line, so that appending continues cleanly. A bad line elsewhere is an error.
    """
    if not path.exists():
        return None, {}
    raw = path.read_bytes()
    body, newline, tail = raw.rpartition(b"\n")
    lines = body.split(b"\n") if newline else []
    if tail.strip():
        try:
            json.loads(tail)
            lines.append(tail)  # complete, only its newline is missing
            with path.open("ab") as fh:
                fh.write(b"\n")
        except ValueError:
            log.warning("%s: dropping a truncated last line", path)
            with path.open("r+b") as fh:
                fh.truncate(len(body) + len(newline))
    settings: dict[str, Any] | None = None
    records: dict[Key, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if META_KEY in obj:
                settings = obj[META_KEY]
                continue
            key = (str(obj["benchmark"]), str(obj["id"]), int(obj["sample"]))
            float(obj["score"])
        except (ValueError, TypeError, KeyError) as exc:
            raise EvalError(f"{path}: line {number} is not a scored response ({exc!r})") from None
        records[key] = obj
    return settings, records


def append_record(fh: Any, obj: dict[str, Any]) -> None:
    fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    fh.flush()


# ---------------------------------------------------------------------------- metrics


def describe_mode(settings: EvalSettings) -> str:
    if settings.samples == 1:
        return "greedy pass@1" if settings.greedy else f"pass@1, temperature {settings.temperature}"
    return (
        f"avg@{settings.samples} and pass@{settings.samples}, temperature "
        f"{settings.temperature}, top-p {settings.top_p}"
    )


def benchmark_metrics(
    problems: Sequence[Problem], records: dict[Key, dict[str, Any]], name: str, samples: int
) -> dict[str, float | int]:
    """avg@K (mean per-sample accuracy) and pass@K over the problems of one benchmark."""
    avg_sum = 0.0
    solved = 0
    for p in problems:
        scores = [float(records[(name, p.id, s)]["score"]) for s in range(samples)]
        avg_sum += sum(scores) / samples
        solved += any(sc > 0 for sc in scores)
    n = max(len(problems), 1)
    out: dict[str, float | int] = {"items": len(problems)}
    if samples == 1:
        out["pass@1"] = 100.0 * avg_sum / n
    else:
        out[f"avg@{samples}"] = 100.0 * avg_sum / n
        out[f"pass@{samples}"] = 100.0 * solved / n
    return out


def average_metrics(per_benchmark: dict[str, dict[str, float | int]]) -> dict[str, float]:
    """Unweighted mean over benchmarks (the paper's "Avg." column)."""
    names = [k for k in next(iter(per_benchmark.values())) if k != "items"]
    count = len(per_benchmark)
    return {m: sum(float(r[m]) for r in per_benchmark.values()) / count for m in names}


def format_table(results: dict[str, Any]) -> str:
    """Rows = metrics, columns = benchmarks and their average, in percent."""
    per = results["benchmarks"]
    cols = [DISPLAY_NAMES.get(b, b) for b in per] + ["Avg."]
    width = max(9, *(len(c) + 2 for c in cols))
    lines = [f"{'':<10}" + "".join(f"{c:>{width}}" for c in cols)]
    for metric in results["average"]:
        values = [float(per[b][metric]) for b in per] + [results["average"][metric]]
        lines.append(f"{metric:<10}" + "".join(f"{v:>{width}.2f}" for v in values))
    lines.append(f"{'items':<10}" + "".join(f"{per[b]['items']:>{width}}" for b in per))
    return "\n".join(lines)
