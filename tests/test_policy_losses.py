"""Policy losses by name (mix-ppg + dual clip, GSPO, CISPO), the assembled objective, rollout
correction and DAPO's overlong handling: hand-computed values on tiny tensors, with each
expected number derived in a comment, and parity with verl 0.9's formulas written out below
in plain torch (verl itself is not imported).
"""

from __future__ import annotations

import math

import pytest
import torch

from remix_rft.algorithm import (
    POLICY_LOSSES,
    aggregate,
    assemble_policy_objective,
    cispo_policy_loss,
    gspo_policy_loss,
    kl_convex,
    mask_truncated,
    mix_ppg_policy_loss,
    overlong_penalty,
    policy_loss,
    register_policy_loss,
    rollout_correction,
    sequence_clip_centre,
    truncation_mask,
)
from remix_rft.algorithm.losses import clip_centre

LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0.0)


def grad_of(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


def random_batch(seed: int = 0, rows: int = 4, tokens: int = 7, spread: float = 0.6):
    """Log-probs of μ, π_k (a little off μ) and π_θ (far enough to clip), advantages of both
    signs, and a right-padded mask."""
    gen = torch.Generator().manual_seed(seed)
    behavior = -2.0 * torch.rand(rows, tokens, generator=gen)
    precedent = behavior + 0.15 * torch.randn(rows, tokens, generator=gen)
    logprob = behavior + spread * torch.randn(rows, tokens, generator=gen)
    advantages = torch.randn(rows, tokens, generator=gen)
    mask = torch.ones(rows, tokens)
    mask[1, 5:] = 0.0
    mask[2, 2:] = 0.0
    return logprob.requires_grad_(), behavior, precedent, advantages, mask


# --------------------------------------------------------------------------------------
# References: verl 0.9 core_algos formulas, and Mix-PPG as it was before dual clip
# --------------------------------------------------------------------------------------


def verl_agg_loss(loss_mat, mask, mode):
    if mode == "token-mean":
        return (loss_mat * mask).sum() / mask.sum()
    assert mode == "seq-mean-token-mean"
    return ((loss_mat * mask).sum(dim=-1) / mask.sum(dim=-1)).mean()


def verl_vanilla(old, lp, adv, mask, lo, hi, clip_ratio_c, mode, rollout_is_weights=None):
    """verl compute_policy_loss_vanilla: PPO-clip with dual clip for A < 0."""
    ratio = torch.exp(torch.clamp(lp - old, min=-20.0, max=20.0))
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1 - lo, 1 + hi)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -adv * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(adv < 0, clip_pg_losses2, clip_pg_losses1)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights
    return verl_agg_loss(pg_losses, mask, mode)


def verl_gspo(old, lp, adv, mask, lo, hi):
    """verl compute_policy_loss_gspo (always seq-mean-token-mean)."""
    negative_approx_kl = lp - old
    seq_lengths = torch.sum(mask, dim=-1).clamp(min=1)
    negative_approx_kl_seq = torch.sum(negative_approx_kl * mask, dim=-1) / seq_lengths
    log_s = lp - lp.detach() + negative_approx_kl_seq.detach().unsqueeze(-1)
    s = torch.exp(torch.clamp(log_s, max=10.0))
    pg_losses = torch.maximum(-adv * s, -adv * torch.clamp(s, 1 - lo, 1 + hi))
    return verl_agg_loss(pg_losses, mask, "seq-mean-token-mean")


def verl_cispo(old, lp, adv, mask, lo, hi, mode):
    """verl compute_policy_loss_cispo: −sg[clip(r)]·A·log π."""
    ratio = torch.exp(torch.clamp(lp - old, min=-20.0, max=20.0))
    clipped_ratio = torch.clamp(ratio, 1 - lo, 1 + hi).detach()
    return verl_agg_loss(-clipped_ratio * adv * lp, mask, mode)


def mix_ppg_before_dual_clip(lp, behavior, precedent, adv, mask, *, eps_low, eps_high, **agg):
    """``mix_ppg_policy_loss`` verbatim as it was before this change (no dual clip)."""
    ratio = torch.exp((lp - behavior).clamp(-20.0, 20.0))
    c = clip_centre(precedent, behavior, "current").detach()
    low, high = c - eps_low, c + eps_high
    clipped_ratio = torch.minimum(torch.maximum(ratio, low), high)
    unclipped, clipped = ratio * adv, clipped_ratio * adv
    surrogate = torch.minimum(unclipped, clipped)
    loss = aggregate(-surrogate, mask, agg.pop("agg"), **agg)
    active = (clipped < unclipped) & mask.bool()
    return loss, ratio.detach(), active & (ratio < low), active & (ratio > high)


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------


def test_registry_names_and_unknown_name_lists_allowed():
    assert {"mix-ppg", "gspo", "cispo"} <= set(POLICY_LOSSES)
    assert policy_loss("mix-ppg") is mix_ppg_policy_loss
    assert policy_loss("gspo") is gspo_policy_loss
    assert policy_loss("cispo") is cispo_policy_loss
    with pytest.raises(ValueError, match=r"allowed: \['cispo', 'gspo', 'mix-ppg'"):
        policy_loss("sapo")


def test_register_policy_loss_adds_a_name_and_refuses_a_clash():
    def mine(*args, **kwargs):
        return mix_ppg_policy_loss(*args, **kwargs)

    try:
        assert register_policy_loss("test-mine")(mine) is mine
        assert policy_loss("test-mine") is mine
        register_policy_loss("test-mine")(mine)  # the same function again is harmless
        with pytest.raises(ValueError, match="already registered"):
            register_policy_loss("test-mine")(mix_ppg_policy_loss)
    finally:
        POLICY_LOSSES.pop("test-mine", None)


@pytest.mark.parametrize("name", ["mix-ppg", "gspo", "cispo"])
@pytest.mark.parametrize("bad", [0.5, 1.0])
def test_clip_ratio_c_must_exceed_one(name, bad):
    lp, behavior, precedent, adv, mask = random_batch()
    fn = policy_loss(name)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        fn(lp, behavior, precedent, adv, mask, eps_low=0.2, eps_high=0.2, clip_ratio_c=bad)
    for off in (None, 0, 0.0):  # 0 and None both mean off
        fn(lp, behavior, precedent, adv, mask, eps_low=0.2, eps_high=0.2, clip_ratio_c=off)


# --------------------------------------------------------------------------------------
# mix-ppg: unchanged without dual clip; dual clip by hand and against verl
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_mix_ppg_without_dual_clip_is_bitwise_todays_output(agg):
    lp, behavior, precedent, adv, mask = random_batch(seed=1)
    eps_low = torch.tensor([[0.2], [0.1], [0.2], [0.05]])  # per-row ε, as for reused rows
    shape = {"agg": agg, "denominator": 9.0, "norm_length": 7.0}
    out = mix_ppg_policy_loss(
        lp, behavior, precedent, adv, mask, eps_low=eps_low, eps_high=0.28, **shape
    )
    ref_loss, ref_ratio, ref_low, ref_high = mix_ppg_before_dual_clip(
        lp, behavior, precedent, adv, mask, eps_low=eps_low, eps_high=0.28, **dict(shape)
    )
    assert (ref_low | ref_high).any()  # the example exercises clipping
    assert torch.equal(out.loss, ref_loss)
    assert torch.equal(out.ratio, ref_ratio)
    assert torch.equal(out.clipped_low, ref_low) and torch.equal(out.clipped_high, ref_high)
    assert out.clipped_dual is None
    assert torch.equal(grad_of(out.loss, lp), grad_of(ref_loss, lp))
    # Weights of exactly 1 change nothing either.
    ones = mix_ppg_policy_loss(
        lp, behavior, precedent, adv, mask, eps_low=eps_low, eps_high=0.28,
        weights=torch.ones_like(adv), **shape,
    )  # fmt: skip
    assert torch.equal(ones.loss, ref_loss)


def test_dual_clip_negative_advantages_by_hand():
    # Fresh (c = 1), ε = 0.2, C = 3.
    # tok  r    A    max(−A·r, −A·clip(r))     dual −A·C   loss   active
    #  0   4   −1    max(4, 1.2)   = 4          3           3      dual (gradient 0)
    #  1   2   −1    max(2, 1.2)   = 2          3           2      r·A (gradient −A·r = 2)
    #  2   0.5 −1    max(0.5, 0.8) = 0.8        3           0.8    low clip (gradient 0)
    #  3   4   +1    max(−4, −1.2) = −1.2       —          −1.2    high clip (gradient 0)
    # token-mean: (3 + 2 + 0.8 − 1.2)/4 = 1.15; without dual clip (4 + 2 + 0.8 − 1.2)/4 = 1.4.
    r = torch.tensor([[4.0, 2.0, 0.5, 4.0]])
    behavior = torch.zeros(1, 4)
    lp = torch.log(r).requires_grad_()
    adv = torch.tensor([[-1.0, -1.0, -1.0, 1.0]])
    mask = torch.ones(1, 4)
    out = mix_ppg_policy_loss(
        lp, behavior, behavior, adv, mask, eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0
    )
    close(out.loss, 1.15)
    assert out.clipped_dual.tolist() == [[True, False, False, False]]
    assert out.clipped_low.tolist() == [[False, False, True, False]]
    assert out.clipped_high.tolist() == [[False, False, False, True]]
    close(grad_of(out.loss, lp), [[0.0, 0.5, 0.0, 0.0]])  # 2 / 4 tokens
    off = mix_ppg_policy_loss(lp, behavior, behavior, adv, mask, eps_low=0.2, eps_high=0.2)
    close(off.loss, 1.4)


def test_dual_clip_bound_scales_with_the_shifted_centre():
    # Stored rows, A = −1, ε = 0.2, C = 3; bound = max(c·C, c + ε_high).
    # Row 0: c = 2 -> bound max(6, 2.2) = 6. r = 8 -> −A·r = 8 capped at 6; r = 5 -> 5 stays.
    # Row 1: c = 0.05 -> c·C = 0.15 would cut inside the trust region [−0.15, 0.25], so the
    #        bound is c + ε_high = 0.25: r = 0.2 (inside) -> 0.2 stays; r = 0.5 -> 0.25.
    behavior = torch.zeros(2, 2)
    precedent = torch.log(torch.tensor([[2.0, 2.0], [0.05, 0.05]]))
    lp = torch.log(torch.tensor([[8.0, 5.0], [0.2, 0.5]]))
    adv = -torch.ones(2, 2)
    mask = torch.ones(2, 2)
    out = mix_ppg_policy_loss(
        lp, behavior, precedent, adv, mask, eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0,
        agg="seq-mean-token-mean",
    )  # fmt: skip
    assert out.clipped_dual.tolist() == [[True, False], [False, True]]
    # per row mean: (6 + 5)/2 = 5.5, (0.2 + 0.25)/2 = 0.225; mean 2.8625
    close(out.loss, 2.8625, atol=1e-5)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_mix_ppg_fresh_data_matches_verl_vanilla_with_dual_clip(mode):
    # Fresh data: μ = π_k (precedent = behaviour), so c = 1 and Mix-PPG is verl's PPO.
    lp, behavior, _, adv, mask = random_batch(seed=2, spread=1.2)
    weights = torch.rand(adv.shape, generator=torch.Generator().manual_seed(5)) + 0.5
    for w in (None, weights):
        out = mix_ppg_policy_loss(
            lp, behavior, behavior.clone(), adv, mask, eps_low=0.2, eps_high=0.28,
            clip_ratio_c=3.0, agg=mode, weights=w,
        )  # fmt: skip
        ref = verl_vanilla(behavior, lp, adv, mask, 0.2, 0.28, 3.0, mode, rollout_is_weights=w)
        assert out.clipped_dual[mask.bool()].any()  # the example exercises the dual clip
        close(out.loss, ref.item())
        close(grad_of(out.loss, lp), grad_of(ref, lp))


# --------------------------------------------------------------------------------------
# Fresh data at the first update (μ = π_k = π_θ): every loss is PPO's policy gradient
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mix-ppg", "gspo", "cispo"])
def test_first_update_on_fresh_data_is_the_plain_policy_gradient(name):
    # r ≡ 1, nothing is clipped, and ∇ of every loss is −A/n per token (token-mean), which
    # is PPO's (and REINFORCE's) gradient at θ = θ_old. The PPO-form losses equal −mean(A).
    _, behavior, _, adv, mask = random_batch(seed=3)
    lp = behavior.clone().requires_grad_()
    out = policy_loss(name)(
        lp, behavior, behavior.clone(), adv, mask, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0
    )
    n = mask.sum()
    close(grad_of(out.loss, lp), -adv * mask / n)
    close(out.ratio[mask.bool()], torch.ones(int(n)))
    assert not (out.clipped_low | out.clipped_high).any()
    if name != "cispo":  # CISPO's value is −A·log π, not −A·r
        close(out.loss, float(-(adv * mask).sum() / n))


# --------------------------------------------------------------------------------------
# GSPO
# --------------------------------------------------------------------------------------


def test_gspo_sequence_ratio_clip_and_token_gradient_by_hand():
    # Fresh, A = +1, ε = 0.2 -> window [0.8, 1.2]; token-mean over 5 tokens.
    # Row 0: log r = [0.3, −0.1, 0.4]: mean 0.2 -> s = e^0.2 = 1.2214 > 1.2: clipped, −1.2 each,
    #        gradient 0 (clipped as a whole, although token 1 alone has r < 1).
    # Row 1: log r = [0.1, 0.1] (+ a pad): s = e^0.1 = 1.1052, inside: −s each; each token's
    #        gradient is −A·s/5 through its own log π (stop-gradient form), not −s/(2·5).
    # loss = (3·(−1.2) + 2·(−e^0.1))/5
    behavior = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    lp = (behavior + torch.tensor([[0.3, -0.1, 0.4], [0.1, 0.1, 5.0]])).requires_grad_()
    adv = torch.ones(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = gspo_policy_loss(lp, behavior, behavior, adv, mask, eps_low=0.2, eps_high=0.2)
    close(out.ratio[0], [math.exp(0.2)] * 3)
    close(out.ratio[1, :2], [math.exp(0.1)] * 2)
    assert out.clipped_high.tolist() == [[True, True, True], [False, False, False]]
    close(out.loss, (3 * -1.2 + 2 * -math.exp(0.1)) / 5)
    s1 = math.exp(0.1) / 5
    close(grad_of(out.loss, lp), [[0.0, 0.0, 0.0], [-s1, -s1, 0.0]])


def test_gspo_sequence_centre_is_geometric_mean_of_token_centres():
    # log(π_k/μ) = [0.1, 0.3] (+ a pad of 9 that must not count) -> c = exp(0.2); 'one' -> 1.
    behavior = torch.zeros(1, 3)
    precedent = torch.tensor([[0.1, 0.3, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    close(sequence_clip_centre(precedent, behavior, mask), [[math.exp(0.2)]])
    close(sequence_clip_centre(precedent, behavior, mask, "one"), [[1.0]])
    with pytest.raises(ValueError, match="allowed"):
        sequence_clip_centre(precedent, behavior, mask, "behaviour")
    # A stored response with s = e^0.3 = 1.3499, A = +1, ε = 0.2: around 1 it is clipped
    # (> 1.2, loss −1.2), around c = e^0.2 = 1.2214 it is inside [1.0214, 1.4214] (loss −s).
    lp = torch.tensor([[0.3, 0.3, 0.0]])
    kw = {"eps_low": 0.2, "eps_high": 0.2}
    current = gspo_policy_loss(lp, behavior, precedent, torch.ones(1, 3), mask, **kw)
    one = gspo_policy_loss(lp, behavior, precedent, torch.ones(1, 3), mask, centre="one", **kw)
    close(current.loss, -math.exp(0.3))
    close(one.loss, -1.2)


def test_gspo_fresh_data_matches_verl():
    lp, behavior, _, adv, mask = random_batch(seed=4, spread=0.3)
    adv = adv[:, :1].expand_as(adv).contiguous()  # GSPO: one advantage per response
    out = gspo_policy_loss(
        lp, behavior, behavior.clone(), adv, mask, eps_low=0.03, eps_high=0.04,
        agg="seq-mean-token-mean",
    )  # fmt: skip
    ref = verl_gspo(behavior, lp, adv, mask, 0.03, 0.04)
    assert out.clipped_high.any() or out.clipped_low.any()
    close(out.loss, ref.item())
    close(grad_of(out.loss, lp), grad_of(ref, lp))


# --------------------------------------------------------------------------------------
# CISPO
# --------------------------------------------------------------------------------------


def test_cispo_clipped_tokens_keep_their_gradient():
    # Fresh, ε_low = 0.2, ε_high = 0.28. r = [2, 1, 0.5] -> sg weights [1.28, 1, 0.8].
    # log π = [−0.5, −1, −2], A = [1, 1, −1]:
    # loss = −(1.28·1·(−0.5) + 1·1·(−1) + 0.8·(−1)·(−2))/3 = −(−0.04)/3 = 0.0133333
    # ∇ = −w·A/3 = [−1.28/3, −1/3, 0.8/3]: non-zero on the clipped tokens 0 and 2, where
    # PPO's (mix-ppg's) gradient is exactly 0.
    lp = torch.tensor([[-0.5, -1.0, -2.0]], requires_grad=True)
    behavior = lp.detach() - torch.tensor([[LN2, 0.0, -LN2]])
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    kw = {"eps_low": 0.2, "eps_high": 0.28}
    out = cispo_policy_loss(lp, behavior, behavior, adv, mask, **kw)
    close(out.loss, 0.04 / 3)
    close(grad_of(out.loss, lp), [[-1.28 / 3, -1.0 / 3, 0.8 / 3]])
    assert out.clipped_high.tolist() == [[True, False, False]]
    assert out.clipped_low.tolist() == [[False, False, True]]
    ppo = mix_ppg_policy_loss(lp, behavior, behavior, adv, mask, **kw)
    close(grad_of(ppo.loss, lp), [[0.0, -1.0 / 3, 0.0]])


def test_cispo_centre_is_mix_ppgs():
    # Stored token: c = π_k/μ = 2, r = 3: window [1.8, 2.28] -> weight 2.28 (around 1: 1.28).
    lp = torch.tensor([[-1.0]], requires_grad=True)
    behavior = lp.detach() - LN3
    precedent = behavior + LN2
    one = torch.ones(1, 1)
    kw = {"eps_low": 0.2, "eps_high": 0.28}
    out = cispo_policy_loss(lp, behavior, precedent, one, one, **kw)
    close(grad_of(out.loss, lp), [[-2.28]])
    out = cispo_policy_loss(lp, behavior, precedent, one, one, centre="one", **kw)
    close(grad_of(out.loss, lp), [[-1.28]])


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_cispo_fresh_data_matches_verl(mode):
    lp, behavior, _, adv, mask = random_batch(seed=5)
    out = cispo_policy_loss(
        lp, behavior, behavior.clone(), adv, mask, eps_low=0.2, eps_high=0.28, agg=mode
    )
    ref = verl_cispo(behavior, lp, adv, mask, 0.2, 0.28, mode)
    close(out.loss, ref.item())
    close(grad_of(out.loss, lp), grad_of(ref, lp))


# --------------------------------------------------------------------------------------
# assemble_policy_objective
# --------------------------------------------------------------------------------------


def trainer_assembly(lp, behavior, precedent, adv, mask, base, entropy, *, beta, lam, ent, agg):
    """What trainer/loop.py ``policy_update`` computes inline, line for line."""
    out = mix_ppg_policy_loss(
        lp, behavior, precedent, adv, mask, eps_low=0.2, eps_high=0.28, centre="current", **agg
    )
    loss = out.loss
    if beta > 0:
        base = base if base is not None else precedent
        kl = kl_convex(lp, base, precedent, lam=lam, kind="k3")
        loss = loss + beta * aggregate(
            kl, mask, agg["agg"], denominator=agg["denominator"], norm_length=agg["norm_length"]
        )
    if ent > 0:
        loss = loss - ent * aggregate(
            entropy, mask, agg["agg"], denominator=agg["denominator"],
            norm_length=agg["norm_length"],
        )  # fmt: skip
    return loss


@pytest.mark.parametrize("beta,lam,ent", [(0.0, 0.0, 0.0), (0.05, 0.0, 0.0), (0.05, 0.5, 0.01)])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum-norm"])
def test_assemble_policy_objective_is_the_trainers_arithmetic(beta, lam, ent, mode):
    lp, behavior, precedent, adv, mask = random_batch(seed=6)
    base = precedent - 0.3 if lam > 0 else None  # λ = 0: the trainer has no base log-probs
    entropy = torch.rand(adv.shape, generator=torch.Generator().manual_seed(7)) * 2
    agg = {"agg": mode, "denominator": 11.0, "norm_length": 7.0}
    got = assemble_policy_objective(
        lp, behavior, precedent, adv, mask, eps_low=0.2, eps_high=0.28, kl_coef=beta,
        kl_lambda=lam, kl_estimator="k3", base_logprob=base, entropy=entropy,
        entropy_coef=ent, **agg,
    )  # fmt: skip
    want = trainer_assembly(
        lp, behavior, precedent, adv, mask, base, entropy, beta=beta, lam=lam, ent=ent, agg=agg
    )
    assert torch.equal(got.loss, want)
    assert torch.equal(grad_of(got.loss, lp), grad_of(want, lp))
    assert (got.kl is None) == (beta == 0)


def test_assemble_policy_objective_hand_values():
    # One fresh token, r = 1 (θ = μ = π_k), A = 2 -> policy term −2.
    # KL-Convex λ = 1 to a base with log π_base = log π − ln 2: k3 = e^{−ln2} + ln2 − 1
    #   = ln2 − 0.5 = 0.1931472; β = 0.1 -> +0.0193147. Entropy 1.5, coef 0.2 -> −0.3.
    # Total −2 + 0.0193147 − 0.3 = −2.2806853.
    lp = torch.tensor([[-1.0]], requires_grad=True)
    behavior = lp.detach().clone()
    one = torch.ones(1, 1)
    got = assemble_policy_objective(
        lp, behavior, behavior, 2 * one, one, eps_low=0.2, eps_high=0.2, kl_coef=0.1,
        kl_lambda=1.0, base_logprob=behavior - LN2, entropy=1.5 * one, entropy_coef=0.2,
    )  # fmt: skip
    close(got.policy.loss, -2.0)
    close(got.kl, [[LN2 - 0.5]])
    close(got.loss, -2.0 + 0.1 * (LN2 - 0.5) - 0.3)


def test_assemble_policy_objective_weights_touch_only_the_policy_term():
    # Weights 2 on every token double the policy term; the KL term is unchanged.
    lp, behavior, precedent, adv, mask = random_batch(seed=8)
    kw = {"eps_low": 0.2, "eps_high": 0.28, "kl_coef": 0.1}
    plain = assemble_policy_objective(lp, behavior, precedent, adv, mask, **kw)
    doubled = assemble_policy_objective(
        lp, behavior, precedent, adv, mask, weights=2 * torch.ones_like(adv), **kw
    )
    close(doubled.policy.loss, 2 * plain.policy.loss.item())
    close(doubled.loss - doubled.policy.loss, (plain.loss - plain.policy.loss).item())


@pytest.mark.parametrize("name", ["gspo", "cispo"])
def test_assemble_policy_objective_dispatches_by_name(name):
    lp, behavior, precedent, adv, mask = random_batch(seed=9)
    kw = {"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 3.0}
    got = assemble_policy_objective(lp, behavior, precedent, adv, mask, loss=name, **kw)
    assert torch.equal(got.loss, policy_loss(name)(lp, behavior, precedent, adv, mask, **kw).loss)


def test_assemble_policy_objective_refuses_missing_inputs():
    lp, behavior, precedent, adv, mask = random_batch()
    kw = {"eps_low": 0.2, "eps_high": 0.2}
    with pytest.raises(ValueError, match="base log-probs"):
        assemble_policy_objective(
            lp, behavior, precedent, adv, mask, kl_coef=0.1, kl_lambda=0.5, **kw
        )
    with pytest.raises(ValueError, match="entropy"):
        assemble_policy_objective(lp, behavior, precedent, adv, mask, entropy_coef=0.1, **kw)
    with pytest.raises(ValueError, match="allowed"):
        assemble_policy_objective(lp, behavior, precedent, adv, mask, loss="sapo", **kw)


# --------------------------------------------------------------------------------------
# Rollout correction
# --------------------------------------------------------------------------------------

# Trainer log-probs, and the engine's perturbed by known amounts (ratio = π_trainer/π_engine):
# row 0: engine −ln4 on token 1 -> ratio 4; engine +ln2 on token 2 -> ratio 0.5;
# row 1: engine −ln3 on token 0 -> ratio 3; token 3 is padding (engine NaN there).
TRAINER = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-0.5, -0.5, -0.5, -0.5]])
ENGINE = TRAINER + torch.tensor([[0.0, -LN4, LN2, 0.0], [-LN3, 0.0, 0.0, math.nan]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
# k3 KL(engine‖trainer) per token = r − ln r − 1: r = 4 -> 3 − ln4; r = 0.5 -> ln2 − 0.5;
# r = 3 -> 2 − ln3; r = 1 -> 0. Sum 4.5 − ln4 + ln2 − ln3 = 4.5 − ln6, over 7 tokens.
MISMATCH_KL = (4.5 - math.log(6.0)) / 7


def metrics_close(metrics, ratio_max, ratio_mean, masked_frac):
    expected = {
        "rollout_correction/ratio_max": ratio_max,
        "rollout_correction/ratio_mean": ratio_mean,
        "rollout_correction/masked_frac": masked_frac,
        "rollout_correction/mismatch_kl": MISMATCH_KL,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_token_tis_truncates_the_ratio_at_the_threshold():
    # ratios [[1, 4, 0.5, 1], [3, 1, 1, pad]], threshold 2 -> [[1, 2, 0.5, 1], [2, 1, 1, 0]].
    out = rollout_correction(TRAINER, ENGINE, MASK, mode="tis", level="token", threshold=2.0)
    close(out.weights, [[1.0, 2.0, 0.5, 1.0], [2.0, 1.0, 1.0, 0.0]])
    assert torch.equal(out.mask, MASK)
    assert not out.weights.requires_grad
    # max 4; mean (1 + 4 + 0.5 + 1 + 3 + 1 + 1)/7 = 11.5/7; 2 of 7 tokens over the threshold.
    metrics_close(out.metrics, 4.0, 11.5 / 7, 2 / 7)


def test_token_mis_masks_the_tokens_over_the_threshold():
    out = rollout_correction(TRAINER, ENGINE, MASK, mode="mis", level="token", threshold=2.0)
    close(out.weights, [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    close(out.mask, [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    metrics_close(out.metrics, 4.0, 11.5 / 7, 2 / 7)


def test_mis_with_a_lower_bound_also_masks_the_tokens_under_it():
    """IcePop-style rejection: ratios outside [min_threshold, threshold] leave the loss."""
    # ratios [[1, 4, 0.5, 1], [3, 1, 1, pad]]; bounds [0.6, 2]: 4, 0.5 and 3 are dropped.
    out = rollout_correction(
        TRAINER, ENGINE, MASK, mode="mis", level="token", threshold=2.0, min_threshold=0.6
    )
    close(out.weights, [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    close(out.mask, [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    metrics_close(out.metrics, 4.0, 11.5 / 7, 3 / 7)  # 3 of 7 tokens outside the bounds
    # a lower bound under every ratio changes nothing: [0.4, 2] masks 4 and 3 only
    loose = rollout_correction(TRAINER, ENGINE, MASK, mode="mis", min_threshold=0.4)
    close(loose.mask, [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    # sequence level: row 0's product 2 is in [1.5, 2.5], row 1's 3 is over it
    seq = rollout_correction(
        TRAINER, ENGINE, MASK, mode="mis", level="sequence", threshold=2.5, min_threshold=1.5
    )
    close(seq.mask, [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    seq = rollout_correction(
        TRAINER, ENGINE, MASK, mode="mis", level="sequence", threshold=4.0, min_threshold=2.5
    )
    close(seq.mask, [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])  # row 0's 2 is under it


def test_a_lower_bound_is_refused_with_tis_or_above_the_threshold():
    with pytest.raises(ValueError, match="needs mode 'mis'"):
        rollout_correction(TRAINER, ENGINE, MASK, mode="tis", min_threshold=0.5)
    with pytest.raises(ValueError, match="min_threshold must be in"):
        rollout_correction(TRAINER, ENGINE, MASK, mode="mis", threshold=2.0, min_threshold=2.0)


def test_sequence_level_uses_the_product_of_token_ratios():
    # Row 0: 1·4·0.5·1 = 2 (= threshold: kept, and min(2, 2) = 2); row 1: 3·1·1 = 3 > 2.
    tis = rollout_correction(TRAINER, ENGINE, MASK, mode="tis", level="sequence", threshold=2.0)
    close(tis.weights, [[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 0.0]])
    # Over sequences: max 3, mean 2.5; row 1's 3 tokens of 7 are over the threshold.
    metrics_close(tis.metrics, 3.0, 2.5, 3 / 7)
    mis = rollout_correction(TRAINER, ENGINE, MASK, mode="mis", level="sequence", threshold=2.0)
    close(mis.weights, [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    close(mis.mask, [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])


def test_none_weighs_one_and_still_reports():
    out = rollout_correction(TRAINER, ENGINE, MASK, mode="none")
    assert torch.equal(out.weights, MASK) and torch.equal(out.mask, MASK)
    metrics_close(out.metrics, 4.0, 11.5 / 7, 2 / 7)


def test_rollout_correction_plugs_into_the_objective():
    # Fresh tokens, r = 1 inside the clip: per-token surrogate −A; with TIS weights
    # [[1, 2, 0.5, 1], [2, 1, 1, 0]] and A = 1: −(1 + 2 + 0.5 + 1 + 2 + 1 + 1)/7 = −8.5/7.
    corr = rollout_correction(TRAINER, ENGINE, MASK, mode="tis", threshold=2.0)
    adv = torch.ones(2, 4)
    got = assemble_policy_objective(
        TRAINER, TRAINER, TRAINER, adv, corr.mask, eps_low=0.2, eps_high=0.2,
        weights=corr.weights,
    )  # fmt: skip
    close(got.loss, -8.5 / 7)


def test_rollout_correction_refuses_bad_arguments():
    with pytest.raises(ValueError, match="allowed"):
        rollout_correction(TRAINER, ENGINE, MASK, mode="icepop")
    with pytest.raises(ValueError, match="allowed"):
        rollout_correction(TRAINER, ENGINE, MASK, level="geometric")
    with pytest.raises(ValueError, match="threshold"):
        rollout_correction(TRAINER, ENGINE, MASK, threshold=0.0)
    with pytest.raises(ValueError, match="not finite"):
        rollout_correction(TRAINER, torch.full_like(TRAINER, math.nan), MASK)


def test_rollout_correction_of_an_empty_batch_reports_zeros():
    out = rollout_correction(TRAINER, ENGINE, torch.zeros_like(MASK))
    assert set(out.metrics.values()) == {0.0}
    assert not out.weights.any()


# --------------------------------------------------------------------------------------
# Overlong handling (DAPO)
# --------------------------------------------------------------------------------------


def test_overlong_penalty_at_the_boundaries():
    # max 10, buffer 4 -> free up to 6, then −penalty·(len − 6)/4, −penalty at 10 and beyond.
    lengths = torch.tensor([0, 6, 7, 8, 10, 12])
    got = overlong_penalty(lengths, max_new_tokens=10, buffer_tokens=4, penalty=1.0)
    close(got, [0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    # buffer = max: the ramp starts at length 0.
    full = overlong_penalty(
        torch.tensor([0, 5, 10]), max_new_tokens=10, buffer_tokens=10, penalty=2.0
    )
    close(full, [0.0, -1.0, -2.0])


@pytest.mark.parametrize(
    "buffer,penalty,match", [(0, 1.0, "buffer"), (11, 1.0, "buffer"), (4, -1.0, "penalty")]
)
def test_overlong_penalty_refuses_bad_settings(buffer, penalty, match):
    with pytest.raises(ValueError, match=match):
        overlong_penalty(
            torch.tensor([1]), max_new_tokens=10, buffer_tokens=buffer, penalty=penalty
        )


def test_truncated_completions_leave_the_loss_mask():
    finished = torch.tensor([True, False, True])
    assert truncation_mask(finished).tolist() == [[1.0], [0.0], [1.0]]
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    assert mask_truncated(mask, finished).tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
