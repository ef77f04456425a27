"""Loss aggregation (docs/design.md §2.6): how per-token losses become one number.

Under data parallelism or gradient accumulation, pass the token / sequence count
of the whole (global) minibatch as the denominator so that every shard computes
its share of one and the same mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def token_mean(
    loss: torch.Tensor, mask: torch.Tensor, *, denominator: float | None = None, **_: float
) -> torch.Tensor:
    """Every token of the minibatch weighs the same."""
    total = (loss * mask).sum()
    count = mask.sum() if denominator is None else torch.as_tensor(denominator)
    return total / count.clamp(min=1.0)


def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, *, denominator: float | None = None, **_: float
) -> torch.Tensor:
    """Average tokens within each response, then responses (the original GRPO)."""
    per_seq = (loss * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
    count = per_seq.numel() if denominator is None else denominator
    return per_seq.sum() / max(float(count), 1.0)


def seq_mean_token_sum_norm(
    loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    denominator: float | None = None,
    norm_length: float = 1.0,
    **_: float,
) -> torch.Tensor:
    """Sum tokens of each response, divide by a constant length, average responses (Dr. GRPO)."""
    per_seq = (loss * mask).sum(dim=-1) / norm_length
    count = per_seq.numel() if denominator is None else denominator
    return per_seq.sum() / max(float(count), 1.0)


AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}

# The count each mode divides by, so that callers can sum it over shards.
SEQUENCE_MODES = ("seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    denominator: float | None = None,
    norm_length: float = 1.0,
) -> torch.Tensor:
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; allowed: {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[mode](loss, mask.float(), denominator=denominator, norm_length=norm_length)


def aggregation_count(mask: torch.Tensor, mode: str) -> float:
    """What ``aggregate`` divides by for this (shard of a) minibatch: tokens or sequences."""
    if mode in SEQUENCE_MODES:
        return float(mask.shape[0])
    return float(mask.sum())
