"""Experiment trackers: TensorBoard and Weights & Biases, chosen by ``report_to``.

``metrics.jsonl`` is always written; a tracker receives the same rows. Every numeric
metric is recorded against the iteration (``step``) and against the cumulative rollout
count (``rollouts``, the x-axis of the efficiency claims); the config goes in as
hyperparameters, and ``remix demo`` / ``remix compare`` add their plot as an image.

* ``tensorboard`` writes ``RUN_DIR/tensorboard/`` (metrics by step; tags
  ``by_rollouts/...`` in ``RUN_DIR/tensorboard/by_rollouts/``, a second event stream
  because one TensorBoard stream has one step axis per file when a run resumes).
* ``wandb`` starts a W&B run in ``RUN_DIR/wandb/`` (project ``wandb_project``), with
  ``step`` as the x-axis and ``rollouts`` logged with every row (choose it as the x-axis
  of any chart); its id is kept in ``RUN_DIR/wandb_run_id`` so a resumed run continues
  the same W&B run. ``WANDB_MODE=offline`` keeps it off the network.

Trackers open on their first row, so ranks that never write open nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

AXES = ("step", "rollouts")
BY_ROLLOUTS = "by_rollouts/"


class TrackerError(ValueError):
    """A tracker that cannot start (its package is missing); the message names the extra."""


class Tracker(Protocol):
    def log_metrics(self, row: Mapping[str, Any]) -> None: ...

    def log_image(self, tag: str, png: Path, step: int) -> None: ...

    def log_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def resume_after(self, row: Mapping[str, Any] | None) -> None: ...

    def close(self) -> None: ...


def require(name: str, package: str) -> None:
    """One-line error naming the extra when a tracker's package is not installed."""
    if importlib.util.find_spec(package) is None:
        raise TrackerError(
            f"report_to: {name} needs the {package} package: pip install 'remix-rft[{name}]'"
        )


def numeric_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's numbers (bools as 0/1), as floats; strings and None are skipped."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if isinstance(value, bool | int | float):
            out[key] = float(value)
    return out


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"task": {"name": ...}}`` -> ``{"task.name": ...}``; lists become strings."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, list | tuple):
            out[prefix + key] = ",".join(str(v) for v in value)
        else:
            out[prefix + key] = value
    return out


SAMPLE_COLUMNS = ("step", "kind", "problem", "prompt", "response", "reward", "truncated",
                  "advantage", "version")  # fmt: skip


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of ``samples.jsonl`` as a Markdown table (TensorBoard's text plugin renders it)."""

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in SAMPLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker:
    def __init__(self, run_dir: Path, name: str, config: Mapping[str, Any]) -> None:
        require("tensorboard", "tensorboard")
        self.log_dir = run_dir / "tensorboard"
        self.config = config
        self._writers: dict[str, Any] = {}
        self._purge: dict[str, int | None] = {"step": None, "rollouts": None}

    def _writer(self, axis: str) -> Any:
        if axis not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            folder = self.log_dir if axis == "step" else self.log_dir / "by_rollouts"
            writer = SummaryWriter(str(folder), purge_step=self._purge[axis])
            if axis == "step" and self._purge["step"] is None:
                self._log_config(writer)
            self._writers[axis] = writer
        return self._writers[axis]

    def _log_config(self, writer: Any) -> None:
        import yaml
        from torch.utils.tensorboard.summary import hparams

        flat = {
            k: v if isinstance(v, bool | int | float | str) else str(v)
            for k, v in flat_config(self.config).items()
        }
        for summary in hparams(flat, metric_dict={}):
            writer.file_writer.add_summary(summary)
        text = yaml.safe_dump(dict(self.config), sort_keys=False)
        writer.add_text("config", "```\n" + text + "```", global_step=0)

    def log_metrics(self, row: Mapping[str, Any]) -> None:
        values = numeric_metrics(row)
        step, rollouts = int(row["step"]), int(row.get("rollouts", 0))
        by_step, by_rollouts = self._writer("step"), self._writer("rollouts")
        for key, value in values.items():
            if key != "step":
                by_step.add_scalar(key, value, global_step=step)
            if key not in AXES:
                by_rollouts.add_scalar(BY_ROLLOUTS + key, value, global_step=rollouts)
        by_step.flush()
        by_rollouts.flush()

    def log_image(self, tag: str, png: Path, step: int) -> None:
        from matplotlib.image import imread

        image = imread(str(png))[..., :3]  # RGBA PNG -> RGB, floats in [0, 1]
        writer = self._writer("step")
        writer.add_image(tag, image, global_step=step, dataformats="HWC")
        writer.flush()

    def log_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """``samples.jsonl``'s rows of ``step`` as a Markdown table, one text per kind."""
        writer = self._writer("step")
        for kind in dict.fromkeys(str(r["kind"]) for r in rows):
            table = markdown_table([r for r in rows if r["kind"] == kind])
            writer.add_text(f"samples/{kind}", table, global_step=step)
        writer.flush()

    def resume_after(self, row: Mapping[str, Any] | None) -> None:
        """Drop events past the checkpoint being resumed (they are logged again)."""
        self._purge = {
            "step": int(row["step"]) + 1 if row else 0,
            "rollouts": int(row.get("rollouts", 0)) + 1 if row else 0,
        }

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


# ---------------------------------------------------------------------------- W&B


class WandbTracker:
    def __init__(self, run_dir: Path, name: str, config: Mapping[str, Any]) -> None:
        require("wandb", "wandb")
        self.run_dir = run_dir
        self.name = name
        self.config = config
        self._run: Any = None

    def _start(self) -> Any:
        if self._run is None:
            import wandb

            id_file = self.run_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
            id_file.write_text(run_id + "\n")
            self._run = wandb.init(
                project=str(self.config.get("wandb_project") or "remix-rft"),
                name=self.name,
                id=run_id,
                resume="allow",
                dir=str(self.run_dir),
                config=dict(self.config),
                reinit="create_new",
            )
            for axis in AXES:
                self._run.define_metric(axis)
            self._run.define_metric("*", step_metric="step")
        return self._run

    def log_metrics(self, row: Mapping[str, Any]) -> None:
        self._start().log(numeric_metrics(row))

    def log_image(self, tag: str, png: Path, step: int) -> None:
        import wandb

        self._start().log({tag: wandb.Image(str(png)), "step": step})

    def log_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        import wandb

        columns = list(SAMPLE_COLUMNS)
        data = [[r.get(c) for c in columns] for r in rows]
        # uncommitted: filed with the history entry of the step's metrics row, logged next
        self._start().log({"samples": wandb.Table(columns=columns, data=data)}, commit=False)

    def resume_after(self, row: Mapping[str, Any] | None) -> None:
        pass  # same run id; W&B keeps the history (steps logged again overlay)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


TRACKERS: dict[str, Callable[[Path, str, Mapping[str, Any]], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
}


def check_installed(report_to: list[str]) -> None:
    """Raise TrackerError for a tracker whose package is missing (before any training)."""
    for name in report_to:
        require(name, name)


def parse_report_to(text: str) -> list[str]:
    """``"tensorboard,wandb"`` (or ``[tensorboard, wandb]``) -> names, checked and installed."""
    names = [t.strip() for t in text.strip().strip("[]").split(",") if t.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise TrackerError(f"unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)}")
    check_installed(names)
    return names


def open_trackers(
    report_to: list[str], run_dir: Path, name: str, config: Mapping[str, Any]
) -> list[Tracker]:
    return [TRACKERS[t](run_dir, name, config) for t in report_to]


def log_plot(report_to: list[str], out_dir: Path, name: str, png: Path, step: int = 0) -> None:
    """A plot (``remix demo`` / ``remix compare``) as an image in a tracker run of its own."""
    for tracker in open_trackers(report_to, out_dir, name, {"plot": str(png)}):
        tracker.log_image("plot", png, step)
        tracker.close()
