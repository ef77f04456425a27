"""Build the task a config names."""

from __future__ import annotations

from remix_rft.data.arithmetic import ArithmeticSpec, ArithmeticTask
from remix_rft.data.tasks import Task
from remix_rft.trainer.config import TaskConfig


def build_task(cfg: TaskConfig) -> Task:
    if cfg.name == "arithmetic":
        return ArithmeticTask(
            ArithmeticSpec(
                seed=cfg.seed,
                num_products=cfg.num_products,
                min_operand=cfg.min_operand,
                max_operand=cfg.max_operand,
                outer_multiply=cfg.outer_multiply,
                n_train=cfg.n_train,
                n_eval=cfg.n_eval,
            )  # fmt: skip
        )
    from remix_rft.data.math_dataset import MathTask

    task = MathTask(
        train_source=cfg.train_path,
        eval_source=cfg.eval_path or None,
        problem_key=cfg.problem_key,
        answer_key=cfg.answer_key,
        on_bad_row="skip" if cfg.skip_bad_rows else "error",
    )
    task.train_problems()  # load now: a bad file fails before any model is built
    task.eval_problems()
    return task
