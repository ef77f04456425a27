"""Policy reincarnation (docs/design.md §1.5, §2.12): all of it lives here.

At the reincarnation iteration the mix-policy model becomes the new base
(π_base ← π_θ), the replay buffer is emptied and training goes on on-policy with the
on-policy method's own settings (``post_reincarnation_*``: fresh batch, updates, lr, β).
The switch comes at ``reincarnation_step`` or after ``reincarnation_patience``
evaluations without a new best accuracy.
"""

from __future__ import annotations

import logging

from remix_rft.engines.policy import copy_weights
from remix_rft.trainer.config import TrainConfig
from remix_rft.trainer.optim import UpdateSchedule, reset_optimizer_state, set_peak_lr
from remix_rft.trainer.state import TrainerState

log = logging.getLogger(__name__)


def due(cfg: TrainConfig, state: TrainerState, step: int, evaluated: bool) -> bool:
    """Whether iteration ``step`` ends the reuse phase."""
    if not cfg.is_remix or state.reincarnated:
        return False
    if cfg.reincarnation_step and step == cfg.reincarnation_step:
        return True
    patience = cfg.reincarnation_patience
    return bool(patience and evaluated and state.counters.evals_since_best >= patience)


def reincarnate(cfg: TrainConfig, state: TrainerState, schedule: UpdateSchedule, step: int) -> None:
    """π_base ← π_θ, empty the buffer, continue on-policy from the next iteration."""
    if state.lora:  # merge the adapter into the base, start a fresh one
        from remix_rft.engines import lora

        lora.reincarnate(state.policy)
    elif state.reference is not None:  # None: nothing uses π_base (β = 0, no kl/base)
        copy_weights(state.policy, state.reference)
    # The new phase starts like a run from a new base: fresh AdamW moments on both paths
    # (full finetuning and LoRA). The learning-rate schedule keeps counting across the run.
    reset_optimizer_state(state.optimizer)
    state.buffer.clear()
    state.counters.reincarnated_at = step
    schedule.total = cfg.planned_updates(reincarnated_at=step)
    apply_phase_lr(cfg, state)
    log.info("policy reincarnation at step %d: reference <- policy, buffer emptied", step)


def apply_phase_lr(cfg: TrainConfig, state: TrainerState) -> None:
    """The peak lr of the current phase (after reincarnation: the on-policy method's)."""
    set_peak_lr(state.optimizer, state.scheduler, cfg.phase(state.reincarnated).lr)
