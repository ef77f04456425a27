"""The optimizers and the learning-rate schedule of a run.

The schedule spans the optimizer updates the run really takes (``UpdateSchedule.total``,
recounted at reincarnation, whose phase may take another number of updates per
iteration), so the last update of the run sees the end of the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from remix_rft.trainer.config import TrainConfig

Scheduler = torch.optim.lr_scheduler.LambdaLR


def adamw(params: Any, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )


@dataclass
class UpdateSchedule:
    """Warmup over ``warmup`` updates, then ``kind`` decay to the ``total``-th update."""

    kind: str  # constant, cosine or linear
    warmup: int
    total: int

    def factor(self, update: int) -> float:
        total = max(self.total, 1)
        if self.warmup and update < self.warmup:
            return (update + 1) / self.warmup
        progress = min(1.0, (update - self.warmup) / max(total - self.warmup, 1))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "linear":
            return 1.0 - progress
        return 1.0


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: UpdateSchedule) -> Scheduler:
    # A bound method, so a recounted ``schedule.total`` takes effect at the next update.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)


def set_peak_lr(optimizer: torch.optim.Optimizer, scheduler: Scheduler, lr: float) -> None:
    """Scale the schedule to a new peak lr; its position (updates so far) is kept."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = lr
        group["lr"] = lr * fn(scheduler.last_epoch)


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Zero every per-parameter state (AdamW: step, exp_avg, exp_avg_sq): the next step is
    exactly a fresh optimizer's first, and the state keeps its layout, which sharded (DCP)
    checkpoints need; an emptied state would be refilled there by a zero-gradient step."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()
            elif isinstance(value, int | float):
                state[key] = type(value)(0)
