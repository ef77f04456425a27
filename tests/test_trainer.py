"""End-to-end tests of the training loop on the embedded model (seconds each)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from remix_rft.algorithm.policy_losses import POLICY_LOSSES
from remix_rft.engines.policy import response_logprobs
from remix_rft.trainer import loop, update
from remix_rft.trainer.checkpoint import latest_checkpoint
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


def test_sampling_logprobs_match_the_update_forward_pass(tiny_config):
    cfg = tiny_config("steps=1", "minibatch_size=16")
    train(cfg)
    row = read_metrics(cfg.resolved_out_dir())[1]
    assert row["gen/logprob_diff_max"] < 1e-4  # sampling log-probs = forward-pass log-probs


def _perturb_policy_before_update(monkeypatch, at_step: int, std: float = 0.02) -> None:
    """Move π_θ between generation and the update of iteration ``at_step``: fresh samples
    then were drawn from another policy than the π_k the update starts from."""
    original = Trainer.precompute

    def perturbed(self, batch, step):
        if step == at_step:
            gen = torch.Generator().manual_seed(step)
            with torch.no_grad():
                for p in self.policy.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * std)
        return original(self, batch, step)

    monkeypatch.setattr(Trainer, "precompute", perturbed)


def _count_policy_no_grad_passes(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = update.batched_no_grad

    def counting(fn, model, batch, micro, **kwargs):
        if fn is response_logprobs and any(p.requires_grad for p in model.parameters()):
            calls.append(len(batch))  # the policy's no-grad π_k pass (the reference is frozen)
        return original(fn, model, batch, micro, **kwargs)

    monkeypatch.setattr(update, "batched_no_grad", counting)
    return calls


def test_ratios_of_fresh_data_are_one_only_because_mu_is_pi_k(tiny_config, monkeypatch):
    """Perturb π_θ after sampling: the sampling log-probs no longer match, so the trainer must
    measure that and use log π_k as fresh data's μ (r = 1 at the first update), and ratios
    must move once an update has moved π_θ away from π_k."""
    _perturb_policy_before_update(monkeypatch, at_step=1, std=0.005)
    passes = _count_policy_no_grad_passes(monkeypatch)
    # max_new_tokens 64: the base finishes some answers, so advantages are not all zero
    single = tiny_config("steps=1", "minibatch_size=16", "max_new_tokens=64", out="single")
    train(single)
    row = read_metrics(single.resolved_out_dir())[1]
    assert row["gen/logprob_diff_max"] > 0.05  # the perturbation is seen
    assert row["ratio/mean"] == 1.0 and row["age0/log_ratio_abs"] == 0.0  # μ = π_k = π_θ here
    assert passes == []  # one update: π_k from the update's own forward, no separate pass
    # Two updates (minibatch 8): the second sees π_θ ≠ π_k after the first one.
    several = tiny_config(
        "steps=1", "minibatch_size=8", "max_new_tokens=64", "lr=1e-4", out="several"
    )
    train(several)
    row = read_metrics(several.resolved_out_dir())[1]
    assert row["reward/mean"] > 0
    assert passes == [16]  # the no-grad π_k pass over the whole batch
    assert row["gen/logprob_diff_max"] > 0.05
    assert row["kl/precedent"] > 1e-7 and row["age0/log_ratio_abs"] > 1e-5
    assert row["ratio/mean"] != 1.0 and row["ratio/max"] > 1.0


def test_single_update_with_reused_data_keeps_their_stored_mu(tiny_config, monkeypatch):
    """#15.5: one update over fresh + reused rows skips the π_k pass; reused rows keep their
    stored μ, so their ratios and clip centres move with the policy, fresh rows' stay 1."""
    _perturb_policy_before_update(monkeypatch, at_step=2)
    passes = _count_policy_no_grad_passes(monkeypatch)
    cfg = tiny_config(
        "algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5", "minibatch_size=32",
        "steps=2",
    )  # fmt: skip
    train(cfg)
    row = read_metrics(cfg.resolved_out_dir())[2]
    assert passes == []
    assert row["offpolicy/samples"] == 16 and row["utd"] == 1
    assert row["age0/ratio_mean"] == 1.0 and row["age0/log_ratio_abs"] == 0.0
    assert row["age1/log_ratio_abs"] > 1e-3  # π_θ (perturbed) against the stored μ of step 1
    assert row["age1/ratio_mean"] != 1.0
    assert row["clip/frac"] == 0.0  # first update: r = π_k/μ is the clip centre itself


def _capture_trainer(monkeypatch) -> dict:
    captured: dict = {}
    original = Trainer.run

    def run(self, on_step=None):
        captured["trainer"] = self
        return original(self, on_step)

    monkeypatch.setattr(Trainer, "run", run)
    return captured


def test_fresh_mu_is_stored_finite_without_sampling_logprobs(tiny_config, monkeypatch):
    """#13.1: without sampling log-probs (large vocabularies) a single update must store the
    detached log π_k of its own forward, not the NaN placeholders, as μ of fresh samples."""
    monkeypatch.setattr(Trainer, "record_gen_logprobs", lambda self: False)
    captured = _capture_trainer(monkeypatch)
    pi_k: dict[int, dict] = {}
    original = Trainer.update

    def spy(self, batch, pre, step):
        fresh = (batch.versions == step).nonzero().squeeze(1)
        with torch.no_grad():
            lp = response_logprobs(self.policy, batch.select(fresh), temperature=1.0)
        mask = batch.response_mask[fresh].bool()
        pi_k[step] = {tuple(batch.input_ids[i].tolist()): lp[j][mask[j]] for j, i in
                      enumerate(fresh.tolist())}  # fmt: skip
        return original(self, batch, pre, step)

    monkeypatch.setattr(Trainer, "update", spy)
    cfg = tiny_config(
        "algorithm=remix-grpo", "window=3", "offpolicy_fraction=0.5", "steps=3",
        "minibatch_size=16",  # step 1 (fresh only) takes a single update, later steps two
    )  # fmt: skip
    train(cfg)
    trainer = captured["trainer"]
    stored = trainer.buffer._samples
    assert {s.version for s in stored} == {1, 2, 3}
    for s in stored:
        assert torch.isfinite(s.behavior_logprobs).all(), s.version
    for s in (s for s in stored if s.version == 1):  # μ = log π_k of the update's own forward
        key = next(k for k in pi_k[1] if _holds(k, s))
        torch.testing.assert_close(s.behavior_logprobs, pi_k[1][key], atol=1e-5, rtol=0)
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    rows = read_metrics(cfg.resolved_out_dir())
    assert all(r["nonfinite/skipped_updates"] == 0 for r in rows[1:])
    assert all(r["ratio/mean"] == r["ratio/mean"] for r in rows[1:])  # no NaN ratio


def _holds(row_ids: tuple, sample) -> bool:
    ids = torch.cat([sample.prompt_ids, sample.response_ids]).tolist()
    n = len(ids)
    return any(list(row_ids[i : i + n]) == ids for i in range(len(row_ids) - n + 1))


def test_nonfinite_updates_are_skipped_counted_and_stop_the_run(tiny_config, monkeypatch):
    original = POLICY_LOSSES["mix-ppg"]
    calls = []

    def poisoned(*args, **kwargs):  # from the second update on, the loss is NaN
        calls.append(1)
        out = original(*args, **kwargs)
        if len(calls) > 1:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setitem(POLICY_LOSSES, "mix-ppg", poisoned)
    cfg = tiny_config("steps=5", "max_nonfinite_updates=2", "save_every=1")
    with pytest.raises(loop.NonFiniteTrainingError, match="max_nonfinite_updates=2"):
        train(cfg)
    run_dir = cfg.resolved_out_dir()
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 3 (the second NaN in a row) stopped it
    assert rows[1]["nonfinite/skipped_updates"] == 0 and rows[1]["updates"] == 1
    assert rows[2]["nonfinite/skipped_updates"] == 1 and rows[2]["updates"] == 1
    assert "grad_norm" not in rows[2]
    last = latest_checkpoint(run_dir)
    assert last is not None and last.name == "step_000002"
    from safetensors.torch import load_file

    def weights(step_dir: Path) -> dict:
        return load_file(str(step_dir / "policy" / "model.safetensors"))

    w1, w2 = weights(last.parent / "step_000001"), weights(last)
    assert all(torch.isfinite(v).all() for v in w2.values())
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the skipped update changed nothing


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lr_schedule_spans_the_updates_the_run_takes(tiny_config, monkeypatch, schedule):
    """#13.2: the buffer fills over ν − 1 steps and batches are fresh-only after
    reincarnation, so the run takes fewer updates than steps × full-batch UTD."""
    captured = _capture_trainer(monkeypatch)
    cfg = tiny_config(
        "algorithm=remix-grpo", "window=3", "offpolicy_fraction=0.5", "reincarnation_step=3",
        "steps=5", f"lr_schedule={schedule}", "lr=1e-4", "eval_every=10",
    )  # fmt: skip
    # updates per step: 1 (16 fresh) · 2 (+16 reused) · 2 · reincarnation · 1 · 1
    assert cfg.planned_updates() == 7
    summary = train(cfg)
    assert summary["updates"] == 7
    rows = read_metrics(cfg.resolved_out_dir())
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the schedule ran to its end
    assert captured["trainer"].scheduler.last_epoch == 7
    assert rows[1]["lr"] > rows[3]["lr"] > rows[4]["lr"] > 0


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_reincarnation_starts_fresh_adam_moments_and_keeps_the_schedule(
    tiny_config, monkeypatch, lora_rank
):
    """#13.3: full finetuning and LoRA agree: after reincarnation AdamW starts from fresh
    moments (a restart from a new base); the learning-rate schedule keeps counting."""
    if lora_rank:
        pytest.importorskip("peft")
    seen: dict = {}
    original = Trainer.reincarnate

    def spy(self, step):
        seen["updates_before"] = self.counters.updates
        seen["schedule_before"] = self.scheduler.last_epoch
        original(self, step)
        seen["trainer"] = self
        seen["state_after"] = [
            float(v.abs().max()) for st in self.state.optimizer.state.values() for v in st.values()
        ]
        seen["schedule_after"] = self.scheduler.last_epoch

    monkeypatch.setattr(Trainer, "reincarnate", spy)
    cfg = tiny_config(
        "algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5", "reincarnation_step=2",
        "steps=3", f"lora_rank={lora_rank}", "lr_schedule=linear",
    )  # fmt: skip
    train(cfg)
    trainer = seen["trainer"]
    assert seen["state_after"] and max(seen["state_after"]) == 0.0  # step and both moments
    assert seen["schedule_after"] == seen["schedule_before"] == seen["updates_before"] == 3
    taken_after = trainer.counters.updates - seen["updates_before"]
    assert taken_after == 1
    steps = {int(s["step"]) for s in trainer.state.optimizer.state.values()}
    assert steps == {taken_after}  # Adam's bias correction restarted with the new phase
    assert trainer.scheduler.last_epoch == trainer.counters.updates == 4


def test_changed_window_on_resume_is_refused(tiny_config):
    first = tiny_config("algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5", "steps=2")
    train(first)
    more = tiny_config("algorithm=remix-grpo", "window=3", "offpolicy_fraction=0.5", "steps=3")
    with pytest.raises(ValueError, match=r"'window'.*window=2.*window=3"):
        resume(more.resolved_out_dir(), more)
    rows = read_metrics(first.resolved_out_dir())
    assert [r["step"] for r in rows] == [0, 1, 2]  # nothing ran


def test_reference_model_only_when_something_uses_it(tiny_config, monkeypatch):
    """#13.5: β = 0 builds and runs no reference (kl/base only when asked for);
    β > 0 with λ > 0 uses it every step."""
    captured = _capture_trainer(monkeypatch)
    plain = tiny_config("steps=2", out="plain")  # eval_every=2: step 2 is an eval step
    train(plain)
    assert captured["trainer"].state.reference is None
    assert not any("kl/base" in r for r in read_metrics(plain.resolved_out_dir()))
    asked = tiny_config("steps=2", "log_kl_base=true", out="asked")
    train(asked)
    assert captured["trainer"].state.reference is not None
    rows = read_metrics(asked.resolved_out_dir())
    assert "kl/base" not in rows[1] and "kl/base" in rows[2]  # eval steps only
    used = tiny_config("steps=1", "kl_coef=0.05", out="used")
    train(used)
    assert "kl/base" in read_metrics(used.resolved_out_dir())[1]


def test_reincarnation_without_a_reference_runs_and_resumes(tiny_config):
    cfg = tiny_config("algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5",
                      "reincarnation_step=1", "steps=2")  # fmt: skip
    assert train(cfg)["reincarnated_at"] == 1
    assert not (cfg.resolved_out_dir() / "checkpoints" / "step_000002" / "reference").exists()
    more = tiny_config("algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5",
                       "reincarnation_step=1", "steps=3")  # fmt: skip
    assert resume(more.resolved_out_dir(), more)["steps"] == 3


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
        # After the update: a single update takes the fresh rows' μ = π_k from its own forward
        # (pre.behavior holds μ of every row as the update resolved it).
        stats = original(self, batch, pre, step)
        seen[step] = {"versions": batch.versions.tolist(), "reused": []}
        for i, version in enumerate(batch.versions.tolist()):
            tokens = tuple(batch.input_ids[i][batch.attention_mask[i].bool()].tolist())
            mu = pre.behavior[i][batch.response_mask[i].bool()].clone()
            if version == step:
                generated[tokens] = (version, mu)
            else:
                seen[step]["reused"].append((tokens, version, mu))
        return stats

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
        snapshots["reference"] = [p.detach().clone() for p in self.state.reference.parameters()]
        snapshots["buffer"] = len(self.buffer)

    monkeypatch.setattr(Trainer, "reincarnate", spy)
    cfg = tiny_config(
        "algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5",
        "reincarnation_step=2", "steps=3", "kl_coef=0.02",  # β > 0: π_base is kept
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
        "reincarnation_step=2", "steps=4", "kl_coef=0.02",
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
        kl_terms[step] = self.phase().kl_coef
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


def test_collect_uses_the_configured_advantage_estimator(tiny_config, monkeypatch):
    from remix_rft.algorithm import rloo_advantages
    from remix_rft.trainer.producer import Producer

    collected = []
    original = Producer.produce

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        collected.extend(out.samples)
        return out

    monkeypatch.setattr(Producer, "produce", spy)
    cfg = tiny_config("steps=1", "advantage_estimator=rloo", "max_new_tokens=64")
    train(cfg)
    rewards = torch.tensor([s.reward for s in collected])
    assert rewards.std() > 0  # some groups are mixed, so the estimators differ
    expected = rloo_advantages(rewards, cfg.group_size)
    assert torch.allclose(torch.tensor([s.advantage for s in collected]), expected)


def test_group_signal_counts_uniform_groups_by_hand():
    from remix_rft.trainer.metrics import group_signal

    # group 0: all correct, 1: mixed, 2: all wrong, 3: all wrong
    rewards = [1, 1, 1, 0, 0, 0, 0, 0]
    groups = [0, 0, 1, 1, 2, 2, 3, 3]
    assert group_signal(rewards, groups) == {
        "groups/uniform_frac": 0.75,
        "groups/all_correct_frac": 0.25,
        "groups/all_wrong_frac": 0.5,
    }
    assert group_signal([], [])["groups/uniform_frac"] == 0.0


def test_evaluation_runs_with_eval_threads_and_gives_them_back(tiny_config):
    """eval_threads: the held-out generation runs with that many torch threads (an async
    learner borrows the idle producer's), and the trainer's own count comes back after."""
    from remix_rft.engines import distributed
    from remix_rft.engines.rollout import Generation
    from remix_rft.trainer.tasks import build_task, held_out_eval

    class CountingEngine:
        seen: list[int] = []

        def generate(self, prompts, settings):
            self.seen.append(torch.get_num_threads())
            return Generation([], [], [], [], texts=["\\boxed{0}"] * len(prompts))

    cfg = tiny_config("eval_threads=2", "eval_batch_size=8")
    task = build_task(cfg.task)
    problems = list(task.eval_problems())[:16]
    engine = CountingEngine()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        held_out_eval(cfg, task, problems, str, engine, distributed.setup("cpu"), step=0)
        assert engine.seen == [2, 2]  # both chunks of 8
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
