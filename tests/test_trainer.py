"""End-to-end tests of the training loop on the embedded model (seconds each)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from remix_rft.trainer import loop
from remix_rft.trainer.loop import Trainer, resume, train


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_grpo_run_writes_every_artifact(tiny_config):
    cfg = tiny_config("steps=3")
    summary = train(cfg)
    run_dir = cfg.resolved_out_dir()
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "eval/accuracy" in rows[0] and rows[0]["rollouts"] == 0
    assert [r["rollouts"] for r in rows[1:]] == [16, 32, 48]
    for key in ("tokens", "reward/mean", "response_length/mean", "time/step_s", "utd"):
        assert key in rows[1]
    assert {"eval/accuracy"} <= rows[2].keys() and {"eval/accuracy"} <= rows[3].keys()
    for key in (
        "algorithm",
        "final_eval_accuracy",
        "base_eval_accuracy",
        "rollouts",
        "steps",
        "wall_time_s",
    ):
        assert key in summary
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "step_000003" / "policy" / "model.safetensors").is_file()


def test_fresh_data_first_update_has_ratio_one_and_no_clipping(tiny_config):
    """One update per iteration on fresh data: π_θ = π_k = μ at the update, so r ≡ 1."""
    cfg = tiny_config("steps=1", "minibatch_size=16")
    train(cfg)
    row = read_metrics(cfg.resolved_out_dir())[1]
    assert row["ratio/mean"] == 1.0 and row["ratio/max"] == 1.0
    assert row["clip/frac"] == 0.0 and row["kl/precedent"] == 0.0
    assert row["gen/logprob_diff_max"] < 1e-4  # sampling log-probs = forward-pass log-probs


def test_resume_equals_an_uninterrupted_run(tiny_config):
    straight = tiny_config("steps=4", out="straight")
    train(straight)
    first = tiny_config("steps=2", out="split")
    train(first)
    resumed_cfg = tiny_config("steps=4", out="split")
    resume(resumed_cfg.resolved_out_dir(), resumed_cfg)
    a = read_metrics(straight.resolved_out_dir())
    b = read_metrics(resumed_cfg.resolved_out_dir())
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        for key in ("rollouts", "tokens", "reward/mean", "eval/accuracy"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)


def test_replay_batches_hold_stored_samples_with_their_behaviour_logprobs(tiny_config, monkeypatch):
    """Through the real loop: reused samples come from the last ν−1 iterations, unchanged."""
    seen: dict[int, dict] = {}
    generated: dict[tuple, tuple[int, torch.Tensor]] = {}
    original = Trainer.update

    def spy(self, batch, pre, step):
        seen[step] = {"versions": batch.versions.tolist(), "reused": []}
        for i, version in enumerate(batch.versions.tolist()):
            tokens = tuple(batch.input_ids[i][batch.attention_mask[i].bool()].tolist())
            mu = batch.behavior_logprobs[i][batch.response_mask[i].bool()].clone()
            if version == step:
                generated[tokens] = (version, mu)
            else:
                seen[step]["reused"].append((tokens, version, mu))
        return original(self, batch, pre, step)

    monkeypatch.setattr(Trainer, "update", spy)
    cfg = tiny_config("algorithm=remix-grpo", "window=3", "offpolicy_fraction=0.5", "steps=4")
    train(cfg)
    assert set(seen[1]["versions"]) == {1}
    assert set(seen[2]["versions"]) == {1, 2}
    for step in (3, 4):
        versions = seen[step]["versions"]
        assert versions.count(step) == 16 and len(versions) == 32
        assert set(versions) - {step} <= {step - 2, step - 1}
        assert len(set(versions)) >= 2
    reused = [r for step in (2, 3, 4) for r in seen[step]["reused"]]
    assert len(reused) == 16 * 3
    for tokens, version, mu in reused:
        assert tokens in generated, "a reused sample was never generated fresh"
        fresh_version, fresh_mu = generated[tokens]
        assert version == fresh_version
        assert torch.equal(mu, fresh_mu)  # behaviour log-probs stored bit for bit
    rows = read_metrics(cfg.resolved_out_dir())
    assert rows[3]["offpolicy/fraction"] == 0.5 and rows[3]["utd"] == 2
    assert "age1/ratio_mean" in rows[3] and "age2/clip_frac" in rows[3]


def test_reincarnation_copies_policy_into_reference_and_empties_buffer(tiny_config, monkeypatch):
    snapshots = {}
    original = Trainer.reincarnate

    def spy(self, step):
        original(self, step)
        snapshots["policy"] = [p.detach().clone() for p in self.policy.parameters()]
        snapshots["reference"] = [p.detach().clone() for p in self.reference.parameters()]
        snapshots["buffer"] = len(self.buffer)

    monkeypatch.setattr(Trainer, "reincarnate", spy)
    cfg = tiny_config(
        "algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5",
        "reincarnation_step=2", "steps=3",
    )  # fmt: skip
    summary = train(cfg)
    assert all(
        torch.equal(a, b) for a, b in zip(snapshots["policy"], snapshots["reference"], strict=True)
    )
    assert snapshots["buffer"] == 0
    rows = read_metrics(cfg.resolved_out_dir())
    assert rows[2].get("reincarnated") is True
    assert rows[3]["offpolicy/samples"] == 0  # on-policy after reincarnation
    assert summary["reincarnated_at"] == 2
    # a resumed run stays reincarnated, with the reincarnated reference restored
    more = tiny_config(
        "algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5",
        "reincarnation_step=2", "steps=4",
    )  # fmt: skip
    resume(more.resolved_out_dir(), more)
    rows = read_metrics(more.resolved_out_dir())
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[4]["offpolicy/samples"] == 0 and "reincarnated" not in rows[4]


POST_PHASE = (
    "algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5", "reincarnation_step=2",
    "lr=1e-4", "kl_coef=0.02", "post_reincarnation_prompts_per_step=8",
    "post_reincarnation_group_size=2", "post_reincarnation_minibatch_size=8",
    "post_reincarnation_lr=3e-5", "post_reincarnation_kl_coef=0",
)  # fmt: skip


def test_post_reincarnation_phase_switches_batch_updates_and_lr_at_the_reincarnation_step(
    tiny_config, monkeypatch
):
    """Steps 1-2 reuse with 4 x 4 fresh responses at lr 1e-4; from step 3 on-policy with
    8 x 2 fresh responses, minibatches of 8 (2 updates), lr 3e-5 and no KL term."""
    kl_terms: dict[int, float] = {}
    original = Trainer.update

    def spy(self, batch, pre, step):
        kl_terms[step] = self.kl_coef()
        return original(self, batch, pre, step)

    monkeypatch.setattr(Trainer, "update", spy)
    cfg = tiny_config(*POST_PHASE, "steps=3", "eval_every=10")
    train(cfg)
    rows = read_metrics(cfg.resolved_out_dir())
    assert [r["rollouts"] for r in rows[1:]] == [16, 32, 48]  # responses actually sampled
    assert [r["offpolicy/samples"] for r in rows[1:]] == [0, 16, 0]
    assert [r["utd"] for r in rows[1:]] == [1, 2, 2]  # 16/16; (16 + 16)/16; 16/8
    assert [r["updates"] for r in rows[1:]] == [1, 3, 5]
    assert rows[2]["lr"] == 1e-4 and rows[3]["lr"] == 3e-5
    assert kl_terms == {1: 0.02, 2: 0.02, 3: 0.0}
    assert rows[2].get("reincarnated") is True


def test_resume_after_reincarnation_keeps_the_post_reincarnation_settings(tiny_config):
    """A run stopped at the reincarnation step (its checkpoint is written after the switch)
    continues with the post-phase batch and lr, exactly as an uninterrupted one."""
    straight = tiny_config(*POST_PHASE, "steps=4", out="straight")
    train(straight)
    first = tiny_config(*POST_PHASE, "steps=2", out="split")
    train(first)
    more = tiny_config(*POST_PHASE, "steps=4", out="split")
    resume(more.resolved_out_dir(), more)
    a = read_metrics(straight.resolved_out_dir())
    b = read_metrics(more.resolved_out_dir())
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    assert [r["rollouts"] for r in b[1:]] == [16, 32, 48, 64] and b[3]["lr"] == 3e-5
    for ra, rb in zip(a, b, strict=True):
        for key in ("rollouts", "updates", "lr", "reward/mean", "eval/accuracy"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)


def test_ppo_trains_a_critic(tiny_config):
    cfg = tiny_config("algorithm=ppo", "steps=2", "group_size=2", "prompts_per_step=8")
    train(cfg)
    rows = read_metrics(cfg.resolved_out_dir())
    assert "critic/loss" in rows[1]
    assert (cfg.resolved_out_dir() / "checkpoints" / "step_000002" / "critic").is_dir()


def test_remix_ppo_runs_with_reused_data(tiny_config):
    cfg = tiny_config(
        "algorithm=remix-ppo", "steps=3", "group_size=2", "prompts_per_step=8",
        "window=2", "offpolicy_fraction=0.5",
    )  # fmt: skip
    train(cfg)
    rows = read_metrics(cfg.resolved_out_dir())
    assert rows[3]["offpolicy/samples"] == 16 and "critic/loss" in rows[3]


def test_existing_run_directory_is_not_overwritten(tiny_config):
    cfg = tiny_config("steps=1")
    train(cfg)
    try:
        train(cfg)
    except FileExistsError as err:
        assert "--resume" in str(err)
    else:
        raise AssertionError("a second run into the same directory must be refused")


def test_sigkill_at_any_moment_resumes_without_repeated_or_skipped_steps(tmp_path):
    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "remix_rft", "train", "configs/tiny-grpo.yaml",
            *loop_overrides(run_dir)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    for delay in (6.0, 4.0):
        proc = subprocess.Popen(args if delay == 6.0 else resume_args(run_dir), cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        _wait_for_progress(run_dir, proc, delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(resume_args(run_dir), cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(0, 7))


def loop_overrides(run_dir: Path) -> list[str]:
    return [
        "steps=6", "prompts_per_step=4", "group_size=4", "minibatch_size=16", "eval_every=3",
        "eval_problems=16", "save_every=1", "threads=1", f"out_dir={run_dir}",
    ]  # fmt: skip


def resume_args(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "remix_rft", "train", "--resume", str(run_dir)]


def _wait_for_progress(run_dir: Path, proc: subprocess.Popen, extra: float) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    time.sleep(extra * 0.3)


assert loop  # the module under test
