"""`remix compare`: rollouts and wall-clock to a target accuracy, side by side.

The measurement follows docs/design.md §5: the target T defaults to the plateau
accuracy (mean of the last three evaluations) of the first run given, and a
run *reaches* T at the first evaluation i where the mean of evaluations i-1 and
i is at least T. Rollouts and wall-clock are read at evaluation i.

Library functions log; only :func:`run` (the CLI entry point) prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from remix_rft.apps.args import add_report_to, fraction
from remix_rft.apps.runs import (  # noqa: F401  (re-exported: compare's public names)
    EVAL_KEY,
    Row,
    RunLoadError,
    RunRecord,
    as_int,
    as_number,
    eval_rows,
    load_run,
    ordered_rows,
)

log = logging.getLogger(__name__)

MISSING = "—"
# Tasks whose responses never hold reflection words: the embedded arithmetic model's
# vocabulary and traces have none, so its reflection rate is 0 by construction.
NO_REFLECTION_TASKS = ("arithmetic",)


class TargetHit(NamedTuple):
    """Where a run first reached the target: cumulative rollouts, seconds, step."""

    rollouts: int | None
    wall_s: float | None
    step: int | None


# --------------------------------------------------------------------------- loading


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def rollouts_to_target(rows: Sequence[Row], target: float) -> TargetHit | None:
    """First evaluation i with mean(eval[i-1], eval[i]) >= target, or None if never.

    Returns ``(rollouts, wall_s, step)`` read at evaluation i (``rollouts`` and
    ``time/total_s`` are cumulative).
    """
    evals = eval_rows(rows)
    for prev, cur in zip(evals, evals[1:], strict=False):
        pair_mean = (float(prev[EVAL_KEY]) + float(cur[EVAL_KEY])) / 2.0
        if pair_mean >= target - 1e-12:  # tolerate float rounding of e.g. (0.7+0.8)/2
            return TargetHit(
                rollouts=as_int(cur.get("rollouts")),
                wall_s=as_number(cur.get("time/total_s")),
                step=as_int(cur.get("step")),
            )
    return None


def plateau_accuracy(rows: Sequence[Row], last: int = 3) -> float | None:
    """Mean of the last ``last`` evaluations (fewer if the run has fewer); None if none."""
    if last < 1:
        raise ValueError(f"last must be >= 1, got {last}")
    accs = [float(r[EVAL_KEY]) for r in eval_rows(rows)]
    return _mean(accs[-last:])


def can_reflect(run: RunRecord) -> bool:
    """Whether the run's task can produce reflection words (unknown task: assume it can)."""
    task = run.config.get("task")
    name = task.get("name") if isinstance(task, Mapping) else None
    return name not in NO_REFLECTION_TASKS


def summarize(run: RunRecord, target: float | None) -> dict[str, Any]:
    """One table row for ``run``; values that do not exist are None."""
    rows = ordered_rows(run.rows)
    evals = eval_rows(rows)
    accs = [float(r[EVAL_KEY]) for r in evals]
    summary = run.summary or {}

    base = next((float(r[EVAL_KEY]) for r in evals if as_int(r.get("step")) == 0), None)
    if base is None:
        base = as_number(summary.get("base_eval_accuracy"))
    final = accs[-1] if accs else as_number(summary.get("final_eval_accuracy"))
    hit = rollouts_to_target(rows, target) if target is not None else None

    last = rows[-1] if rows else {}
    total_rollouts = as_int(summary.get("rollouts"))
    if total_rollouts is None:
        total_rollouts = as_int(last.get("rollouts"))
    steps = as_int(summary.get("steps"))
    if steps is None:
        steps = max(
            (s for s in (as_int(r.get("step")) for r in rows) if s is not None), default=None
        )
    wall = as_number(summary.get("wall_time_s"))
    if wall is None:
        wall = as_number(last.get("time/total_s"))

    return {
        "run": run.name,
        "algorithm": run.algorithm,
        "status": run.status,
        "target": target,
        "base_accuracy": base,
        "final_accuracy": final,
        "last3_accuracy": plateau_accuracy(rows),
        "best_accuracy": max(accs) if accs else None,
        "rollouts_to_target": hit.rollouts if hit else None,
        "wall_s_to_target": hit.wall_s if hit else None,
        "step_to_target": hit.step if hit else None,
        "total_rollouts": total_rollouts,
        "steps": steps,
        "wall_time_s": wall,
        "mean_response_length": _mean(as_number(r.get("response_length/mean")) for r in rows),
        "reflection_rate": _mean(as_number(r.get("reflection/rate")) for r in rows)
        if can_reflect(run)
        else None,
    }


# --------------------------------------------------------------------------- formatting


def _fmt_acc(value: Any) -> str:
    return MISSING if value is None else f"{value:.3f}"


def _fmt_int(value: Any) -> str:
    return MISSING if value is None else f"{int(value):,}"


def _fmt_float(value: Any, digits: int = 1) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _fmt_seconds(value: Any) -> str:
    if value is None:
        return MISSING
    seconds = float(value)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _fmt_ratio(value: Any) -> str:
    return MISSING if value is None else f"{value:.2f}x"


_COLUMNS: list[tuple[str, str, Any, bool]] = [
    # header, key, formatter, right-aligned
    ("run", "run", str, False),
    ("algorithm", "algorithm", str, False),
    ("status", "status", str, False),
    ("base", "base_accuracy", _fmt_acc, True),
    ("final", "final_accuracy", _fmt_acc, True),
    ("last 3", "last3_accuracy", _fmt_acc, True),
    ("best", "best_accuracy", _fmt_acc, True),
    ("rollouts→T", "rollouts_to_target", _fmt_int, True),
    ("ratio", "rollouts_ratio", _fmt_ratio, True),
    ("wall→T", "wall_s_to_target", _fmt_seconds, True),
    ("rollouts", "total_rollouts", _fmt_int, True),
    ("steps", "steps", _fmt_int, True),
    ("wall", "wall_time_s", _fmt_seconds, True),
    ("resp len", "mean_response_length", _fmt_float, True),
    ("reflect", "reflection_rate", _fmt_acc, True),
]


# Columns left out when no row has a value: the reflection rate of tasks that cannot reflect.
_OPTIONAL_KEYS = ("reflection_rate",)


def table_columns(table: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, Any, bool]]:
    """The columns to show: every one, less optional ones that no row has a value for."""
    return [
        col
        for col in _COLUMNS
        if col[1] not in _OPTIONAL_KEYS or any(row.get(col[1]) is not None for row in table)
    ]


def format_table(table: Sequence[Mapping[str, Any]]) -> str:
    """An aligned plain-text table of :func:`summarize` rows; missing values show "—"."""
    columns = table_columns(table)
    cells = [[fmt(row.get(key)) for _, key, fmt, _ in columns] for row in table]
    for cell_row, row in zip(cells, table, strict=True):
        if row.get("status") == "running":
            cell_row[0] += " *"
    headers = [h for h, _, _, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, (_, _, _, right) in zip(values, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    if any(row.get("status") == "running" for row in table):
        out.append("* still running (no summary.json)")
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI


def compare_table(runs: Sequence[RunRecord], target: float | None) -> list[dict[str, Any]]:
    """One summary per run, with rollouts-to-target relative to the first run."""
    table = [summarize(r, target) for r in runs]
    reference = table[0]["rollouts_to_target"] if table else None
    for row in table:
        mine = row["rollouts_to_target"]
        row["rollouts_ratio"] = mine / reference if mine is not None and reference else None
    return table


def add_parser(subparsers: Any) -> None:
    """Add the ``compare`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "compare",
        help="compare runs: rollouts and wall-clock to a target accuracy",
        description=(
            "Table of runs: base/final/best held-out accuracy and the mean of the last 3 "
            "evaluations, rollouts and wall-clock to the target accuracy T, mean response "
            "length and reflection rate (for tasks that can produce it). A run reaches "
            "T when the mean of two consecutive evaluations is >= T. Without --target, T is "
            "the plateau accuracy (mean of the last 3 evaluations) of the first run."
        ),
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training run directory")
    parser.add_argument(
        "--target", type=fraction, default=None, metavar="ACC", help="target accuracy in [0, 1]"
    )
    parser.add_argument(
        "--plot", type=Path, default=None, metavar="FILE.png", help="write accuracy/length plots"
    )
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    add_report_to(parser, "the plot as an image, in a tracker run named 'compare' beside it")
    parser.set_defaults(func=run)


def _unique_names(runs: Sequence[RunRecord], given: Sequence[str]) -> None:
    """Runs sharing a directory name (e.g. seed0/run, seed1/run) are named by the path given."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r, text in zip(runs, given, strict=True):
        if counts[r.name] > 1:
            r.name = text.rstrip("/\\") or text


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run(args: argparse.Namespace) -> int:
    """Entry point of ``remix compare``; returns the exit code."""
    info = sys.stderr if args.json else sys.stdout
    runs: list[RunRecord] = []
    for run_dir in args.run_dirs:
        try:
            runs.append(load_run(run_dir))
        except RunLoadError as exc:
            print(f"remix compare: error: {exc}", file=sys.stderr)
            return 2
    _unique_names(runs, args.run_dirs)

    target: float | None = args.target
    if target is None:
        first = runs[0]
        target = plateau_accuracy(first.rows)
        if target is None:
            print(
                f"no target: {first.name} has no evaluations (give --target ACC)",
                file=sys.stderr,
            )
        else:
            n = min(3, len(eval_rows(first.rows)))
            print(
                f"target T = {target:.3f}: plateau accuracy of {first.name} "
                f"(mean of its last {n} evaluations); use --target ACC to override",
                file=info,
            )
    else:
        print(f"target T = {target:.3f} (from --target)", file=info)

    table = compare_table(runs, target)
    if args.json:
        print(json.dumps([{k: _json_safe(v) for k, v in row.items()} for row in table], indent=2))
    else:
        print(format_table(table))
        if len(table) > 1:
            print(f"ratio = rollouts→T relative to {table[0]['run']}")

    if args.plot is not None:
        from remix_rft.apps.plots import plot_runs  # matplotlib only when asked for

        try:
            out = plot_runs(runs, args.plot, target=target)
        except OSError as exc:
            print(f"remix compare: error: cannot write {args.plot}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {out}", file=info)
        if args.report_to:
            from remix_rft.trainer.trackers import log_plot

            log_plot(args.report_to, out.parent, "compare", out)
    return 0
