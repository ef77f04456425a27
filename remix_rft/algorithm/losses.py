"""Mix-policy proximal policy gradient (docs/design.md §2.3) and the clipped value loss.

Per token, with r = π_θ/μ (μ the behaviour policy that generated the token) and
the clip centre c = π_k/μ (π_k the policy at the start of the iteration)::

    L_clip = min(r·A, clip(r, c − ε_low, c + ε_high)·A)

For fresh data μ = π_k, so c = 1 and this is PPO/GRPO's objective exactly. The optional
dual clip (``clip_ratio_c`` = C) caps the loss of A < 0 tokens at
``−A·max(c·C, c + ε_high)``; the registry of policy losses by name (``mix-ppg``, ``gspo``,
``cispo``) is in :mod:`remix_rft.algorithm.policy_losses`.
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
    ratio: torch.Tensor  # r = π_θ/μ per token (detached); GSPO: the sequence ratio per token
    clipped_low: torch.Tensor  # bool per token: the lower clip bound is the active term
    clipped_high: torch.Tensor  # bool per token: the upper clip bound is the active term
    # bool per token: the dual-clip bound is the active term (A < 0); None when dual clip is off
    clipped_dual: torch.Tensor | None = None


def check_clip_ratio_c(clip_ratio_c: float | None) -> float | None:
    """The dual-clip constant, or None when off (None or 0). It bounds a ratio from above,
    so it must exceed 1 (verl asserts the same); anything in (0, 1] is a config error."""
    if not clip_ratio_c:
        return None
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (or 0/None: off), got {clip_ratio_c}")
    return float(clip_ratio_c)


def clipped_surrogate(
    ratio: torch.Tensor,
    centre: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: torch.Tensor | float,
    eps_high: torch.Tensor | float,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token loss ``−min(r·A, clip(r, c − ε_low, c + ε_high)·A)`` and its clip flags.

    Shared by Mix-PPG (token ratio) and GSPO (sequence ratio). With ``clip_ratio_c`` (dual
    clip, Ye et al. 2020) the loss of a token with A < 0 is further capped at ``−A·bound``,
    ``bound = max(c·clip_ratio_c, c + ε_high)``: the constant scales with the centre, because
    r/c = π_θ/π_k is what PPO's ratio is to fresh data (so c = 1 gives verl's ``−A·C``), and
    it never cuts inside the trust region, which a small c (π_k ≪ μ) would otherwise allow.
    Returns (per-token loss, clipped_low, clipped_high, clipped_dual or None).
    """
    low, high = centre - eps_low, centre + eps_high
    clipped_ratio = torch.minimum(torch.maximum(ratio, low), high)
    unclipped = ratio * advantages
    clipped = clipped_ratio * advantages
    per_token = -torch.minimum(unclipped, clipped)
    live = mask.bool()
    with torch.no_grad():
        active = (clipped < unclipped) & live
        clipped_low = active & (ratio < low)
        clipped_high = active & (ratio > high)
    if clip_ratio_c is None:
        return per_token, clipped_low, clipped_high, None
    dual = -advantages * torch.maximum(centre * clip_ratio_c, high)
    negative = advantages < 0
    with torch.no_grad():
        clipped_dual = negative & (dual < per_token) & live
    per_token = torch.where(negative, torch.minimum(per_token, dual), per_token)
    return per_token, clipped_low, clipped_high, clipped_dual


def weigh(per_token: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-token weights (rollout correction) multiply the surrogate before aggregation;
    None leaves the tensor untouched (bit for bit, not ×1)."""
    return per_token if weights is None else per_token * weights.detach()


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
    clip_ratio_c: float | None = None,
    weights: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """Negative Mix-PPG surrogate, aggregated over the masked tokens.

    All tensors are ``[batch, tokens]``; ``eps_low``/``eps_high`` may be floats or
    ``[batch, 1]`` tensors, which is how reused samples get their own, smaller ε.
    ``clip_ratio_c`` (> 1; 0/None = off) adds the dual clip for A < 0 (see
    ``clipped_surrogate``); ``weights`` (detached, per token) multiply the surrogate before
    aggregation, which is where a rollout correction plugs in.
    """
    clip_ratio_c = check_clip_ratio_c(clip_ratio_c)
    log_ratio = (logprob - behavior_logprob).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    c = clip_centre(precedent_logprob, behavior_logprob, centre).detach()
    per_token, low, high, dual = clipped_surrogate(
        ratio, c, advantages, mask, eps_low=eps_low, eps_high=eps_high, clip_ratio_c=clip_ratio_c
    )
    per_token = weigh(per_token, weights)
    loss = aggregate(per_token, mask, agg, denominator=denominator, norm_length=norm_length)
    return PolicyLossOutput(loss, ratio.detach(), low, high, dual)


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
