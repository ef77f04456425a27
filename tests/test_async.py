"""Asynchronous rollouts: a producer process up to η policy versions ahead of the learner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from remix_rft.trainer.loop import Trainer, resume, train
from remix_rft.trainer.rollouts import ProducerError
from tests.test_trainer import _wait_for_progress, loop_overrides, resume_args

REPO = Path(__file__).resolve().parents[1]
REMIX = ("algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5", "kl_coef=0.02")


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def test_async_with_staleness_0_equals_sync_on_a_fixed_seed(tiny_config):
    """η = 0: the producer waits for every update, continues the learner's sampling stream,
    so the two processes make exactly the synchronous run."""
    sync = tiny_config(*REMIX, "steps=3", out="sync")
    train(sync)
    asynchronous = tiny_config(*REMIX, "steps=3", "rollout_mode=async", "max_staleness=0",
                               out="async")  # fmt: skip
    train(asynchronous)
    rows_sync = read_metrics(sync.resolved_out_dir())
    rows_async = read_metrics(asynchronous.resolved_out_dir())
    assert [untimed(r) for r in rows_async] == [untimed(r) for r in rows_sync]
    assert all(r["async/staleness_max"] == 0 for r in rows_async[1:])


@pytest.mark.parametrize("eta", [1, 2])
def test_the_learner_never_consumes_samples_older_than_max_staleness(tiny_config, monkeypatch, eta):
    consumed: list[tuple[int, list[int]]] = []
    original = Trainer.mixed_batch

    def spy(self, fresh, step):
        consumed.append((step, [s.policy_version for s in fresh]))
        return original(self, fresh, step)

    monkeypatch.setattr(Trainer, "mixed_batch", spy)
    cfg = tiny_config(*REMIX, "steps=5", "rollout_mode=async", f"max_staleness={eta}")
    train(cfg)
    assert [step for step, _ in consumed] == [1, 2, 3, 4, 5]
    for step, versions in consumed:
        assert all(step - 1 - eta <= v <= step - 1 for v in versions), (step, versions)
    rows = read_metrics(cfg.resolved_out_dir())
    assert [r["rollouts"] for r in rows[1:]] == [16, 32, 48, 64, 80]  # consumed, not in flight
    assert all(0 <= r["async/staleness_max"] <= eta for r in rows[1:])
    assert all(r["nonfinite/skipped_updates"] == 0 for r in rows[1:])


def test_async_reincarnation_switches_the_fresh_batch_of_requests_in_flight(tiny_config):
    """Requests planned with ReMix's small batch are dropped at reincarnation and planned
    again with the on-policy phase's batch: the counts are those of the sync run."""
    post = ("reincarnation_step=2", "post_reincarnation_prompts_per_step=8",
            "post_reincarnation_group_size=2", "post_reincarnation_minibatch_size=8")  # fmt: skip
    cfg = tiny_config(*REMIX, *post, "steps=4", "rollout_mode=async", "max_staleness=2")
    train(cfg)
    rows = read_metrics(cfg.resolved_out_dir())
    assert [r["rollouts"] for r in rows[1:]] == [16, 32, 48, 64]
    assert [r["offpolicy/samples"] for r in rows[1:]] == [0, 16, 0, 0]
    assert rows[2].get("reincarnated") is True


def test_async_resume_equals_its_own_counts_and_finishes(tiny_config):
    cfg = tiny_config("steps=2", "rollout_mode=async")
    train(cfg)
    longer = tiny_config("steps=4", "rollout_mode=async")
    summary = resume(cfg.resolved_out_dir(), longer)
    rows = read_metrics(cfg.resolved_out_dir())
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["rollouts"] for r in rows[1:]] == [16, 32, 48, 64]
    assert summary["rollouts"] == 64


def test_async_sigkill_at_any_moment_resumes_without_repeated_or_skipped_steps(tmp_path):
    run_dir = tmp_path / "killed"
    overrides = [*loop_overrides(run_dir), "rollout_mode=async", "max_staleness=1"]
    args = [sys.executable, "-m", "remix_rft", "train", "configs/tiny-grpo.yaml", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for delay in (6.0, 4.0):
        proc = subprocess.Popen(args if delay == 6.0 else resume_args(run_dir), cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        _wait_for_progress(run_dir, proc, delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(resume_args(run_dir), cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(0, 7))
    assert [r["rollouts"] for r in rows[1:]] == [16 * k for k in range(1, 7)]  # none counted twice


def test_a_killed_producer_is_an_error_naming_it(tiny_config, monkeypatch):
    original = Trainer.run

    def run(self, on_step=None):
        def kill_producer(row):
            if row["step"] == 1:
                os.kill(self.rollouts.process.pid, signal.SIGKILL)

        return original(self, kill_producer)

    monkeypatch.setattr(Trainer, "run", run)
    cfg = tiny_config("steps=4", "rollout_mode=async", "max_staleness=0")
    with pytest.raises(
        ProducerError, match=r"remix-producer-rank0 \(pid \d+\) died with exit code -9"
    ):
        train(cfg)


def test_a_failing_producer_reports_its_traceback(tiny_config, tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text(  # the learner's evaluation passes; the producer's training batch fails
        "def score(response, problem):\n"
        "    if str(problem.get('id', '')).startswith('eval'):\n"
        "        return 0.0\n"
        "    if response.startswith('\\\\boxed'):  # the check call before training passes\n"
        "        return 0.0\n"
        "    raise KeyError('no such field')\n"
    )
    cfg = tiny_config("steps=2", "rollout_mode=async", f"task.reward_fn={reward}:score",
                      "task.reward_workers=0")  # fmt: skip
    with pytest.raises(ProducerError, match=r"(?s)failed:.*Traceback.*no such field"):
        train(cfg)


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        (["rollout_mode=async", "rollout_device=gpu1"], "cpu, cuda or cuda:N"),
        (["rollout_mode=async", "rollout_device=cuda:x"], "cpu, cuda or cuda:N"),
        (["rollout_device=cpu"], "unless rollout_mode is async"),
    ],
)
def test_a_bad_rollout_device_names_the_key(overrides, allowed):
    from remix_rft.trainer.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"'rollout_device'.*{allowed}"):
        load_config("configs/tiny-grpo.yaml", overrides)
    sectioned = [o.replace("rollout_device", "rollout.device") for o in overrides]
    with pytest.raises(ConfigError, match="'rollout_device'"):
        load_config("configs/tiny-grpo.yaml", sectioned)


def test_the_producer_device_is_the_learners_unless_rollout_device_says_otherwise():
    import torch

    from remix_rft.trainer.config import ConfigError, load_config
    from remix_rft.trainer.producer_process import producer_device

    learner = torch.device("cpu")
    default = load_config("configs/tiny-grpo.yaml", ["rollout_mode=async"])
    assert producer_device(default, learner, distributed=False) == "cpu"
    on_cpu = load_config("configs/tiny-grpo.yaml", ["rollout_mode=async", "rollout_device=cpu"])
    assert producer_device(on_cpu, torch.device("cuda:0"), distributed=False) == "cpu"
    with pytest.raises(ConfigError, match="under torchrun"):
        producer_device(on_cpu, learner, distributed=True)
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (none here: cuda:0)
    beyond = load_config(
        "configs/tiny-grpo.yaml", ["rollout_mode=async", f"rollout_device={missing}"]
    )
    with pytest.raises(ConfigError, match=f"'{missing}', but this machine has"):
        producer_device(beyond, learner, distributed=False)


def test_async_with_the_producer_on_a_named_device_trains(tiny_config):
    """rollout_device names the producer's device (here the CPU, as the learner's: the
    path a second GPU takes, minus the GPU)."""
    cfg = tiny_config("steps=2", "rollout_mode=async", "rollout_device=cpu")
    train(cfg)
    rows = read_metrics(cfg.resolved_out_dir())
    assert [r["rollouts"] for r in rows[1:]] == [16, 32]
    assert all(r["async/staleness_max"] <= 1 for r in rows[1:])
