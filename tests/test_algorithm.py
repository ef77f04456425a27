"""Hand-computed checks of the pure tensor functions in ``remix_rft.algorithm``.

Every expected number is derived in a comment next to it (docs/design.md §2), so a reader can
verify the arithmetic without running anything.
"""

from __future__ import annotations

import math

import pytest
import torch

from remix_rft.algorithm import (
    ADVANTAGE_ESTIMATORS,
    advantage_estimator,
    aggregate,
    clip_centre,
    gae_advantages,
    grpo_advantages,
    kl_convex,
    kl_estimate,
    masked_whiten,
    mix_ppg_policy_loss,
    rloo_advantages,
    value_loss,
)
from remix_rft.algorithm.aggregation import aggregation_count


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0.0)


# --------------------------------------------------------------------------------------
# Advantage estimators by name; RLOO
# --------------------------------------------------------------------------------------


def test_rloo_advantages_hand_values():
    # A_i = r_i − mean of the other G − 1 rewards of the group (G = 4):
    # [1, 0, 0, 1]: others' means [1/3, 2/3, 2/3, 1/3] -> [2/3, −2/3, −2/3, 2/3];
    # [3, 1, 0, 2] (sum 6): others' means [1, 5/3, 2, 4/3] -> [2, −2/3, −2, 2/3].
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 0.0, 2.0])
    third = 1.0 / 3.0
    expected = [2 * third, -2 * third, -2 * third, 2 * third, 2.0, -2 * third, -2.0, 2 * third]
    close(rloo_advantages(rewards, group_size=4), expected, atol=1e-6)
    # G = 2: the baseline is the other reward: [1, 0] -> [1, −1]; equal rewards -> 0.
    close(rloo_advantages(torch.tensor([1.0, 0.0, 5.0, 5.0]), 2), [1.0, -1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.zeros(4), group_size=1)


def test_estimators_are_one_registry_by_name():
    assert {"grpo", "rloo", "gae"} <= set(ADVANTAGE_ESTIMATORS)
    assert advantage_estimator("gae").uses_critic and not advantage_estimator("rloo").uses_critic
    assert advantage_estimator("grpo").fn is grpo_advantages
    with pytest.raises(ValueError, match="allowed"):
        advantage_estimator("vtrace")


# --------------------------------------------------------------------------------------
# GRPO advantages (§3.1)
# --------------------------------------------------------------------------------------


def test_grpo_advantages_hand_values():
    # Group 1: rewards [1, 0, 0, 1] -> mean 0.5; deviations ±0.5;
    #   unbiased var = 4·0.25 / 3 = 1/3, std = 0.5773503;
    #   A = ±0.5 / (0.5773503 + 1e-6) = ±0.8660239.
    # Group 2: rewards [2, 0, 0, 0] -> mean 0.5; deviations [1.5, -0.5, -0.5, -0.5];
    #   unbiased var = (2.25 + 3·0.25) / 3 = 1, std = 1;
    #   A = [1.5, -0.5, -0.5, -0.5] / (1 + 1e-6).
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0])
    a = 0.5 / (math.sqrt(1.0 / 3.0) + 1e-6)
    s = 1.0 / (1.0 + 1e-6)
    expected = [a, -a, -a, a, 1.5 * s, -0.5 * s, -0.5 * s, -0.5 * s]
    close(grpo_advantages(rewards, group_size=4), expected, atol=1e-6)


def test_grpo_zero_variance_group_gives_zero_advantage():
    # Group [3, 3]: all equal -> centred 0 / (0 + 1e-6) = 0; the other group is unaffected.
    rewards = torch.tensor([3.0, 3.0, 1.0, 0.0])
    adv = grpo_advantages(rewards, group_size=2)
    assert torch.equal(adv[:2], torch.zeros(2))
    assert torch.isfinite(adv).all()
    # Group [1, 0]: mean 0.5, unbiased std = sqrt(2·0.25/1) = 0.7071068 -> ±0.7071058.
    close(adv[2:], [0.5 / (math.sqrt(0.5) + 1e-6), -0.5 / (math.sqrt(0.5) + 1e-6)], atol=1e-6)


def test_grpo_without_std_scaling_only_centres():
    # Dr. GRPO: [1, 0, 0, 1] -> mean 0.5 -> [0.5, -0.5, -0.5, 0.5];
    # [4, 0, 0, 0] -> mean 1 -> [3, -1, -1, -1].
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 4.0, 0.0, 0.0, 0.0])
    adv = grpo_advantages(rewards, group_size=4, scale_by_std=False)
    close(adv, [0.5, -0.5, -0.5, 0.5, 3.0, -1.0, -1.0, -1.0], atol=1e-7)


@pytest.mark.parametrize(
    ("n", "group_size"),
    [(4, 1), (4, 0), (5, 2), (6, 4)],
    ids=["group-size-1", "group-size-0", "odd-length", "not-a-multiple"],
)
def test_grpo_rejects_bad_group_size(n, group_size):
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(n), group_size=group_size)


# --------------------------------------------------------------------------------------
# GAE (§3.1)
# --------------------------------------------------------------------------------------


def test_gae_outcome_reward_gamma1_lambda1_is_return_minus_value():
    # γ = λ = 1, reward R = 1 on the last token: every δ telescopes, so
    # A_t = R − V_t = [1 − 0.2, 1 − 0.5, 1 − 0.9] = [0.8, 0.5, 0.1] and returns = R = 1.
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.5, 0.9]])
    mask = torch.ones(1, 3)
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    close(adv, [[0.8, 0.5, 0.1]])
    close(ret, [[1.0, 1.0, 1.0]])


def test_gae_gamma_09_lambda_08_by_hand():
    # rewards [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 0.9, λ = 0.8 (γλ = 0.72), V after end = 0.
    # t=2: δ2 = 1 + 0.9·0   − 0.7 = 0.3           A2 = 0.3
    # t=1: δ1 = 0 + 0.9·0.7 − 0.6 = 0.03          A1 = 0.03 + 0.72·0.3   = 0.246
    # t=0: δ0 = 0 + 0.9·0.6 − 0.5 = 0.04          A0 = 0.04 + 0.72·0.246 = 0.21712
    # returns = A + V = [0.71712, 0.846, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae_advantages(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    close(adv, [[0.21712, 0.246, 0.3]])
    close(ret, [[0.71712, 0.846, 1.0]])


def test_gae_right_padding_matches_unpadded_and_zeroes_pads():
    # Row 0 is the 3-token example above padded to 5 with garbage values/rewards at the
    # pads; row 1 is a full 5-token sequence. Real tokens must match the unpadded run.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0, 7.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0, -9.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)

    ref_adv, ref_ret = gae_advantages(
        rewards[:1, :3], values[:1, :3], mask[:1, :3], gamma=0.9, lam=0.8
    )
    close(adv[0, :3], ref_adv[0])
    close(ret[0, :3], ref_ret[0])
    assert torch.equal(adv[0, 3:], torch.zeros(2))
    assert torch.equal(ret[0, 3:], torch.zeros(2))
    # The full row is computed independently of the padded one.
    ref1_adv, _ = gae_advantages(rewards[1:], values[1:], mask[1:], gamma=0.9, lam=0.8)
    close(adv[1], ref1_adv[0])


# --------------------------------------------------------------------------------------
# masked_whiten
# --------------------------------------------------------------------------------------


def test_masked_whiten_has_zero_mean_unit_variance_on_mask_and_zeros_elsewhere():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    out = masked_whiten(values, mask)
    real = out[mask.bool()]
    # Masked values [1, 2, 3, 4, 5]: mean 3, population var 2 -> (v − 3)/sqrt(2).
    close(real, [(v - 3.0) / math.sqrt(2.0) for v in [1, 2, 3, 4, 5]])
    close(real.mean(), 0.0)
    close((real**2).mean(), 1.0)
    assert torch.equal(out[~mask.bool()], torch.zeros(3))


# --------------------------------------------------------------------------------------
# Aggregation (§3.5)
# --------------------------------------------------------------------------------------

# 2×3 example: row 0 has 3 real tokens, row 1 only 1 (its pads hold garbage).
AGG_LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
AGG_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_token_mean_by_hand():
    # (1 + 2 + 3 + 4) / 4 tokens = 2.5
    close(aggregate(AGG_LOSS, AGG_MASK, "token-mean"), 2.5)


def test_seq_mean_token_mean_by_hand():
    # row means: (1+2+3)/3 = 2, 4/1 = 4 -> (2 + 4) / 2 = 3
    close(aggregate(AGG_LOSS, AGG_MASK, "seq-mean-token-mean"), 3.0)


def test_seq_mean_token_sum_norm_by_hand():
    # row sums 6 and 4, divided by the constant length 3 -> 2 and 4/3 -> mean 5/3
    out = aggregate(AGG_LOSS, AGG_MASK, "seq-mean-token-sum-norm", norm_length=3.0)
    close(out, 5.0 / 3.0)


def test_token_mean_with_global_denominator_sums_over_shards():
    # Data-parallel property: each half divides by the GLOBAL token count, so the
    # halves add up to the whole batch's token mean.
    gen = torch.Generator().manual_seed(0)
    loss = torch.randn(4, 5, generator=gen)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float
    )
    whole = aggregate(loss, mask, "token-mean")
    global_count = aggregation_count(mask, "token-mean")
    assert global_count == 12.0
    halves = sum(
        aggregate(loss[s], mask[s], "token-mean", denominator=global_count)
        for s in (slice(0, 2), slice(2, 4))
    )
    close(halves, whole.item())
    # Without the explicit denominator the mean of the two shard means differs here
    # (7 and 5 tokens per shard), which is why the denominator exists.
    naive = 0.5 * sum(aggregate(loss[s], mask[s], "token-mean") for s in (slice(0, 2), slice(2, 4)))
    assert not torch.allclose(naive, whole)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_sequence_modes_with_global_denominator_sum_over_shards(mode):
    gen = torch.Generator().manual_seed(1)
    loss = torch.randn(4, 5, generator=gen)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float
    )
    whole = aggregate(loss, mask, mode, norm_length=5.0)
    count = aggregation_count(mask, mode)
    assert count == 4.0  # sequences, not tokens
    halves = sum(
        aggregate(loss[s], mask[s], mode, denominator=count, norm_length=5.0)
        for s in (slice(0, 1), slice(1, 4))
    )
    close(halves, whole.item())


def test_unknown_aggregation_names_allowed_modes():
    with pytest.raises(ValueError) as err:
        aggregate(AGG_LOSS, AGG_MASK, "sum")
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert mode in str(err.value)


# --------------------------------------------------------------------------------------
# KL estimators and KL-Convex (§3.3)
# --------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    # logp = −1, ref = −2: k1 = −1 − (−2) = 1; k2 = ½·1² = 0.5;
    # k3 = exp(ref − logp) − (ref − logp) − 1 = e^{−1} + 1 − 1 = 0.3678794.
    # logp = −2, ref = −1: k1 = −1; k2 = 0.5; k3 = e^{1} − 1 − 1 = 0.7182818.
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    close(kl_estimate(logp, ref, "k1"), [1.0, -1.0])
    close(kl_estimate(logp, ref, "k2"), [0.5, 0.5])
    close(kl_estimate(logp, ref, "k3"), [math.exp(-1.0), math.e - 2.0])


def test_k3_is_non_negative_and_zero_when_equal():
    gen = torch.Generator().manual_seed(0)
    logp = -3.0 * torch.rand(1000, generator=gen)
    ref = -3.0 * torch.rand(1000, generator=gen)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert torch.equal(kl_estimate(logp, logp, "k3"), torch.zeros(1000))


def test_kl_convex_endpoints_and_interior():
    logp = torch.tensor([-1.0, -0.5])
    base = torch.tensor([-2.0, -0.7])
    prec = torch.tensor([-1.2, -0.4])
    kl_base = kl_estimate(logp, base, "k3")
    kl_prec = kl_estimate(logp, prec, "k3")
    close(kl_convex(logp, base, prec, lam=1.0, kind="k3"), kl_base)
    close(kl_convex(logp, base, prec, lam=0.0, kind="k3"), kl_prec)
    close(kl_convex(logp, base, prec, lam=0.3, kind="k3"), 0.3 * kl_base + 0.7 * kl_prec)
    # by hand with k1: 0.3·[1, 0.2] + 0.7·[0.2, −0.1] = [0.44, −0.01]
    close(kl_convex(logp, base, prec, lam=0.3, kind="k1"), [0.44, -0.01])


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_kl_convex_rejects_lambda_outside_unit_interval(lam):
    x = torch.zeros(2)
    with pytest.raises(ValueError):
        kl_convex(x, x, x, lam=lam, kind="k3")


def test_unknown_kl_estimator_is_rejected():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(x, x, "k4")
    with pytest.raises(ValueError):
        kl_convex(x, x, x, lam=0.5, kind="k4")


# --------------------------------------------------------------------------------------
# Mix-PPG policy loss (§3.2)
# --------------------------------------------------------------------------------------


def reference_ppo_clip_loss(logprob, old_logprob, advantages, mask, eps_low, eps_high):
    """Textbook PPO-clip, token-mean, written independently of the code under test."""
    ratio = torch.exp(logprob - old_logprob)
    surrogate = torch.min(
        ratio * advantages, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    )
    return -(surrogate * mask).sum() / mask.sum()


def test_fresh_data_matches_independent_ppo_clip_loss_and_gradient():
    gen = torch.Generator().manual_seed(0)
    behavior = -2.0 * torch.rand(3, 6, generator=gen)
    # Move θ far enough that a good share of tokens are clipped either side.
    logprob = (behavior + 0.6 * torch.randn(3, 6, generator=gen)).requires_grad_()
    advantages = torch.randn(3, 6, generator=gen)
    mask = torch.ones(3, 6)
    mask[1, 4:] = 0.0
    mask[2, 2:] = 0.0

    # behavior == precedent: the clip centre is exactly 1 (exp(0)).
    assert torch.equal(clip_centre(behavior, behavior), torch.ones(3, 6))

    out = mix_ppg_policy_loss(
        logprob, behavior, behavior.clone(), advantages, mask, eps_low=0.2, eps_high=0.28
    )
    ref = reference_ppo_clip_loss(logprob, behavior, advantages, mask, 0.2, 0.28)
    assert (out.clipped_low | out.clipped_high).any()  # the example does exercise clipping
    close(out.loss, ref.item(), atol=1e-6)
    (grad,) = torch.autograd.grad(out.loss, logprob)
    (ref_grad,) = torch.autograd.grad(ref, logprob)
    close(grad, ref_grad, atol=1e-6)


# Stored sample: μ = behavior, π_k = precedent; c = exp(−0.8 − (−1.0)) = exp(0.2) = 1.2214028.
STORED_BEHAVIOR = torch.tensor([[-1.0, -1.0, -1.0]])
STORED_PRECEDENT = torch.tensor([[-0.8, -0.8, -0.8]])
# r = exp(logprob − behavior) = [exp(0.5), exp(0.1), exp(0.3)] = [1.6487213, 1.1051709, 1.3498588]
STORED_LOGPROB = torch.tensor([[-0.5, -0.9, -0.7]])
ONES = torch.ones(1, 3)


def test_clip_centre_is_precedent_over_behavior_per_token():
    behavior = torch.tensor([[-1.0, -2.0, -0.5]])
    precedent = torch.tensor([[-0.8, -2.5, -0.5]])
    # exp(0.2) = 1.2214028, exp(−0.5) = 0.6065307, exp(0) = 1
    close(clip_centre(precedent, behavior), [[math.exp(0.2), math.exp(-0.5), 1.0]])
    close(clip_centre(precedent, behavior, "one"), [[1.0, 1.0, 1.0]])
    with pytest.raises(ValueError):
        clip_centre(precedent, behavior, "previous")


def test_stored_data_clips_at_centre_plus_eps_high():
    # A = 1, ε = 0.2: bounds [c − 0.2, c + 0.2] = [1.0214028, 1.4214028].
    # token 0: r = 1.6487213 > 1.4214028 -> surrogate = min(1.6487, 1.4214) = 1.4214028 (clipped)
    # token 1: r = 1.1051709 inside       -> surrogate = 1.1051709
    # token 2: r = 1.3498588 inside       -> surrogate = 1.3498588
    # loss = −(1.4214028 + 1.1051709 + 1.3498588) / 3 = −1.2921442
    c = math.exp(0.2)
    out = mix_ppg_policy_loss(
        STORED_LOGPROB, STORED_BEHAVIOR, STORED_PRECEDENT, ONES, ONES, eps_low=0.2, eps_high=0.2
    )
    expected = -((c + 0.2) + math.exp(0.1) + math.exp(0.3)) / 3.0
    close(out.loss, expected)
    close(out.ratio, [[math.exp(0.5), math.exp(0.1), math.exp(0.3)]])
    assert out.clipped_high.tolist() == [[True, False, False]]
    assert not out.clipped_low.any()


def test_centre_one_clips_around_one():
    # Same data, centre "one": bounds [0.8, 1.2].
    # token 0: r = 1.6487 -> 1.2; token 1: r = 1.1052 inside; token 2: r = 1.3499 -> 1.2
    # (token 2 was NOT clipped around c = 1.2214). loss = −(1.2 + 1.1051709 + 1.2) / 3
    out = mix_ppg_policy_loss(
        STORED_LOGPROB,
        STORED_BEHAVIOR,
        STORED_PRECEDENT,
        ONES,
        ONES,
        eps_low=0.2,
        eps_high=0.2,
        centre="one",
    )
    close(out.loss, -(1.2 + math.exp(0.1) + 1.2) / 3.0)
    assert out.clipped_high.tolist() == [[True, False, True]]


def test_unknown_centre_is_rejected():
    with pytest.raises(ValueError):
        mix_ppg_policy_loss(
            STORED_LOGPROB,
            STORED_BEHAVIOR,
            STORED_PRECEDENT,
            ONES,
            ONES,
            eps_low=0.2,
            eps_high=0.2,
            centre="behaviour",
        )


def test_per_sample_eps_clips_off_policy_rows_tighter():
    # Two fresh rows (c = 1), same r = exp(0.1) = 1.1051709 and A = 1.
    # Row 0 (on-policy) ε = 0.2: r inside [0.8, 1.2]   -> surrogate 1.1051709
    # Row 1 (off-policy) ε = 0.05: r > 1.05           -> surrogate 1.05 (clipped)
    behavior = torch.full((2, 2), -1.0)
    logprob = torch.full((2, 2), -0.9)
    adv = torch.ones(2, 2)
    mask = torch.ones(2, 2)
    eps = torch.tensor([[0.2], [0.05]])
    out = mix_ppg_policy_loss(logprob, behavior, behavior, adv, mask, eps_low=eps, eps_high=eps)
    assert out.clipped_high.tolist() == [[False, False], [True, True]]
    # token-mean over 4 tokens: −(2·1.1051709 + 2·1.05) / 4 = −1.0775855
    close(out.loss, -(2 * math.exp(0.1) + 2 * 1.05) / 4.0)
    # With a scalar ε = 0.2 for every row nothing would be clipped.
    loose = mix_ppg_policy_loss(logprob, behavior, behavior, adv, mask, eps_low=0.2, eps_high=0.2)
    assert not loose.clipped_high.any()


def test_clip_flags_on_hand_example():
    # Fresh data (c = 1), ε_low = 0.2, ε_high = 0.28 -> bounds [0.8, 1.28].
    # token  r     A    unclipped  clipped   min-active?  flag
    #   0   1.5   +1    1.5        1.28      clipped      high
    #   1   0.5   −1   −0.5       −0.8       clipped      low
    #   2   0.5   +1    0.5        0.8       unclipped    —   (pessimistic bound keeps r·A)
    #   3   1.5   −1   −1.5       −1.28      unclipped    —
    #   4   1.0   +1    1.0        1.0       tie          —
    #   5   1.5   +1    (masked out)                      —
    r = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.0, 1.5]])
    behavior = torch.zeros(1, 6)
    logprob = torch.log(r)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    out = mix_ppg_policy_loss(logprob, behavior, behavior, adv, mask, eps_low=0.2, eps_high=0.28)
    assert out.clipped_high.tolist() == [[True, False, False, False, False, False]]
    assert out.clipped_low.tolist() == [[False, True, False, False, False, False]]
    # loss = −(1.28 − 0.8 + 0.5 − 1.5 + 1.0) / 5 = −0.48 / 5 = −0.096
    close(out.loss, -0.096)


def test_gradient_is_zero_where_clipped_term_is_active():
    # Fresh data, A = +1, ε = 0.2. Token 0: r = 1.5 > 1.2 (clipped, gradient 0).
    # Token 1: r = 1.1 inside: d/dlogp of −r·A / 2 tokens = −r / 2 = −0.55.
    r = torch.tensor([[1.5, 1.1]])
    behavior = torch.zeros(1, 2)
    logprob = torch.log(r).requires_grad_()
    out = mix_ppg_policy_loss(
        logprob, behavior, behavior, torch.ones(1, 2), torch.ones(1, 2), eps_low=0.2, eps_high=0.2
    )
    (grad,) = torch.autograd.grad(out.loss, logprob)
    assert out.clipped_high.tolist() == [[True, False]]
    assert grad[0, 0].item() == 0.0
    close(grad[0, 1], -0.55)


def test_policy_loss_ratio_is_detached():
    logprob = STORED_LOGPROB.clone().requires_grad_()
    out = mix_ppg_policy_loss(
        logprob, STORED_BEHAVIOR, STORED_PRECEDENT, ONES, ONES, eps_low=0.2, eps_high=0.2
    )
    assert out.loss.requires_grad
    assert not out.ratio.requires_grad


# --------------------------------------------------------------------------------------
# Clipped value loss
# --------------------------------------------------------------------------------------


def test_value_loss_hand_example_and_clip_flags():
    # clip_range 0.2, returns R = 2 everywhere.
    # token 0: V_old 1, V 1.5 -> clip(V) = 1.2; plain (1.5−2)² = 0.25, clipped (1.2−2)² = 0.64
    #          -> ½·0.64 = 0.32, clipping active
    # token 1: V_old 1, V 1.1 -> within range, clip(V) = 1.1; both (0.9)² = 0.81 -> 0.405, inactive
    # token 2: V_old 1, V 0.5 -> clip(V) = 0.8; plain 2.25 > clipped 1.44 -> 1.125, inactive
    # token 3: masked out (would be active) -> not counted, flag False
    # token-mean = (0.32 + 0.405 + 1.125) / 3 = 1.85 / 3 = 0.6166667
    values = torch.tensor([[1.5, 1.1, 0.5, 1.5]], requires_grad=True)
    old = torch.ones(1, 4)
    returns = torch.full((1, 4), 2.0)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, flags = value_loss(values, old, returns, mask, clip_range=0.2)
    close(loss, 1.85 / 3.0)
    assert flags.tolist() == [[True, False, False, False]]
    # Where clipping is active the loss is flat in V: zero gradient there.
    (grad,) = torch.autograd.grad(loss, values)
    # token 1: d/dV ½(V−R)²/3 = (1.1 − 2)/3 = −0.3; token 2: (0.5 − 2)/3 = −0.5
    close(grad, [[0.0, -0.3, -0.5, 0.0]])
