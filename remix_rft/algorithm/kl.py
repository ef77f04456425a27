"""KL estimators and the KL-Convex constraint (docs/design.md §2.5)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Bounds the log-ratio inside k3's exponential so one wild token cannot overflow.
K3_LOG_RATIO_CLAMP = 20.0


def k1(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """``log π − log π_ref``: unbiased, can be negative per token."""
    return logprob - ref_logprob


def k2(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """``½ (log π − log π_ref)²``."""
    return 0.5 * (logprob - ref_logprob).square()


def k3(logprob: torch.Tensor, ref_logprob: torch.Tensor) -> torch.Tensor:
    """``exp(log π_ref − log π) − (log π_ref − log π) − 1``: unbiased and non-negative."""
    log_ratio = (ref_logprob - logprob).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return torch.exp(log_ratio) - log_ratio - 1.0


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": k1,
    "k2": k2,
    "k3": k3,
}


def kl_estimate(logprob: torch.Tensor, ref_logprob: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from log-probs of sampled tokens."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; allowed: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logprob, ref_logprob)


def kl_convex(
    logprob: torch.Tensor,
    base_logprob: torch.Tensor,
    precedent_logprob: torch.Tensor,
    *,
    lam: float,
    kind: str,
) -> torch.Tensor:
    """``λ·KL(π_θ‖π_base) + (1−λ)·KL(π_θ‖π_k)`` per token.

    π_base anchors training (stability); π_k, the policy at the start of this
    iteration, only restrains how far one iteration's updates go (flexibility).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"KL-Convex lambda must lie in [0, 1], got {lam}")
    if lam == 1.0:
        return kl_estimate(logprob, base_logprob, kind)
    if lam == 0.0:
        return kl_estimate(logprob, precedent_logprob, kind)
    return lam * kl_estimate(logprob, base_logprob, kind) + (1.0 - lam) * kl_estimate(
        logprob, precedent_logprob, kind
    )


# ---- the KL-Convex λ over the run ---------------------------------------------------
@dataclass(frozen=True)
class StepDownSchedule:
    """λ(t) = max(floor, start − decrement·⌊max(t − hold, 0) / every⌋) at iteration t.

    The ReMix paper's schedule ("paper"): λ = 1 up to iteration 50, then 0.1 lower every 10
    iterations down to 0.5 — λ(59) = 1.0, λ(60) = 0.9, ..., λ(100) = 0.5 onwards. Early on the
    base KL holds the policy near π_base; later the precedent term takes a growing share, so
    the trust region follows the policy instead of pinning it to the start.
    """

    start: float = 1.0
    hold: int = 50
    every: int = 10
    decrement: float = 0.1
    floor: float = 0.5

    def __call__(self, step: int) -> float:
        drops = max(step - self.hold, 0) // self.every
        return max(self.floor, self.start - self.decrement * drops)

    def breakpoints(self, last_step: int) -> list[tuple[int, float]]:
        """(first iteration, λ) of every constant piece up to ``last_step``, for ``--dry-run``."""
        points: list[tuple[int, float]] = [(1, self(1))]
        step = self.hold + self.every
        while step <= last_step and points[-1][1] > self.floor:
            points.append((step, self(step)))
            step += self.every
        return points


PAPER_KL_LAMBDA_SCHEDULE = StepDownSchedule()
KL_LAMBDA_SCHEDULES = ("constant", "step-down", "paper")
