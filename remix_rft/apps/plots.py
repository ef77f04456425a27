"""Plots of training runs: held-out accuracy vs rollouts, response length vs step.

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


def plot_runs(runs: Sequence[RunRecord], out_png: str | Path, target: float | None = None) -> Path:
    """Write a two-panel PNG and return its path.

    Left: held-out accuracy vs cumulative rollouts (with the target as a dashed
    line). Right: mean response length vs step.
    """
    out = Path(out_png)
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_acc, ax_len = fig.subplots(1, 2)

    for run in runs:
        label = _label(run)
        points = [
            (as_number(r.get("rollouts")), float(r[EVAL_KEY]))
            for r in eval_rows(run.rows)
            if as_number(r.get("rollouts")) is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            (line,) = ax_acc.plot(xs, ys, marker="o", markersize=3, label=label)
            color = line.get_color()
        else:
            log.warning("%s: no evaluations with rollouts to plot", run.name)
            color = None
        lengths = [
            (as_number(r.get("step")), as_number(r.get("response_length/mean")))
            for r in ordered_rows(run.rows)
        ]
        lengths = [(s, v) for s, v in lengths if s is not None and v is not None]
        if lengths:
            xs, ys = zip(*lengths, strict=True)
            ax_len.plot(xs, ys, color=color, label=label)

    if target is not None:
        ax_acc.axhline(
            target, color="gray", linestyle="--", linewidth=1, label=f"target {target:.3f}"
        )

    ax_acc.set_title("Held-out accuracy vs rollouts")
    ax_acc.set_xlabel("rollouts (responses sampled for training)")
    ax_acc.set_ylabel("held-out accuracy")
    ax_acc.grid(True, alpha=0.3)
    ax_len.set_title("Response length vs step")
    ax_len.set_xlabel("step")
    ax_len.set_ylabel("mean response length (tokens)")
    ax_len.grid(True, alpha=0.3)
    for ax in (ax_acc, ax_len):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
