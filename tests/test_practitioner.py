"""End to end on the embedded model: dynamic sampling, rollout correction, overlong handling,
policy losses by name (the pure functions are tested in test_policy_losses.py)."""

import json
import math

import pytest
import torch

from remix_rft.engines.generation import HFEngine
from remix_rft.trainer import loop, update
from remix_rft.trainer.config import ConfigError
from remix_rft.trainer.loop import train

# Rewards with a spread only for problems whose id sums to 0 mod 3 (odd-length responses
# score 1): the other groups are uniform (all 0), so dynamic sampling must drop them.
SOME_UNIFORM = (
    "def score(response, problem):\n"
    "    if sum(map(ord, str(problem.get('id', '')))) % 3:\n"
    "        return 0.0\n"
    "    return float(len(response) % 2)\n"
)


def rows_of(cfg) -> list[dict]:
    lines = (cfg.resolved_out_dir() / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def reward_file(tmp_path, text: str) -> str:
    path = tmp_path / "reward.py"
    path.write_text(text)
    return f"task.reward_fn={path}:score"


def spy_fresh(monkeypatch) -> list[list]:
    """Every iteration's fresh samples as they reach the mixed batch (and so the update)."""
    seen: list[list] = []
    original = loop.Trainer.mixed_batch

    def spy(self, fresh, step):
        seen.append(list(fresh))
        return original(self, fresh, step)

    monkeypatch.setattr(loop.Trainer, "mixed_batch", spy)
    return seen


def groups(samples) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for s in samples:
        out.setdefault(s.group, []).append(s.reward)
    return out


def test_dynamic_sampling_drops_uniform_groups_and_counts_them(tiny_config, tmp_path, monkeypatch):
    seen = spy_fresh(monkeypatch)
    cfg = tiny_config("steps=3", "dynamic_sampling=true", "max_generation_rounds=3",
                      reward_file(tmp_path, SOME_UNIFORM), "task.reward_workers=0")  # fmt: skip
    train(cfg)
    assert seen, "no iteration had a group with signal"
    for fresh in seen:
        for rewards in groups(fresh).values():
            assert len(rewards) == 4 and len(set(rewards)) > 1  # never a uniform group
    rows = [r for r in rows_of(cfg) if r["step"] > 0]
    dropped = sum(r["dynamic/dropped_groups"] for r in rows)
    kept = sum(r["dynamic/kept_groups"] for r in rows)
    assert dropped > 0
    # every generated response counts: kept and dropped groups of G = 4
    assert rows[-1]["rollouts"] == 4 * (kept + dropped)
    assert all(1 <= r["dynamic/rounds"] <= 3 for r in rows)
    assert kept == sum(len(groups(f)) for f in seen)


def test_dynamic_sampling_keeps_dropped_groups_out_of_the_replay_buffer(
    tiny_config, tmp_path, monkeypatch
):
    cfg = tiny_config("steps=3", "algorithm=remix-grpo", "dynamic_sampling=true",
                      reward_file(tmp_path, SOME_UNIFORM), "task.reward_workers=0")  # fmt: skip
    trainer = loop.Trainer(cfg, loop.prepare_run_dir(cfg))
    try:
        trainer.run()
        stored = trainer.buffer.past(cfg.steps + 1)
    finally:
        trainer.close()
    assert stored
    assert all(len(set(rewards)) > 1 for rewards in groups(stored).values())


def test_an_iteration_without_any_signal_counts_its_rollouts_and_skips_the_update(
    tiny_config, tmp_path
):
    cfg = tiny_config("steps=2", "dynamic_sampling=true", "max_generation_rounds=2",
                      reward_file(tmp_path, "def score(response, problem):\n    return 0.0\n"),
                      "task.reward_workers=0")  # fmt: skip
    summary = train(cfg)
    rows = [r for r in rows_of(cfg) if r["step"] > 0]
    assert summary["updates"] == 0
    assert [r["rollouts"] for r in rows] == [32, 64]  # 2 rounds of 4 prompts × 4, per step
    assert all(r["dynamic/kept_groups"] == 0 and r["dynamic/dropped_groups"] == 8 for r in rows)


def test_dynamic_sampling_needs_a_group_estimator(tiny_config):
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        tiny_config("algorithm=ppo", "dynamic_sampling=true")


def shifted_engine(monkeypatch, shift: float) -> list[int]:
    """The engine reports log-probs ``shift`` nats below what it sampled with on the first
    response of every training call, as a mismatched kernel would: π_trainer/π_engine = e^shift
    there. Returns the token counts of the shifted responses."""
    original, shifted = HFEngine.generate, []

    def generate(self, prompts, settings):
        gen = original(self, prompts, settings)
        if settings.logprobs:  # the training batch (evaluation records no log-probs)
            gen.logprobs[0] = gen.logprobs[0] - shift
            shifted.append(int(gen.logprobs[0].numel()))
        return gen

    monkeypatch.setattr(HFEngine, "generate", generate)
    return shifted


@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_rollout_correction_sees_a_known_engine_mismatch(tiny_config, monkeypatch, mode):
    shifted = shifted_engine(monkeypatch, math.log(3.0))  # ratio 3 > the threshold 2
    cfg = tiny_config("steps=1", f"rollout_correction={mode}")
    train(cfg)
    row = rows_of(cfg)[-1]
    assert len(shifted) == 1
    assert row["rollout_correction/ratio_max"] == pytest.approx(3.0, rel=1e-3)
    # exactly the shifted response's tokens are over the threshold (truncated or masked)
    assert row["rollout_correction/masked_frac"] == pytest.approx(shifted[0] / row["tokens"])
    assert row["rollout_correction/mismatch_kl"] > 0.01


def test_icepop_bounds_mask_the_tokens_the_engine_undersampled(tiny_config, monkeypatch):
    """rollout_correction_min: a ratio 1/3 (under 0.5) is rejected as well as one over 2."""
    shifted = shifted_engine(monkeypatch, -math.log(3.0))  # ratio 1/3 on one response
    cfg = tiny_config("steps=1", "rollout_correction=mis", "rollout_correction_min=0.5")
    assert cfg.rollout_correction_min == 0.5
    train(cfg)
    row = rows_of(cfg)[-1]
    assert row["rollout_correction/ratio_max"] == pytest.approx(1.0, abs=1e-3)
    assert row["rollout_correction/masked_frac"] == pytest.approx(shifted[0] / row["tokens"])


@pytest.mark.parametrize(
    "overrides, allowed",
    [
        (["rollout_correction=tis", "rollout_correction_min=0.5"], "null unless"),
        (["rollout_correction=mis", "rollout_correction_min=2.0"], "in (0, rollout_correction"),
    ],
)
def test_a_lower_correction_bound_needs_mis_and_the_threshold_above_it(
    tiny_config, overrides, allowed
):
    with pytest.raises(ConfigError, match="rollout_correction_min") as err:
        tiny_config(*overrides)
    assert allowed in str(err.value)


def test_without_correction_the_ratio_to_the_engine_is_one(tiny_config):
    cfg = tiny_config("steps=1", "rollout_correction=tis")
    train(cfg)
    row = rows_of(cfg)[-1]
    # the HF engine samples with the trained module itself: no mismatch beyond kernels
    assert row["rollout_correction/ratio_max"] == pytest.approx(1.0, abs=1e-3)
    assert row["rollout_correction/masked_frac"] == 0.0


def test_mask_truncated_and_overlong_penalty_end_to_end(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("steps=1", "max_new_tokens=40", "mask_truncated=true",
                      "overlong_buffer_tokens=16", "overlong_penalty=0.5",
                      reward_file(tmp_path, "def score(response, problem):\n    return 1.0\n"),
                      "task.reward_workers=0")  # fmt: skip
    seen = spy_fresh(monkeypatch)
    masks = []
    original = update.Updater.update

    def spy(self, batch, pre, step):
        masks.append((pre.loss_mask.clone(), batch.finished.clone(), batch.response_mask.clone()))
        return original(self, batch, pre, step)

    monkeypatch.setattr(update.Updater, "update", spy)
    train(cfg)
    row = rows_of(cfg)[-1]
    fresh = seen[0]
    for s in fresh:  # 40-token budget, 16-token buffer: -0.5·(length − 24)/16 past 24 tokens
        n = s.response_ids.numel()
        expected = (1.0 if s.finished else 0.0) - 0.5 * min(max(n - 24, 0), 16) / 16
        assert s.reward == pytest.approx(expected)
    assert row["overlong/penalty_mean"] < 0
    assert 0 < sum(not s.finished for s in fresh) < len(fresh)
    loss_mask, finished, response_mask = masks[0]
    assert torch.equal(loss_mask[~finished], torch.zeros_like(loss_mask[~finished]))
    assert torch.equal(loss_mask[finished], response_mask[finished])


@pytest.mark.parametrize("loss", ["gspo", "cispo"])
def test_policy_losses_by_name_train_end_to_end(tiny_config, loss):
    summary = train(tiny_config("steps=2", f"policy_loss={loss}", "clip_ratio_c=3.0"))
    assert summary["updates"] == 2


def test_critic_warmup_iterations_train_only_the_critic(tiny_config, monkeypatch):
    """``critic_warmup_steps=2``: iterations 1 and 2 leave the policy alone, 3 trains it."""
    trained = []
    original = update.Updater.policy_update

    def spy(self, batch, pre, mb, eps, step, stats):
        trained.append(step)
        return original(self, batch, pre, mb, eps, step, stats)

    monkeypatch.setattr(update.Updater, "policy_update", spy)
    train(tiny_config("algorithm=ppo", "steps=3", "critic_warmup_steps=2", "eval_every=100"))
    assert sorted(set(trained)) == [3]


def test_paper_kl_lambda_schedule_by_hand():
    from remix_rft.algorithm import PAPER_KL_LAMBDA_SCHEDULE as paper

    values = {t: paper(t) for t in (1, 50, 59, 60, 69, 70, 95, 100, 500)}
    expected = {1: 1.0, 50: 1.0, 59: 1.0, 60: 0.9, 69: 0.9, 70: 0.8, 95: 0.6, 100: 0.5, 500: 0.5}
    assert values == pytest.approx(expected)
    assert [t for t, _ in paper.breakpoints(200)] == [1, 60, 70, 80, 90, 100]


def test_step_down_schedule_floors_at_kl_lambda_and_reaches_the_loss(tiny_config):
    cfg = tiny_config("algorithm=remix-grpo", "kl_coef=0.01", "kl_lambda_schedule=step-down",
                      "kl_lambda_hold_steps=1", "kl_lambda_every=1", "kl_lambda_decrement=0.25",
                      "kl_lambda=0.6", "steps=3", "eval_every=100")  # fmt: skip
    assert [cfg.kl_lambda_at(t) for t in (1, 2, 3, 4)] == pytest.approx([1.0, 0.75, 0.6, 0.6])
    assert cfg.needs_reference  # λ starts at 1: π_base is needed even if the floor were 0
    train(cfg)
    rows = rows_of(cfg)[1:]
    assert [r["kl/lambda"] for r in rows] == pytest.approx([1.0, 0.75, 0.6])


def test_constant_schedule_is_kl_lambda(tiny_config):
    cfg = tiny_config("kl_lambda=0.3")
    assert cfg.kl_lambda_at(1) == cfg.kl_lambda_at(10**6) == 0.3


def test_bad_schedule_names_the_key(tiny_config):
    with pytest.raises(ConfigError, match="kl_lambda_schedule"):
        tiny_config("kl_lambda_schedule=linear")


def test_eval_every_rollouts_evaluates_on_the_rollout_grid(tiny_config):
    # 16 rollouts per iteration, a multiple of 40 crossed at iterations 3 (48), 5 (80), 8 (128)
    cfg = tiny_config("steps=9", "eval_every_rollouts=40", "save_every=100")
    assert [t for t in range(1, 10) if cfg.is_eval_step(t, (16 * (t - 1), 16 * t))] == [3, 5, 8, 9]
    train(cfg)
    evaluated = [r["step"] for r in rows_of(cfg) if "eval/accuracy" in r]
    assert evaluated == [0, 3, 5, 8, 9]  # the base model, the grid, the last iteration


class _FixedMin:
    """A DistEnv stand-in whose all-reduce MIN returns what the other ranks kept."""

    def __init__(self, global_min: int) -> None:
        self.global_min = global_min

    def min_int(self, value: int) -> int:
        return min(value, self.global_min)


def test_balance_groups_cuts_every_rank_to_the_global_minimum():
    from remix_rft.data.buffer import Sample
    from remix_rft.trainer.producer import Rollout, balance_groups

    samples = [
        Sample(prompt_ids=torch.tensor([1]), response_ids=torch.tensor([2]),
               behavior_logprobs=torch.zeros(1), reward=float(i % 2), finished=True,
               advantage=0.0, version=1, group=i // 2)
        for i in range(6)
    ]  # fmt: skip
    rollout = Rollout(step=1, samples=samples, policy_version=0, generated=8, num_tokens=8,
                      gen_seconds=1.0, tokens_per_s=8.0, reflection_rate=0.0,
                      metrics={"dynamic/kept_groups": 3.0, "dynamic/dropped_groups": 1.0})  # fmt: skip
    cut = balance_groups(rollout, _FixedMin(1), group_size=2)
    assert [s.group for s in cut.samples] == [0, 0]  # whole groups, the first ones
    assert cut.generated == 8  # the dropped responses were sampled: they still count
    assert cut.metrics["dynamic/kept_groups"] == 1.0
    assert cut.metrics["dynamic/dropped_groups"] == 3.0
    assert cut.metrics["dynamic/balanced_groups"] == 2.0
    same = balance_groups(rollout, _FixedMin(5), group_size=2)
    assert len(same.samples) == 6 and same.metrics["dynamic/balanced_groups"] == 0.0
