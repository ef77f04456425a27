"""Advantage estimators, one registry by name: GRPO group normalisation, RLOO's
leave-one-out baseline, and GAE for a critic (PPO).

Two kinds, told apart by ``AdvantageEstimator.uses_critic``:

* per response (``grpo``, ``rloo``): ``fn(rewards, group_size, **options) -> [N]`` on a flat
  tensor of consecutive groups of ``group_size`` responses to one prompt; computed when
  the samples are generated and kept with them when they are reused (docs/design.md §2.2);
* per token from a critic (``gae``): ``fn(token_rewards, values, mask, **options) ->
  (advantages, returns)``, recomputed with the current critic for every training batch.

Adding one is a function plus ``@register_advantage("name", ...)``; the config key
``advantage_estimator`` then accepts the name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

GRPO_EPS = 1e-6


@dataclass(frozen=True)
class AdvantageEstimator:
    fn: Callable[..., Any]
    uses_critic: bool  # per token from a critic's values (else per response, at generation)
    needs_groups: bool  # compares the responses to one prompt: group_size >= 2


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(
    name: str, *, uses_critic: bool = False, needs_groups: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        ADVANTAGE_ESTIMATORS[name] = AdvantageEstimator(fn, uses_critic, needs_groups)
        return fn

    return register


def advantage_estimator(name: str) -> AdvantageEstimator:
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {name!r}; allowed: {sorted(ADVANTAGE_ESTIMATORS)}"
        )
    return ADVANTAGE_ESTIMATORS[name]


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``rewards`` as ``[prompts, group_size]``, or a ValueError naming what is wrong."""
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group advantages, got {group_size}")
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be a flat tensor whose length ({rewards.numel()}) is a "
            f"multiple of group_size ({group_size})"
        )
    return rewards.float().view(-1, group_size)


@register_advantage("grpo", needs_groups=True)
def grpo_advantages(
    rewards: torch.Tensor, group_size: int, *, scale_by_std: bool = True, **_: Any
) -> torch.Tensor:
    """Per-response advantage ``(r_i - mean(r)) / (std(r) + eps)`` within each group.

    ``rewards`` holds consecutive groups of ``group_size`` responses to one prompt.
    ``std`` is the unbiased sample standard deviation (as in the GRPO paper and
    verl); a group whose rewards are all equal gets zero advantage. With
    ``scale_by_std=False`` only the mean is removed (Dr. GRPO).
    """
    grouped = _groups(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + GRPO_EPS)
    return centred.reshape(-1)


@register_advantage("rloo", needs_groups=True)
def rloo_advantages(rewards: torch.Tensor, group_size: int, **_: Any) -> torch.Tensor:
    """REINFORCE leave-one-out: ``A_i = r_i − mean of the other G − 1 rewards`` of the group.

    Each response's baseline excludes its own reward, so it is unbiased; a group whose
    rewards are all equal gets zero advantage.
    """
    grouped = _groups(rewards, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


@register_advantage("gae", uses_critic=True)
def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens, right-padded.

    ``values[:, t]`` is V of the state before token t. The value after the last
    real token is 0 (the episode ends there), and padded positions contribute
    nothing. Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    mask = mask.float()
    values = values.float() * mask
    rewards = token_rewards.float() * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    running = torch.zeros_like(next_value)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running * m
        # A padded step leaves the recursion untouched for the tokens before it.
        next_value = values[:, t] * m + next_value * (1 - m)
        running = running * m
    return advantages, advantages + values


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise to zero mean and unit variance over the masked entries."""
    mask = mask.float()
    count = mask.sum().clamp(min=1.0)
    mean = (values * mask).sum() / count
    var = (((values - mean) * mask) ** 2).sum() / count
    return (values - mean) * torch.rsqrt(var + eps) * mask
