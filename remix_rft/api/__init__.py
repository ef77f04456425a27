"""The Python API (issue #35): ``from remix_rft import Trainer, TrainConfig``.

    trainer = Trainer("embedded", args="tiny-remix-grpo", overrides={"steps": 30})
    result = trainer.train()          # TrainResult: summary + metrics rows
    trainer.save("my-model")          # an HF model directory

A thin layer over the one trainer (``trainer/loop.py``), which ``remix train`` also calls:
the script's objects become what a config names (``api/data.py``), then the same
``train``/``resume`` run. TRL users recognise the arguments: ``reward_funcs`` with TRL's
protocol (``reward_protocol.py``), ``train_dataset`` with a ``prompt`` column, ``args`` may
be a TRL ``GRPOConfig`` (converted by :meth:`TrainConfig.from_trl`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from remix_rft.api.data import DatasetLike, prepare_dataset, reward_specs, save_loaded_model
from remix_rft.api.results import RunSummary, StepMetrics, TrainResult
from remix_rft.reward_fns import RewardError
from remix_rft.reward_protocol import readable
from remix_rft.trainer.config import TrainConfig, build_config, load_config

__all__ = ["RunSummary", "StepMetrics", "TrainConfig", "TrainResult", "Trainer"]

Row = dict[str, Any]
ConfigLike = TrainConfig | str | Path | Mapping[str, Any] | None


def resolve_config(
    args: ConfigLike, overrides: Mapping[str, Any] | Sequence[str] | None
) -> TrainConfig:
    """A config from a TrainConfig, a YAML path or shipped name, a mapping, a TRL
    ``GRPOConfig`` or nothing (defaults), with ``overrides`` (``{"lr": 1e-5}`` or
    ``["lr=1e-5"]``) applied and the whole validated."""
    if isinstance(overrides, Mapping):
        over: dict[str, Any] = dict(overrides)
    else:
        from remix_rft.trainer.config import parse_overrides

        over = parse_overrides(list(overrides or []))
    if args is None or isinstance(args, str | Path):
        cfg = load_config(args) if args is not None else TrainConfig()
        return build_config(cfg.to_dict(), over)
    if isinstance(args, TrainConfig):
        return build_config(args.to_dict(), over) if over else args
    if isinstance(args, Mapping):
        return build_config(dict(args), over)
    if type(args).__name__.endswith("GRPOConfig"):  # TRL's (or a subclass)
        return build_config(TrainConfig.from_trl(args).to_dict(), over)
    raise TypeError(f"args must be a TrainConfig, a YAML path, a dict or a GRPOConfig, "
                    f"got {type(args).__name__}")  # fmt: skip


class Trainer:
    """Train a policy with GRPO, PPO or ReMix from Python; see the module docstring.

    ``model``: "embedded", a path or hub id, or a loaded ``PreTrainedModel`` (saved into the
    run directory with ``processing_class``, its tokenizer). ``args``: see
    :func:`resolve_config`. ``train_dataset`` / ``eval_dataset``: ``datasets.Dataset``, list
    of dicts or a path, a ``prompt`` column (the user message; the chat template is applied)
    and any others, which reach the reward functions as keyword arguments. Without a dataset
    the config's task is used (the embedded arithmetic task by default). ``reward_funcs``:
    TRL-protocol callables or "module:function" specs (``reward_weights``: one weight each);
    without them the task's verifier grades. Callbacks: ``on_step(row)`` each metrics row,
    ``on_evaluate(step, accuracy)``, ``on_save(step, checkpoint_dir)``.
    """

    def __init__(
        self,
        model: Any = None,
        reward_funcs: Sequence[Callable[..., Any] | str] | Callable[..., Any] | str | None = None,
        args: ConfigLike | Any = None,
        train_dataset: DatasetLike | None = None,
        eval_dataset: DatasetLike | None = None,
        *,
        reward_weights: Sequence[float] | None = None,
        processing_class: Any = None,
        overrides: Mapping[str, Any] | Sequence[str] | None = None,
        on_step: Callable[[Row], None] | None = None,
        on_evaluate: Callable[[int, float], None] | None = None,
        on_save: Callable[[int, Path], None] | None = None,
    ) -> None:
        cfg = resolve_config(args, overrides)
        run_dir = cfg.resolved_out_dir()
        changes: dict[str, Any] = {}
        self._model_object = None
        if isinstance(model, str | Path):
            changes["model"] = str(model)
        elif model is not None:  # saved into the run directory by train()
            self._model_object = (model, processing_class)
            changes["model"] = str(run_dir / "base_model")
        self._datasets = []
        columns: tuple[str, ...] = ("answer",)  # the embedded and math tasks' problem dicts
        if train_dataset is not None:
            train = prepare_dataset(
                train_dataset, run_dir / "data" / "train.jsonl", "train_dataset"
            )
            self._datasets.append(train)
            columns = train.columns
            changes.update({"task.name": "custom" if reward_funcs else "math",
                            "task.train_path": train.path, "task.problem_key": "prompt"})  # fmt: skip
            if reward_funcs:  # every other column reaches them unchanged (TRL's kwargs)
                changes["task.answer_key"] = ""
        if eval_dataset is not None:
            held_out = prepare_dataset(
                eval_dataset, run_dir / "data" / "eval.jsonl", "eval_dataset"
            )
            self._datasets.append(held_out)
            changes["task.eval_path"] = held_out.path
        if reward_funcs:
            changes["task.reward_funcs"] = reward_specs(reward_funcs, columns)
            changes["task.reward_fn"] = ""
            if reward_weights is not None:
                changes["task.reward_weights"] = [float(w) for w in reward_weights]
        self.config = build_config(cfg.to_dict(), changes) if changes else cfg
        self.callbacks = (on_step, on_evaluate, on_save)
        self.result: TrainResult | None = None
        self._last_checkpoint: Path | None = None

    @property
    def run_dir(self) -> Path:
        return self.config.resolved_out_dir()

    def train(
        self,
        resume: str | Path | None = None,
        allow_config_change: Sequence[str] | str | None = None,
    ) -> TrainResult:
        """Train to ``config.steps`` in a new run directory, or continue the run in ``resume``
        from its newest valid checkpoint (``allow_config_change``: the keys that may differ
        from the run's own, see ``trainer/resume_config.py``). Returns the summary and every
        metrics row."""
        from remix_rft.trainer import loop

        rows: list[Row] = []
        on_step, on_evaluate, on_save = self.callbacks

        def step(row: Row) -> None:
            rows.append(row)
            if on_step is not None:
                on_step(row)
            if on_evaluate is not None and "eval/accuracy" in row:
                on_evaluate(int(row["step"]), float(row["eval/accuracy"]))

        def saved(step_: int, path: Path) -> None:
            self._last_checkpoint = path
            if on_save is not None:
                on_save(step_, path)

        try:
            if resume is not None:
                summary = loop.resume(
                    Path(resume), self.config, on_step=step, on_save=saved,
                    allow_config_change=allow_config_change,
                )  # fmt: skip
            else:
                self._write_inputs()
                summary = loop.train(self.config, on_step=step, on_save=saved)
        except RewardError as err:  # encoded TRL-protocol specs back to the user's names
            raise RewardError(readable(str(err))) from err
        run_dir = Path(resume) if resume is not None else self.run_dir
        self.result = TrainResult(
            RunSummary.from_dict(summary), [StepMetrics.from_row(r) for r in rows], run_dir
        )
        return self.result

    def _write_inputs(self) -> None:
        """The datasets and a loaded model, into the run directory the config names
        (refused like the run itself when that directory already holds a run)."""
        if (self.run_dir / "metrics.jsonl").exists():
            from remix_rft.trainer.setup import prepare_run_dir

            prepare_run_dir(self.config)  # raises FileExistsError with the resume hint
        for dataset in self._datasets:
            dataset.write()
        if self._model_object is not None:
            model, tokenizer = self._model_object
            save_loaded_model(model, tokenizer, Path(self.config.model))

    def save(self, path: str | Path) -> Path:
        """The trained policy (the last checkpoint's, with its tokenizer; LoRA merged) as an
        HF model directory: ``AutoModelForCausalLM.from_pretrained(path)`` loads it."""
        if self._last_checkpoint is None:
            raise RuntimeError("nothing to save yet: call train() first")
        source = self._last_checkpoint / "policy"
        if not source.is_dir():
            raise RuntimeError(
                f"checkpoint {self._last_checkpoint} holds no HF policy directory "
                "(a sharded torchrun checkpoint): export it with `remix eval`"
            )
        target = Path(path)
        shutil.copytree(source, target, dirs_exist_ok=True)
        return target
