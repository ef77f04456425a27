"""Algorithm layer: pure tensor functions (advantages, policy losses by name, value loss, KL,
aggregation, the assembled policy objective, rollout correction, overlong handling). No
models, no I/O: everything here is tested against hand-computed values."""

from remix_rft.algorithm.advantages import (
    ADVANTAGE_ESTIMATORS,
    advantage_estimator,
    gae_advantages,
    grpo_advantages,
    masked_whiten,
    rloo_advantages,
)
from remix_rft.algorithm.aggregation import AGGREGATIONS, aggregate
from remix_rft.algorithm.correction import (
    DEFAULT_ROLLOUT_CORRECTION,
    DEFAULT_ROLLOUT_CORRECTION_LEVEL,
    DEFAULT_ROLLOUT_CORRECTION_THRESHOLD,
    ROLLOUT_CORRECTION_LEVELS,
    ROLLOUT_CORRECTIONS,
    RolloutCorrection,
    rollout_correction,
)
from remix_rft.algorithm.kl import (
    KL_ESTIMATORS,
    KL_LAMBDA_SCHEDULES,
    PAPER_KL_LAMBDA_SCHEDULE,
    StepDownSchedule,
    kl_convex,
    kl_estimate,
)
from remix_rft.algorithm.losses import (
    CLIP_CENTRES,
    PolicyLossOutput,
    clip_centre,
    mix_ppg_policy_loss,
    value_loss,
)
from remix_rft.algorithm.objective import PolicyObjective, assemble_policy_objective
from remix_rft.algorithm.overlong import mask_truncated, overlong_penalty, truncation_mask
from remix_rft.algorithm.policy_losses import (
    DEFAULT_POLICY_LOSS,
    DUAL_CLIP_RATIO_C,
    POLICY_LOSSES,
    PolicyLossFn,
    cispo_policy_loss,
    gspo_policy_loss,
    policy_loss,
    register_policy_loss,
    sequence_clip_centre,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "CLIP_CENTRES",
    "DEFAULT_POLICY_LOSS",
    "DEFAULT_ROLLOUT_CORRECTION",
    "DEFAULT_ROLLOUT_CORRECTION_LEVEL",
    "DEFAULT_ROLLOUT_CORRECTION_THRESHOLD",
    "DUAL_CLIP_RATIO_C",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "ROLLOUT_CORRECTIONS",
    "ROLLOUT_CORRECTION_LEVELS",
    "PolicyLossFn",
    "PolicyLossOutput",
    "PolicyObjective",
    "RolloutCorrection",
    "advantage_estimator",
    "aggregate",
    "assemble_policy_objective",
    "cispo_policy_loss",
    "clip_centre",
    "gae_advantages",
    "grpo_advantages",
    "gspo_policy_loss",
    "KL_LAMBDA_SCHEDULES",
    "PAPER_KL_LAMBDA_SCHEDULE",
    "StepDownSchedule",
    "kl_convex",
    "kl_estimate",
    "mask_truncated",
    "masked_whiten",
    "mix_ppg_policy_loss",
    "overlong_penalty",
    "policy_loss",
    "register_policy_loss",
    "rloo_advantages",
    "rollout_correction",
    "sequence_clip_centre",
    "truncation_mask",
    "value_loss",
]
