"""Policy losses by name, one signature for all (modelled on verl's ``register_policy_loss``).

Every loss is ``fn(logprob, behavior_logprob, precedent_logprob, advantages, mask, *, eps_low,
eps_high, centre, agg, denominator, norm_length, clip_ratio_c, weights) -> PolicyLossOutput``
on ``[batch, tokens]`` tensors: log π_θ (with gradient), log μ (the behaviour policy that
generated the token), log π_k (the policy at the start of the iteration), advantages and the
response mask. ``eps_*`` may be floats or ``[batch, 1]`` tensors (per-row ε for reused
samples). The ReMix twist shared by all three: the clip is centred on c = π_k/μ rather than
on 1, so that a stored sample's trust region sits around the current iterate π_k, not
around the old policy that produced it; on fresh data μ = π_k, c = 1 and each loss is
exactly its published on-policy form.

* ``mix-ppg``: PPO-clip with the shifted centre (+ optional dual clip), see ``losses.py``;
* ``gspo``: GSPO (Zheng et al. 2025), one ratio per response: the geometric mean of the
  token ratios, clipped around the sequence centre ``exp(mean_t log(π_k/μ))``;
* ``cispo``: CISPO (MiniMax-M1, 2025), REINFORCE weighted by the clipped, detached token
  ratio, so that clipped tokens keep their gradient.

Adding one is a function with that signature plus ``@register_policy_loss("name")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from remix_rft.algorithm.aggregation import aggregate
from remix_rft.algorithm.losses import (
    CLIP_CENTRES,
    MAX_LOG_RATIO,
    PolicyLossOutput,
    check_clip_ratio_c,
    clip_centre,
    clipped_surrogate,
    mix_ppg_policy_loss,
    weigh,
)

DEFAULT_POLICY_LOSS = "mix-ppg"
# Dual-clip constant when a config turns it on: verl's ``clip_ratio_c`` default and the value
# of Ye et al. (2020). A negative-advantage token whose ratio ran past 3·c stops pushing its
# probability down harder: enough headroom above any ε_high in use (≤ 0.3), and it caps the
# unbounded −A·r term that stale, low-μ tokens otherwise blow up.
DUAL_CLIP_RATIO_C = 3.0


class PolicyLossFn(Protocol):
    def __call__(
        self,
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
    ) -> PolicyLossOutput: ...


POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: make ``fn`` selectable as ``policy_loss(name)``. Re-registering a name with
    a different function is an error (two modules silently fighting over one name)."""

    def register(fn: PolicyLossFn) -> PolicyLossFn:
        if POLICY_LOSSES.get(name, fn) is not fn:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return register


def policy_loss(name: str) -> PolicyLossFn:
    """The registered policy loss called ``name``, or a ValueError naming the allowed ones."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; allowed: {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]


register_policy_loss("mix-ppg")(mix_ppg_policy_loss)


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's masked tokens, ``[batch, 1]``; padding (even NaN) is ignored and
    an empty row gives 0."""
    live = mask.bool()
    total = torch.where(live, values, torch.zeros_like(values)).sum(dim=-1, keepdim=True)
    return total / live.sum(dim=-1, keepdim=True).clamp(min=1)


def sequence_clip_centre(
    precedent_logprob: torch.Tensor,
    behavior_logprob: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "current",
) -> torch.Tensor:
    """GSPO's centre per response, ``[batch, 1]``: ``exp(mean_t log(π_k/μ))`` (``current``),
    the same geometric mean that turns token ratios into GSPO's sequence ratio, applied to
    the centre's token ratios; 1 for ``one``. Fresh data: exactly 1."""
    if mode == "one":
        return torch.ones_like(precedent_logprob[:, :1])
    if mode != "current":
        raise ValueError(f"unknown clip centre {mode!r}; allowed: {list(CLIP_CENTRES)}")
    log_c = sequence_mean(precedent_logprob - behavior_logprob, mask)
    return torch.exp(log_c.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))


@register_policy_loss("gspo")
def gspo_policy_loss(
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
    """GSPO-token: the clipped surrogate on ``s_i,t = sg[s_i]·π_θ(y_t)/sg[π_θ(y_t)]``.

    ``s_i = exp(mean_t log(π_θ/μ))`` over the response's masked tokens: every token of a
    response shares the sequence ratio's value (so one response is clipped as a whole), while
    each token keeps its own gradient ∇log π_θ(y_t), as verl's ``compute_policy_loss_gspo``.
    The clip window is ``[c_i − ε_low, c_i + ε_high]`` with ``c_i = exp(mean_t log(π_k/μ))``
    (``sequence_clip_centre``). GSPO's ε are per sequence and small (paper: 3e-4 / 4e-4).
    ``agg`` is honoured; verl hard-codes ``seq-mean-token-mean`` for GSPO (the paper's 1/|y_i|
    weighting), so pass that to reproduce it; ``token-mean`` weighs responses by length.
    ``clip_ratio_c`` applies the dual clip to ``s_i,t`` as in ``mix-ppg`` (verl has none).
    """
    clip_ratio_c = check_clip_ratio_c(clip_ratio_c)
    log_seq = sequence_mean(logprob.detach() - behavior_logprob, mask)
    # verl's order of operations (the detached term added last keeps the value exact).
    log_ratio = logprob - logprob.detach() + log_seq
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    c = sequence_clip_centre(precedent_logprob, behavior_logprob, mask, centre).detach()
    per_token, low, high, dual = clipped_surrogate(
        ratio, c, advantages, mask, eps_low=eps_low, eps_high=eps_high, clip_ratio_c=clip_ratio_c
    )
    per_token = weigh(per_token, weights)
    loss = aggregate(per_token, mask, agg, denominator=denominator, norm_length=norm_length)
    return PolicyLossOutput(loss, ratio.detach(), low, high, dual)


@register_policy_loss("cispo")
def cispo_policy_loss(
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
    """CISPO: ``−sg[clip(r, c − ε_low, c + ε_high)]·A·log π_θ`` per token.

    PPO zeroes the gradient of a token whose ratio left the trust region; CISPO clips only
    the importance weight and detaches it, so every token keeps its REINFORCE gradient
    (rare "fork" tokens with large ratios are the ones that matter, MiniMax-M1 §3.1). The
    centre c = π_k/μ is Mix-PPG's; on fresh data c = 1, verl's ``compute_policy_loss_cispo``.
    The flags mark tokens whose weight was clipped (their gradient still flows). The dual
    clip has no effect: the weight is already ≤ c + ε_high, below the dual bound; the
    argument is accepted (and checked) so that one config drives every loss.
    """
    check_clip_ratio_c(clip_ratio_c)
    ratio = torch.exp((logprob - behavior_logprob).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    c = clip_centre(precedent_logprob, behavior_logprob, centre).detach()
    low, high = c - eps_low, c + eps_high
    weight = torch.minimum(torch.maximum(ratio, low), high).detach()
    per_token = weigh(-weight * advantages * logprob, weights)
    loss = aggregate(per_token, mask, agg, denominator=denominator, norm_length=norm_length)
    with torch.no_grad():
        live = mask.bool()
        clipped_low, clipped_high = (ratio < low) & live, (ratio > high) & live
    return PolicyLossOutput(loss, ratio.detach(), clipped_low, clipped_high)
