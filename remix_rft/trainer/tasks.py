"""Build the task a config names."""

from __future__ import annotations

from remix_rft.data.arithmetic import ArithmeticSpec, ArithmeticTask
from remix_rft.data.tasks import Task
from remix_rft.trainer.config import TaskConfig


def build_task(cfg: TaskConfig) -> Task:
    if cfg.name == "arithmetic":
        return ArithmeticTask(
            ArithmeticSpec(
                seed=cfg.seed, num_products=cfg.num_products, min_operand=cfg.min_operand,
                max_operand=cfg.max_operand, outer_multiply=cfg.outer_multiply,
                n_train=cfg.n_train, n_eval=cfg.n_eval,
            )  # fmt: skip
        )
    from remix_rft.data.math_dataset import MathTask

    return MathTask.from_config(cfg)
