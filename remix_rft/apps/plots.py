"""Plots of training runs: held-out accuracy and response length vs rollouts.

Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
it works headless and does not disturb a caller's own matplotlib setup.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from remix_rft.apps.runs import EVAL_KEY, RunRecord, as_number, eval_rows, ordered_rows

log = logging.getLogger(__name__)


def _label(run: RunRecord) -> str:
    label = run.name if run.algorithm in ("?", run.name) else f"{run.name} ({run.algorithm})"
    return f"{label} [running]" if run.running else label


def _points(run: RunRecord, key: str, evals_only: bool = False) -> list[tuple[float, float]]:
    """(cumulative rollouts, ``key``) of each row that has both, in step order."""
    rows = eval_rows(run.rows) if evals_only else ordered_rows(run.rows)
    pairs = [(as_number(r.get("rollouts")), as_number(r.get(key))) for r in rows]
    return [(x, y) for x, y in pairs if x is not None and y is not None]


def reincarnation_rollouts(run: RunRecord) -> float | None:
    """Cumulative rollouts at the iteration where the run reincarnated (None: never)."""
    row = next((r for r in ordered_rows(run.rows) if r.get("reincarnated")), None)
    return None if row is None else as_number(row.get("rollouts"))


def runs_figure(runs: Sequence[RunRecord], target: float | None = None) -> Figure:
    """Two panels on one x-axis, cumulative rollouts (runs with different batch sizes, or a
    batch that changes at reincarnation, line up): held-out accuracy (with the target as a
    dashed line) and mean response length. A dotted line in the run's colour marks where a
    ReMix run reincarnated."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_len = fig.subplots(1, 2)
    for run in runs:
        label = _label(run)
        accuracy = _points(run, EVAL_KEY, evals_only=True)
        color = None
        if accuracy:
            (line,) = ax_acc.plot(*zip(*accuracy, strict=True), marker="o", markersize=3,
                                  label=label)  # fmt: skip
            color = line.get_color()
        else:
            log.warning("%s: no evaluations with rollouts to plot", run.name)
        lengths = _points(run, "response_length/mean")
        if lengths:
            (line,) = ax_len.plot(*zip(*lengths, strict=True), color=color, label=label)
            color = color or line.get_color()
        switch = reincarnation_rollouts(run)
        if switch is not None:
            for ax in (ax_acc, ax_len):
                ax.axvline(switch, color=color, linestyle=":", linewidth=1.2,
                           label=f"{run.name} reincarnation" if ax is ax_acc else None)  # fmt: skip
    if target is not None:
        ax_acc.axhline(
            target, color="gray", linestyle="--", linewidth=1, label=f"target {target:.3f}"
        )
    ax_acc.set_title("Held-out accuracy vs rollouts")
    ax_acc.set_ylabel("held-out accuracy")
    ax_len.set_title("Response length vs rollouts")
    ax_len.set_ylabel("mean response length (tokens)")
    for ax in (ax_acc, ax_len):
        ax.set_xlabel("rollouts (responses sampled for training)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return fig


def plot_runs(runs: Sequence[RunRecord], out_png: str | Path, target: float | None = None) -> Path:
    """Write :func:`runs_figure` as a PNG and return its path."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs_figure(runs, target).savefig(out, dpi=120)
    return out
