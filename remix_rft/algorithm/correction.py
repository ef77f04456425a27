"""Rollout correction: the sampling engine (vLLM) and the trainer disagree on log-probs.

The engine samples with its own kernels, precision and (bf16/fp8) weights, so its π_engine
is not exactly the trainer's π_trainer of the same weights; left alone, that gap is an
unacknowledged off-policy-ness that grows with response length (Yao et al. 2025, "Your
efficient RL framework secretly brings you off-policy RL training"). As in verl's
``algorithm.rollout_correction``, TRL's vLLM importance-sampling correction and OpenRLHF's
``is_correction_type``, a detached per-token weight built from ``ratio = π_trainer/π_engine``
multiplies the per-token surrogate:

* ``tis`` (truncated IS): ``w = min(ratio, threshold)``: unbiased up to the truncation,
  bounded variance;
* ``mis`` (masked IS): ``w = 1`` where ``ratio ≤ threshold`` else 0, and the masked tokens
  also leave the loss mask: tokens the engine sampled far more eagerly than the trainer
  would are dropped instead of down-weighted. An optional ``min_threshold`` also drops
  the tokens below it (``ratio < min_threshold``): with 0.5 and 2 this is IcePop (verl's
  rejection of ratios outside [0.5, 2]), which drops the tokens the trainer finds far
  likelier than the engine did as well;
* ``none``: ``w = 1`` (metrics only).

At ``level="sequence"`` the ratio of a response is ``exp(Σ_t log(π_trainer/π_engine))``, the
exact importance weight of the whole sequence (TRL's ``sequence_*`` modes, verl's
``rollout_is="sequence"``), given to each of its tokens. It is unbiased for a sequence-level
reward but its spread grows with length (0.01 nats/token over 2000 tokens is e^±20), so
a threshold that suits 200 tokens rejects most 4000-token responses; the token level is
length-invariant, hence the recommended default. (GSPO's geometric mean would be the
length-invariant sequence variant; it is not a correct importance weight, so not used here.)

How it composes with Mix-PPG's own ratio r = π_θ/μ:

* ``behavior_logprobs = "trainer"`` (μ of fresh rows := the trainer's π_k): r and the clip
  centre ignore the engine entirely, so the sampler/trainer gap is uncorrected; pass
  ``trainer_logprob = π_k`` (the precedent), ``engine_logprob`` = the engine's, and the
  weight restores it: per token ``w·L_clip(r)``, the decoupled / TIS form of verl.
* ``behavior_logprobs = "engine"`` (μ = π_engine): r = π_θ/π_engine already is the
  importance ratio to the sampler and c = π_k/π_engine already moves the trust region onto
  π_k, so the gap is corrected (and clipped) inside Mix-PPG; a further weight would count
  it twice. Use ``mode="none"`` there (or for the metrics only).

Reused (stored) samples: ``trainer_logprob`` must be the trainer's log-probs of the policy
that generated them, i.e. the stored μ when that was recomputed by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from remix_rft.algorithm.kl import kl_estimate
from remix_rft.algorithm.losses import MAX_LOG_RATIO

ROLLOUT_CORRECTIONS = ("none", "tis", "mis")
ROLLOUT_CORRECTION_LEVELS = ("token", "sequence")
# Recommended when the correction is on: token-level truncated IS at 2.0, verl's defaults
# (rollout_is="token", threshold 2.0) and Yao et al.'s TIS cap. Token level stays meaningful
# at any length; truncating (not masking) keeps every token's gradient; 2 caps a token's
# weight at twice the on-policy one while a well-matched engine (|Δlog p| ≲ 0.1, ratio in
# [0.9, 1.1]) is left untouched. TRL defaults to sequence-level masking at 3.0, which with
# long responses masks by length rather than by mismatch (see the module docstring).
DEFAULT_ROLLOUT_CORRECTION = "tis"
DEFAULT_ROLLOUT_CORRECTION_LEVEL = "token"
DEFAULT_ROLLOUT_CORRECTION_THRESHOLD = 2.0


@dataclass
class RolloutCorrection:
    weights: torch.Tensor  # [B, T] detached per-token surrogate weight; 0 on padding
    mask: torch.Tensor  # [B, T] float loss mask: the response mask less the tokens mis drops
    metrics: dict[str, float]  # rollout_correction/{ratio_max,ratio_mean,masked_frac,mismatch_kl}


def correction_log_ratio(
    trainer_logprob: torch.Tensor, engine_logprob: torch.Tensor, mask: torch.Tensor, level: str
) -> torch.Tensor:
    """``log(π_trainer/π_engine)`` per token, or each response's sum at every one of its
    tokens (``sequence``); 0 on padding. Detached: a correction weight is a constant."""
    live = mask.bool()
    diff = (trainer_logprob - engine_logprob).detach()
    log_ratio = torch.where(live, diff, torch.zeros_like(diff))
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=-1, keepdim=True).expand_as(log_ratio)
    return log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def outside_bounds(
    ratio: torch.Tensor, threshold: float, min_threshold: float | None
) -> torch.Tensor:
    """Where ``ratio`` is over ``threshold`` or (when given) under ``min_threshold``."""
    out = ratio > threshold
    if min_threshold is not None:
        out = out | (ratio < min_threshold)
    return out


def correction_weights(
    ratio: torch.Tensor, threshold: float, mode: str, out: torch.Tensor
) -> torch.Tensor:
    """The per-token weight of ``mode`` (before padding is zeroed); ``out``: the tokens
    outside the bounds, which ``mis`` drops."""
    if mode == "tis":
        return ratio.clamp(max=threshold)
    if mode == "mis":
        return (~out).to(ratio.dtype)
    return torch.ones_like(ratio)


def correction_metrics(
    ratio: torch.Tensor,
    over: torch.Tensor,
    trainer_logprob: torch.Tensor,
    engine_logprob: torch.Tensor,
    mask: torch.Tensor,
    level: str,
) -> dict[str, float]:
    """Ratio max / mean (over tokens, or over responses at sequence level), the fraction of
    response tokens outside the bounds (over the threshold: truncated by tis, masked by mis;
    under mis's ``min_threshold``: masked), and the mean k3
    estimate of KL(π_engine‖π_trainer) per token (unbiased on the engine's own samples)."""
    live = mask.bool()
    n = int(live.sum())
    if n == 0:
        keys = ("ratio_max", "ratio_mean", "masked_frac", "mismatch_kl")
        return {f"rollout_correction/{key}": 0.0 for key in keys}
    if level == "sequence":
        rows = live.any(dim=-1)
        per = ratio[:, 0][rows]
    else:
        per = ratio[live]
    kl = kl_estimate(engine_logprob.detach(), trainer_logprob.detach(), "k3")[live]
    return {
        "rollout_correction/ratio_max": float(per.max()),
        "rollout_correction/ratio_mean": float(per.mean()),
        "rollout_correction/masked_frac": float(over.sum()) / n,
        "rollout_correction/mismatch_kl": float(kl.mean()),
    }


def rollout_correction(
    trainer_logprob: torch.Tensor,
    engine_logprob: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: str = DEFAULT_ROLLOUT_CORRECTION,
    level: str = DEFAULT_ROLLOUT_CORRECTION_LEVEL,
    threshold: float = DEFAULT_ROLLOUT_CORRECTION_THRESHOLD,
    min_threshold: float | None = None,
) -> RolloutCorrection:
    """Per-token weights, loss mask and metrics correcting the engine/trainer mismatch.

    ``ratio = π_trainer/π_engine`` (token, or whole-response at ``sequence`` level: see the
    module docstring, which also says which log-probs to pass with Mix-PPG). Pass
    ``weights`` to ``assemble_policy_objective(weights=...)``; with ``mis`` also pass
    ``mask`` as its loss mask, so that dropped tokens leave the denominators too (the
    weights alone, 0 there, would keep them in a token-mean's count). ``min_threshold``
    (``mis`` only; None: no lower bound) also drops ratios below it: IcePop is
    ``min_threshold=0.5, threshold=2``.
    """
    if mode not in ROLLOUT_CORRECTIONS:
        allowed = list(ROLLOUT_CORRECTIONS)
        raise ValueError(f"unknown rollout correction {mode!r}; allowed: {allowed}")
    if level not in ROLLOUT_CORRECTION_LEVELS:
        allowed = list(ROLLOUT_CORRECTION_LEVELS)
        raise ValueError(f"unknown rollout correction level {level!r}; allowed: {allowed}")
    if not threshold > 0:
        raise ValueError(f"rollout correction threshold must be > 0, got {threshold}")
    _check_min_threshold(mode, threshold, min_threshold)
    live = mask.bool()
    if not bool(torch.isfinite(engine_logprob[live]).all()):
        raise ValueError("engine log-probs are not finite on response tokens (none recorded?)")
    ratio = torch.exp(correction_log_ratio(trainer_logprob, engine_logprob, mask, level))
    over = outside_bounds(ratio, threshold, min_threshold) & live
    zero = torch.zeros_like(ratio)
    weights = torch.where(live, correction_weights(ratio, threshold, mode, over), zero)
    loss_mask = mask.to(ratio.dtype)
    if mode == "mis":
        loss_mask = loss_mask * (~over).to(ratio.dtype)
    metrics = correction_metrics(ratio, over, trainer_logprob, engine_logprob, mask, level)
    return RolloutCorrection(weights, loss_mask, metrics)


def _check_min_threshold(mode: str, threshold: float, min_threshold: float | None) -> None:
    """A lower bound is a rejection bound: ``mis`` only, and in (0, threshold)."""
    if min_threshold is None:
        return
    if mode == "tis":
        raise ValueError(
            "a rollout correction min_threshold needs mode 'mis' (tis truncates from above only)"
        )
    if not 0 < min_threshold < threshold:
        raise ValueError(
            f"rollout correction min_threshold must be in (0, threshold={threshold}), "
            f"got {min_threshold}"
        )
