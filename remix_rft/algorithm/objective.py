"""The whole policy objective of one micro-batch, in one pure function (docs/design.md §2.7)::

    loss = policy_loss + β·agg(KL-Convex) − entropy_coef·agg(H(π_θ))

with one aggregation (mode, global denominator, norm_length) for all three terms, so that
under data parallelism / gradient accumulation every term is a share of the same mean. This
is exactly the arithmetic the trainer's ``policy_update`` did inline (a term is added only
when its coefficient is positive), moved here so it can be tested against hand values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from remix_rft.algorithm.aggregation import aggregate
from remix_rft.algorithm.kl import kl_convex
from remix_rft.algorithm.losses import PolicyLossOutput
from remix_rft.algorithm.policy_losses import DEFAULT_POLICY_LOSS, policy_loss


@dataclass
class PolicyObjective:
    loss: torch.Tensor  # the scalar to backpropagate
    policy: PolicyLossOutput  # the policy term and its ratio / clip diagnostics
    kl: torch.Tensor | None  # KL-Convex per token (with gradient); None when β = 0


def kl_term(
    logprob: torch.Tensor,
    base_logprob: torch.Tensor | None,
    precedent_logprob: torch.Tensor,
    *,
    lam: float,
    estimator: str,
) -> torch.Tensor:
    """KL-Convex per token. λ = 0 needs no π_base: the precedent stands in for the unused
    base term (the trainer then never computes base log-probs). λ > 0 without a base is a
    bug upstream, not something to paper over with the precedent."""
    if base_logprob is None:
        if lam != 0.0:
            raise ValueError(f"KL-Convex with lambda={lam} > 0 needs base log-probs")
        base_logprob = precedent_logprob
    return kl_convex(logprob, base_logprob, precedent_logprob, lam=lam, kind=estimator)


def assemble_policy_objective(
    logprob: torch.Tensor,
    behavior_logprob: torch.Tensor,
    precedent_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: torch.Tensor | float,
    eps_high: torch.Tensor | float,
    loss: str = DEFAULT_POLICY_LOSS,
    centre: str = "current",
    agg: str = "token-mean",
    denominator: float | None = None,
    norm_length: float = 1.0,
    clip_ratio_c: float | None = None,
    weights: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_lambda: float = 0.0,
    kl_estimator: str = "k3",
    base_logprob: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> PolicyObjective:
    """Policy loss ``loss`` (by name) + ``kl_coef``·KL-Convex − ``entropy_coef``·entropy.

    ``weights`` (e.g. ``rollout_correction(...).weights``) multiply the per-token policy
    surrogate only: the KL and entropy terms regularise π_θ itself and need no importance
    correction. ``entropy`` is the per-token entropy of π_θ, required when
    ``entropy_coef > 0`` (a bonus: more entropy, lower loss).
    """
    shape = {"denominator": denominator, "norm_length": norm_length}
    out = policy_loss(loss)(
        logprob, behavior_logprob, precedent_logprob, advantages, mask,
        eps_low=eps_low, eps_high=eps_high, centre=centre, agg=agg, clip_ratio_c=clip_ratio_c,
        weights=weights, **shape,
    )  # fmt: skip
    total = out.loss
    kl = None
    if kl_coef > 0:
        kl = kl_term(
            logprob, base_logprob, precedent_logprob, lam=kl_lambda, estimator=kl_estimator
        )
        total = total + kl_coef * aggregate(kl, mask, agg, **shape)
    if entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy")
        total = total - entropy_coef * aggregate(entropy, mask, agg, **shape)
    return PolicyObjective(total, out, kl)
