"""Algorithm layer: pure tensor functions (advantages, surrogate and value losses, KL,
aggregation). No models, no I/O: everything here is tested against hand-computed values."""

from remix_rft.algorithm.advantages import (
    ADVANTAGE_ESTIMATORS,
    advantage_estimator,
    gae_advantages,
    grpo_advantages,
    masked_whiten,
    rloo_advantages,
)
from remix_rft.algorithm.aggregation import AGGREGATIONS, aggregate
from remix_rft.algorithm.kl import KL_ESTIMATORS, kl_convex, kl_estimate
from remix_rft.algorithm.losses import (
    CLIP_CENTRES,
    PolicyLossOutput,
    clip_centre,
    mix_ppg_policy_loss,
    value_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "CLIP_CENTRES",
    "KL_ESTIMATORS",
    "PolicyLossOutput",
    "advantage_estimator",
    "aggregate",
    "clip_centre",
    "gae_advantages",
    "grpo_advantages",
    "kl_convex",
    "kl_estimate",
    "masked_whiten",
    "mix_ppg_policy_loss",
    "rloo_advantages",
    "value_loss",
]
