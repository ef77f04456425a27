"""ReMix inside TRL (issue #35): ``remix_rft.integrations.trl.ReMixGRPOTrainer``.

The loss is our registered Mix-PPG (same loss and gradients as our trainer's path on the same
batch), ``offpolicy_fraction=0`` is TRL's plain GRPOTrainer, and replay is exercised end to
end (share and ages logged, bounded by the window). Its state is in TRL's checkpoints: a run
resumed from ``checkpoint-k`` continues exactly as the uninterrupted one."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")
integration = pytest.importorskip("remix_rft.integrations.trl")  # skips outside the TRL range

from transformers import TrainerCallback  # noqa: E402

from remix_rft.algorithm import assemble_policy_objective  # noqa: E402
from remix_rft.data.arithmetic import ArithmeticTask  # noqa: E402
from remix_rft.data.batch import collate  # noqa: E402
from remix_rft.data.buffer import Sample  # noqa: E402
from remix_rft.data.prompts import format_prompt  # noqa: E402
from remix_rft.engines.models import resolve_model_path  # noqa: E402
from remix_rft.engines.policy import response_logprobs  # noqa: E402
from remix_rft.trainer.config import load_config  # noqa: E402

ReMixGRPOTrainer = integration.ReMixGRPOTrainer


def distinct_reward(completions, **kwargs):
    """Deterministic, and different completions (the answer digits) mostly score apart."""
    return [(sum(map(ord, c)) % 7) / 7.0 for c in completions]


def _model_and_data():
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path("embedded")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    problems = list(ArithmeticTask().train_problems())[:64]
    data = Dataset.from_dict({"prompt": [format_prompt(tokenizer, p.prompt) for p in problems]})
    return model, tokenizer, data


def _trainer(tmp_path, cls=trl.GRPOTrainer, steps=2, grpo=None, **remix):
    model, tokenizer, data = _model_and_data()
    args = dict(
        output_dir=str(tmp_path / "out"), seed=0, max_steps=steps, learning_rate=1e-3,
        lr_scheduler_type="constant", per_device_train_batch_size=8, num_generations=4,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=32, temperature=1.0, beta=0.0, loss_type="dapo",
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
    )  # fmt: skip
    args = trl.GRPOConfig(**{**args, **(grpo or {})})
    extra = {}
    if cls is ReMixGRPOTrainer:
        cfg = load_config("tiny-remix-grpo", [f"{k}={v}" for k, v in remix.items()])
        extra = {"remix": cfg}
    return cls(model=model, reward_funcs=distinct_reward, args=args, train_dataset=data,
               processing_class=tokenizer, **extra)  # fmt: skip


def test_offpolicy_fraction_zero_is_plain_grpo_trainer(tmp_path):
    torch.manual_seed(0)
    plain = _trainer(tmp_path / "a")
    plain.train()
    torch.manual_seed(0)
    remix = _trainer(tmp_path / "b", ReMixGRPOTrainer, offpolicy_fraction=0.0,
                     reincarnation_step=0)  # fmt: skip
    remix.train()
    assert all(s.replayed == 0 for s in remix.replay_log) and len(remix.replay_log) == 2
    for (name, a), b in zip(plain.model.named_parameters(), remix.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    start = _model_and_data()[0]  # and training moved them: the comparison can fail
    assert any(
        not torch.allclose(a, b)
        for a, b in zip(start.parameters(), remix.model.parameters(), strict=True)
    )


def test_replay_is_exercised_and_bounded_by_the_window(tmp_path):
    window = 3
    trainer = _trainer(tmp_path, ReMixGRPOTrainer, steps=5, window=window,
                       offpolicy_fraction=0.5, reincarnation_step=0)  # fmt: skip
    trainer.train()
    log = trainer.replay_log
    assert [s.version for s in log] == [1, 2, 3, 4, 5]
    assert log[0].replayed == 0  # nothing stored yet
    assert all(s.replayed == 8 and s.share == pytest.approx(0.5) for s in log[1:])
    ages = [a for s in log for a in s.ages]
    assert ages and min(ages) >= 1 and max(ages) <= window - 1 and max(ages) == window - 1
    logged = [
        h["remix/replay_share"] for h in trainer.state.log_history if "remix/replay_share" in h
    ]
    assert logged and max(logged) > 0


def test_reincarnation_callback_resets_reference_and_stops_replay(tmp_path):
    model, tokenizer, data = _model_and_data()
    trainer = _trainer(tmp_path, ReMixGRPOTrainer, steps=3, window=3, offpolicy_fraction=0.5,
                       reincarnation_step=2, post_reincarnation_lr=5e-4)  # fmt: skip
    trainer.train()
    assert trainer.reincarnated and trainer.replay_log[-1].replayed == 0
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


# ---- checkpoints: save and resume ---------------------------------------------------------
CKPT_REMIX = dict(window=3, offpolicy_fraction=0.5, reincarnation_step=3,
                  post_reincarnation_kl_coef=0.05)  # fmt: skip
CKPT_GRPO = dict(beta=0.02, save_strategy="steps", save_steps=2)


class _Snapshots(TrainerCallback):
    """The trainer's ReMix state when each checkpoint is written and when training begins
    (after a resume has loaded its checkpoint)."""

    def __init__(self, trainer):
        self.trainer, self.at = trainer, {}

    def on_save(self, args, state, control, **kwargs):
        self.at[state.global_step] = copy.deepcopy(self.trainer.remix_state_dict())

    def on_train_begin(self, args, state, control, **kwargs):
        self.at["begin"] = copy.deepcopy(self.trainer.remix_state_dict())


def _checkpoint_trainer(tmp_path, steps):
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, ReMixGRPOTrainer, steps=steps, grpo=CKPT_GRPO, **CKPT_REMIX)
    snapshots = _Snapshots(trainer)
    trainer.add_callback(snapshots)
    return trainer, snapshots


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """4 steps, checkpoints at 2 (buffer of versions 1-2) and 4 (after reincarnation at 3)."""
    trainer, snapshots = _checkpoint_trainer(tmp_path_factory.mktemp("full"), 4)
    trainer.train()
    return trainer, snapshots, Path(trainer.args.output_dir)


def _assert_same(a, b, where="state"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def _logged(trainer, after):
    """Each step's logged losses and metrics after step ``after``, less the wall-clock one
    (the end-of-run summary averages over the steps this process ran: not compared)."""
    return [{k: v for k, v in h.items() if k != "step_time"}
            for h in trainer.state.log_history if h["step"] > after and "loss" in h]  # fmt: skip


def test_resume_from_trl_checkpoint_continues_as_the_uninterrupted_run(uninterrupted, tmp_path):
    """Resumed from ``checkpoint-2``, the run holds the buffer (versions, groups, μ, rewards,
    advantages, the draw's generator), the version counter and the round's pending samples
    as they were when it was written, and steps 3-4 (replay, then reincarnation at 3 with
    KL to the new π_base at 4) log exactly the uninterrupted run's losses and metrics, and
    replay the same samples. Exact on CPU: transformers restores the RNGs and data order."""
    full, saved, out = uninterrupted
    checkpoint = out / "checkpoint-2"
    state = torch.load(checkpoint / integration.REPLAY_FILE, weights_only=True)
    assert state["version"] == 2 and state["pending"] and state["buffer"]["samples"]
    assert {s["version"] for s in state["buffer"]["samples"]} == {1}  # round 2's: pending
    _assert_same(state, saved.at[2])

    resumed, after = _checkpoint_trainer(tmp_path, 4)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    _assert_same(after.at["begin"], saved.at[2])
    assert [(s.version, s.replayed, s.ages) for s in resumed.replay_log] == [
        (s.version, s.replayed, s.ages) for s in full.replay_log[2:]
    ]
    assert resumed.replay_log[0].replayed > 0 and resumed.reincarnated
    assert _logged(resumed, 2) == _logged(full, 2) and len(_logged(full, 2)) == 2
    _assert_same(after.at[4], saved.at[4])
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_reincarnated_checkpoint_restores_the_reference_and_beta(uninterrupted, tmp_path):
    full, saved, out = uninterrupted
    assert saved.at[4]["reincarnated"] and saved.at[4]["beta"] == pytest.approx(0.05)
    fresh = _trainer(tmp_path, ReMixGRPOTrainer, steps=4, grpo=CKPT_GRPO, **CKPT_REMIX)
    fresh.load_remix_checkpoint(out / "checkpoint-4")
    assert fresh.reincarnated and fresh.beta == pytest.approx(0.05)
    for a, b in zip(full.ref_model.parameters(), fresh.ref_model.parameters(), strict=True):
        assert torch.equal(a, b)
    start = _model_and_data()[0]  # π_base moved to the policy at step 3: the check can fail
    assert any(
        not torch.equal(a, b)
        for a, b in zip(start.parameters(), fresh.ref_model.parameters(), strict=True)
    )


def test_checkpoint_without_replay_file_warns_and_starts_empty(uninterrupted, tmp_path, caplog):
    """A checkpoint of TRL's GRPOTrainer or an older remix-rft: one warning naming the file,
    an empty buffer, the version counter at the rounds already run."""
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(uninterrupted[2] / "checkpoint-2", checkpoint)
    (checkpoint / integration.REPLAY_FILE).unlink()
    resumed, after = _checkpoint_trainer(tmp_path, 3)
    with caplog.at_level(logging.WARNING, logger="remix_rft.integrations.trl_checkpoint"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    warned = [
        r.getMessage() for r in caplog.records if r.name == "remix_rft.integrations.trl_checkpoint"
    ]
    assert warned == [
        f"ReMixGRPOTrainer: {checkpoint / integration.REPLAY_FILE} not found: resuming with "
        "an empty replay buffer"
    ]
    assert after.at["begin"]["buffer"]["samples"] == [] and after.at["begin"]["version"] == 2
    assert [(s.version, s.replayed) for s in resumed.replay_log] == [(3, 0)]


def test_checkpoint_with_another_window_is_refused(uninterrupted, tmp_path):
    trainer = _trainer(tmp_path, ReMixGRPOTrainer, grpo=CKPT_GRPO, **{**CKPT_REMIX, "window": 5})
    path = uninterrupted[2] / "checkpoint-2" / integration.REPLAY_FILE
    with pytest.raises(ValueError, match=r"window=3.*window=5") as err:
        trainer.load_remix_checkpoint(path.parent)
    assert str(err.value).startswith(f"{path}: ")


def _samples(tokenizer, step: int) -> tuple[list[Sample], list[Sample]]:
    gen = torch.Generator().manual_seed(1)
    prompts = [
        format_prompt(tokenizer, p.prompt) for p in list(ArithmeticTask().train_problems())[:6]
    ]
    out = []
    for i, text in enumerate(prompts):
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
        n = 5 + i
        response = torch.randint(5, 40, (n,), generator=gen)
        mu = -torch.rand(n, generator=gen) * 3
        out.append(Sample(ids, response, mu, 0.0, float(torch.randn(1, generator=gen)),
                          step if i < 3 else step - 1 - i % 2, i, True))  # fmt: skip
    return out[:3], out[3:]


def test_loss_and_gradients_equal_our_trainers_path(tmp_path):
    step = 4
    trainer = _trainer(tmp_path, ReMixGRPOTrainer, window=4, offpolicy_fraction=0.5)
    cfg, model, tok = trainer.remix, trainer.model, trainer.processing_class
    fresh, past = _samples(tok, step)
    # TRL's layout of the fresh rows (prompts left-padded), then the trainer's mixed batch
    pad = tok.pad_token_id
    out = {"advantages": torch.tensor([s.advantage for s in fresh])}
    out["prompt_ids"], out["prompt_mask"] = integration._pad([s.prompt_ids for s in fresh],
                                                             60, pad, left=True)  # fmt: skip
    out["completion_ids"], out["completion_mask"] = integration._pad(
        [s.response_ids for s in fresh], 10, pad, left=False)  # fmt: skip
    trainer._version = step
    inputs = trainer._mixed(out, past)
    model.train()
    model.zero_grad()
    trl_loss = trainer._compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in model.parameters()]

    # our trainer's path: collate, response_logprobs, μ = π_k for fresh rows, per-row ε
    batch = collate(fresh + past, pad)
    model.zero_grad()
    logprob = response_logprobs(model, batch, temperature=1.0)
    precedent = logprob.detach()
    reused = (batch.versions < step).unsqueeze(1)
    behavior = torch.where(reused, batch.behavior_logprobs, precedent)
    eps = torch.where(reused, cfg.offpolicy_clip_eps_low, cfg.clip_eps_low)
    ours = assemble_policy_objective(
        logprob, behavior, precedent, batch.advantages, batch.response_mask, eps_low=eps,
        eps_high=eps, loss="mix-ppg", centre=cfg.clip_centre, agg="token-mean",
        denominator=float(batch.response_mask.sum()),
    )  # fmt: skip
    ours.loss.backward()
    assert float(trl_loss) == pytest.approx(float(ours.loss), rel=1e-5, abs=1e-7)
    assert float(ours.loss) != 0.0
    for a, p in zip(trl_grads, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-4)


def test_import_names_the_supported_trl_range(monkeypatch):
    monkeypatch.setattr(trl, "__version__", "0.9.0")
    with pytest.raises(ImportError, match=r"supports TRL >=1\.16\.0,<1\.17\.0; found TRL 0\.9\.0"):
        integration._check_trl()


def test_trl_remix_example_runs(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "trl_remix.py"
    spec = importlib.util.spec_from_file_location("trl_remix_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    trainer = example.main(3, str(tmp_path / "out"))
    assert [s.version for s in trainer.replay_log] == [1, 2, 3]
    assert trainer.replay_log[-1].replayed == 32  # offpolicy_fraction 0.5 of tiny-remix-grpo
