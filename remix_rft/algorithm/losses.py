"""Mix-policy proximal policy gradient (DESIGN §3.2) and the clipped value loss.

Per token, with r = π_θ/μ (μ the behaviour policy that generated the token) and
the clip centre c = π_k/μ (π_k the policy at the start of the iteration)::

    L_clip = min(r·A, clip(r, c − ε_low, c + ε_high)·A)

For fresh data μ = π_k, so c = 1 and this is PPO/GRPO's objective exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from remix_rft.algorithm.aggregation import aggregate

CLIP_CENTRES = ("current", "one")
# exp() of a log-ratio beyond this is numerically meaningless and overflows in fp16/bf16.
MAX_LOG_RATIO = 20.0


def clip_centre(
    precedent_logprob: torch.Tensor, behavior_logprob: torch.Tensor, mode: str = "current"
) -> torch.Tensor:
    """``π_k/μ`` per token (GePPO, ``current``) or 1 (``one``: clip around the behaviour policy)."""
    if mode == "current":
        log_c = (precedent_logprob - behavior_logprob).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        return torch.exp(log_c)
    if mode == "one":
        return torch.ones_like(precedent_logprob)
    raise ValueError(f"unknown clip centre {mode!r}; allowed: {list(CLIP_CENTRES)}")


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor  # aggregated scalar, to be minimised
    ratio: torch.Tensor  # r = π_θ/μ per token (detached)
    clipped_low: torch.Tensor  # bool per token: the lower clip bound is the active term
    clipped_high: torch.Tensor  # bool per token: the upper clip bound is the active term


def mix_ppg_policy_loss(
    logprob: torch.Tensor,
    behavior_logprob: torch.Tensor,
    precedent_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: torch.Tensor | float,
    eps_high: torch.Tensor | float,
    centre: str = "current",
    agg: str = "token-mean",
    denominator: float | None = None,
    norm_length: float = 1.0,
) -> PolicyLossOutput:
    """Negative Mix-PPG surrogate, aggregated over the masked tokens.

    All tensors are ``[batch, tokens]``; ``eps_low``/``eps_high`` may be floats or
    ``[batch, 1]`` tensors, which is how reused samples get their own, smaller ε.
    """
    log_ratio = (logprob - behavior_logprob).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    c = clip_centre(precedent_logprob, behavior_logprob, centre).detach()
    low, high = c - eps_low, c + eps_high
    clipped_ratio = torch.minimum(torch.maximum(ratio, low), high)
    unclipped = ratio * advantages
    clipped = clipped_ratio * advantages
    surrogate = torch.minimum(unclipped, clipped)
    loss = aggregate(-surrogate, mask, agg, denominator=denominator, norm_length=norm_length)
    with torch.no_grad():
        active = (clipped < unclipped) & mask.bool()
        clipped_low = active & (ratio < low)
        clipped_high = active & (ratio > high)
    return PolicyLossOutput(loss, ratio.detach(), clipped_low, clipped_high)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
    agg: str = "token-mean",
    denominator: float | None = None,
    norm_length: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss ``½·max((V−R)², (clip(V, V_old ± ε)−R)²)``.

    Returns the aggregated loss and the per-token bool mask of where clipping was active.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    plain = (values - returns).square()
    clipped = (clipped_values - returns).square()
    per_token = 0.5 * torch.maximum(plain, clipped)
    loss = aggregate(per_token, mask, agg, denominator=denominator, norm_length=norm_length)
    return loss, ((clipped > plain) & mask.bool()).detach()
