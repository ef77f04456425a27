"""Advantage estimators: GRPO group normalisation and GAE for a critic (PPO)."""

from __future__ import annotations

import torch

GRPO_EPS = 1e-6


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, *, scale_by_std: bool = True
) -> torch.Tensor:
    """Per-response advantage ``(r_i - mean(r)) / (std(r) + eps)`` within each group.

    ``rewards`` holds consecutive groups of ``group_size`` responses to one prompt.
    ``std`` is the unbiased sample standard deviation (as in the GRPO paper and
    verl); a group whose rewards are all equal gets zero advantage. With
    ``scale_by_std=False`` only the mean is removed (Dr. GRPO).
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group advantages, got {group_size}")
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be a flat tensor whose length ({rewards.numel()}) is a "
            f"multiple of group_size ({group_size})"
        )
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + GRPO_EPS)
    return centred.reshape(-1)


def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
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
