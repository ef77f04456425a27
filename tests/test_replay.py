"""Replay strategies (remix_rft/data/replay.py; docs/design.md §2.11): the registry, what
each strategy may draw, and through the real loop: μ and version of replayed samples,
``uniform`` = the pre-registry path, resume with a non-default strategy."""

import copy
import json
from pathlib import Path

import pytest
import torch

from remix_rft.data import replay
from remix_rft.data.batch import collate
from remix_rft.data.buffer import ReplayBuffer, Sample
from remix_rft.engines.policy import response_logprobs
from remix_rft.trainer.config_fields import ConfigError
from remix_rft.trainer.loop import Trainer, resume, train

REPLAY = ("algorithm=remix-grpo", "window=3", "offpolicy_fraction=0.4")
UNTIMED = ("time/", "gen/", "async/")  # wall-clock and engine timings differ run to run


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def timeless(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(UNTIMED)} for r in rows]


def sample(version: int, group: int, i: int, informative: bool) -> Sample:
    reward = float(i % 2) if informative else 1.0
    return Sample(
        prompt_ids=torch.tensor([1, 2, 3]),
        response_ids=torch.tensor([4, 5 + i]),
        behavior_logprobs=torch.tensor([-0.5, -0.25 - version]),
        reward=reward,
        advantage=(reward - 0.5) * 2 if informative else 0.0,
        version=version,
        group=group,
        finished=True,
    )


def fill(buffer: ReplayBuffer, version: int, informative_groups: set[int], groups: int = 4):
    fresh = [
        sample(version, version * 100 + g, i, g in informative_groups)
        for g in range(groups)
        for i in range(4)
    ]
    buffer.add(fresh)
    buffer.evict(version)
    return fresh


def test_strategies_are_registered_functions_and_unknown_names_fail():
    assert {"uniform", "informative", "fill-uniform", "success"} <= set(replay.REPLAY_STRATEGIES)
    for name, fn in replay.REPLAY_STRATEGIES.items():
        assert callable(fn) and replay.replay_strategy(name) is fn
    with pytest.raises(ValueError, match="unknown replay strategy 'newest'"):
        replay.replay_strategy("newest")
    from remix_rft.trainer.config import load_config

    with pytest.raises(ConfigError, match="replay_strategy"):
        load_config(None, [*REPLAY, "replay_strategy=newest"])
    with pytest.raises(ConfigError, match="replay_strategy.*on-policy"):
        load_config(None, ["algorithm=grpo", "replay_strategy=informative"])
    with pytest.raises(ConfigError, match="replay_strategy"):  # a critic's advantages move
        load_config(None, ["algorithm=remix-ppo", "window=3", "replay_strategy=informative"])


@pytest.mark.parametrize("name", ["informative", "fill-uniform", "success"])
def test_informative_selection_never_draws_a_uniform_group(name):
    buffer = ReplayBuffer(window=3, seed=0)
    drawn = 0
    for step in range(1, 30):
        fresh = [sample(step, step * 100 + g, i, g == step % 4) for g in range(4) for i in range(4)]
        buffer.evict(step)  # as the loop does before it mixes
        mixed = replay.mix(name, fresh, buffer, 6, step)
        for s in mixed.replayed:
            assert s.group % 100 == s.version % 4, "a uniform group was replayed"
            assert s.version < step and step - s.version <= 2
        drawn += len(mixed.replayed)
        if name == "fill-uniform":  # the batch keeps its size when the pool allows it
            assert len(mixed.samples) <= len(fresh) + 6
            signal = [s for s in fresh if s.group % 100 == step % 4]
            assert all(any(s is k for k in mixed.fresh) for s in signal)
        buffer.add(mixed.fresh)
        buffer.evict(step)
    assert drawn > 0


def test_fill_uniform_swaps_fresh_uniform_groups_for_informative_replay():
    buffer = ReplayBuffer(window=3, seed=0)
    fill(buffer, 1, {0, 1, 2})
    fill(buffer, 2, {0, 1})  # 20 informative past samples
    fresh = [sample(3, 300 + g, i, g == 0) for g in range(4) for i in range(4)]
    mixed = replay.mix("fill-uniform", fresh, buffer, 4, 3)
    assert len(mixed.samples) == 20  # 16 fresh + 4 off-policy, as uniform replay
    assert [s.group for s in mixed.fresh] == [300] * 4  # only the informative fresh group
    assert len(mixed.replayed) == 16
    # too few informative past samples: fresh uniform samples fill up to the same size
    small = ReplayBuffer(window=3, seed=0)
    fill(small, 2, {0, 1})
    mixed = replay.mix("fill-uniform", fresh, small, 4, 3)
    assert len(mixed.samples) == 20 and len(mixed.replayed) == 8
    assert [s.group for s in mixed.fresh] == [300] * 4 + [301] * 4 + [302] * 4


def test_uniform_is_the_buffers_own_draw_and_no_share_means_fresh_only():
    a, b = ReplayBuffer(window=3, seed=5), ReplayBuffer(window=3, seed=5)
    for v in (1, 2):
        fill(a, v, {0})
        fill(b, v, {0})
    fresh = [sample(3, 300, i, True) for i in range(4)]
    mixed = replay.mix("uniform", fresh, a, 7, 3)
    key = lambda ss: [(s.version, s.group, s.response_ids.tolist()) for s in ss]  # noqa: E731
    assert key(mixed.fresh) == key(fresh) and key(mixed.replayed) == key(b.sample_past(7, 3))
    assert all(s.replays == 1 for s in mixed.replayed)
    for name in replay.REPLAY_STRATEGIES:
        assert key(replay.mix(name, fresh, a, 0, 3).samples) == key(fresh)


def test_replay_metrics_report_shares_ages_and_reuse():
    buffer = ReplayBuffer(window=3, seed=0)
    fill(buffer, 1, {0})
    fill(buffer, 2, {0, 1})
    fresh = [sample(3, 300 + g, i, g == 0) for g in range(4) for i in range(4)]
    mixed = replay.mix("informative", fresh, buffer, 12, 3)
    row = replay.replay_metrics(mixed, fresh, 3, 3)
    assert row["fresh/informative_frac"] == 0.25
    assert row["replay/informative_frac"] == 1.0
    assert row["batch/informative_frac"] == (4 + 12) / 28
    assert row["replay/age_1"] + row["replay/age_2"] == pytest.approx(1.0)
    assert row["replay/reuse_mean"] == 1.0 and row["replay/reuse_max"] == 1.0


def test_replayed_samples_keep_the_generating_policys_mu_and_version(tiny_config, monkeypatch):
    """Through the real loop: a replayed sample's μ is the log-prob of its response under the
    weights that generated it (those after iteration version − 1), recomputed here."""
    weights: dict[int, dict] = {}
    replayed: list[tuple[int, Sample]] = []
    original = Trainer.mixed_batch

    def spy(self, fresh, step):
        weights[step - 1] = copy.deepcopy(self.policy.state_dict())  # generated fresh
        mixed = original(self, fresh, step)
        replayed.extend((step, s) for s in mixed.replayed)
        return mixed

    monkeypatch.setattr(Trainer, "mixed_batch", spy)
    cfg = tiny_config(*REPLAY, "replay_strategy=informative", "steps=4", "epochs=2",
                      "eval_every=10", "seed=3")  # fmt: skip
    train(cfg)
    assert replayed, "nothing was replayed"
    from remix_rft.engines.policy import load_policy

    model = load_policy(cfg.model)
    for step, s in replayed:
        assert s.version < step and s.policy_version == s.version - 1
        assert s.advantage != 0.0 or s.reward == 0.0  # informative: from a mixed group
        model.load_state_dict(weights[s.version - 1])
        mu = response_logprobs(model.eval(), collate([s], 0), temperature=cfg.temperature)
        assert torch.allclose(mu[0, : s.response_ids.numel()], s.behavior_logprobs, atol=1e-5)


def test_uniform_reproduces_the_pre_registry_path(tiny_config, monkeypatch):
    """``replay_strategy: uniform`` = the loop's old ``fresh + buffer.sample_past``, exactly."""
    cfg = tiny_config(*REPLAY, "steps=4", "epochs=2", out="registry")
    train(cfg)

    def legacy(self, fresh, step):
        self.buffer.evict(step)
        n_past = self.dist.local_offpolicy(self.phase().offpolicy_batch_size)
        return replay.MixedBatch(list(fresh), self.buffer.sample_past(n_past, step))

    monkeypatch.setattr(Trainer, "mixed_batch", legacy)
    old = tiny_config(*REPLAY, "steps=4", "epochs=2", out="legacy")
    train(old)
    a, b = read_metrics(cfg.resolved_out_dir()), read_metrics(old.resolved_out_dir())
    assert a[3]["offpolicy/samples"] > 0
    keys = [k for k in a[3] if not k.startswith(("replay/", "batch/", "fresh/"))]
    assert [{k: r.get(k) for k in keys} for r in timeless(a)] == [
        {k: r.get(k) for k in keys} for r in timeless(b)
    ]


def test_resume_with_a_non_default_strategy_equals_an_uninterrupted_run(tiny_config):
    straight = tiny_config(*REPLAY, "replay_strategy=informative", "steps=5", out="straight")
    train(straight)
    first = tiny_config(*REPLAY, "replay_strategy=informative", "steps=2", out="split")
    train(first)
    more = tiny_config(*REPLAY, "replay_strategy=informative", "steps=5", out="split")
    resume(more.resolved_out_dir(), more)
    a, b = read_metrics(straight.resolved_out_dir()), read_metrics(more.resolved_out_dir())
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4, 5]
    assert any(r.get("replay/reuse_max", 0) >= 2 for r in a), "no sample replayed twice"
    assert timeless(a) == timeless(b)


def test_success_replays_whole_informative_groups_hardest_first():
    buffer = ReplayBuffer(window=4, seed=0)
    for version, rewards in ((1, [0.25, 0.75]), (2, [0.5, 0.25]), (3, [1.0, 0.0])):
        buffer.add([
            Sample(prompt_ids=torch.tensor([1]), response_ids=torch.tensor([2, i]),
                   behavior_logprobs=torch.tensor([-0.5, -0.5]), reward=float(i < 4 * mean),
                   advantage=float(i < 4 * mean) - mean if 0 < mean < 1 else 0.0,
                   version=version, group=version * 100 + g, finished=True)
            for g, mean in enumerate(rewards) for i in range(4)
        ])  # fmt: skip
    mixed = replay.mix("success", [], buffer, 10, 4)
    groups = [s.group for s in mixed.replayed]
    # mean 0.25 at versions 2 and 1 (newer first), then 0.5; the uniform groups (1.0, 0.0) never
    assert groups[:8] == [201] * 4 + [100] * 4
    assert groups[8:] == [200, 200] and len(mixed.replayed) == 10
    assert replay.mix("success", [], buffer, 100, 4).replayed.__len__() == 16  # the pool, whole
