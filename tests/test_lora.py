"""LoRA (peft): the reference is the base with the adapter off; reincarnation merges it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from remix_rft.data.batch import collate
from remix_rft.data.buffer import Sample
from remix_rft.trainer.config import ConfigError, load_config

peft = pytest.importorskip("peft")


def lora_config(model: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"model={model}", f"out_dir={out}", "algorithm=remix-grpo", "lora_rank=4",
            "lora_alpha=8", "prompts_per_step=4", "group_size=4", "minibatch_size=16",
            "max_new_tokens=16", "eval_problems=8", "eval_every=1", "save_every=1", "threads=1",
            "task.n_train=200", "task.n_eval=8", "lr=1e-2", *extra,
        ],
    )  # fmt: skip


def fixed_batch(pad_id: int):
    gen = torch.Generator().manual_seed(7)
    rows = []
    for i in range(6):
        p, r = (
            int(torch.randint(3, 8, (1,), generator=gen)),
            int(torch.randint(2, 10, (1,), generator=gen)),
        )
        rows.append(
            Sample(
                prompt_ids=torch.randint(5, 100, (p,), generator=gen),
                response_ids=torch.randint(5, 100, (r,), generator=gen),
                behavior_logprobs=torch.zeros(r),
                reward=float(i % 2),
                advantage=1.0 if i % 2 else -1.0,
                version=1,
                group=i // 2,
                finished=True,
            )
        )
    return collate(rows, pad_id)


def logprobs(model, batch):
    from remix_rft.engines.policy import response_logprobs

    with torch.no_grad():
        return response_logprobs(model, batch, temperature=1.0)


def test_lora_keys_are_validated(model_dir):
    for bad in ("lora_rank=-1", "lora_alpha=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [f"model={model_dir}", bad])
    cfg = load_config(None, [f"model={model_dir}", "lora_target_modules=q_proj,v_proj"])
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]


def test_reference_is_the_base_with_the_adapter_off_and_reincarnation_merges(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from remix_rft.engines.lora import trainable_parameters
    from remix_rft.trainer.loop import Trainer

    trainer = Trainer(lora_config(model_dir, tmp_path / "run"), tmp_path / "run")
    trainable, total = trainable_parameters(trainer.policy)
    assert 0 < trainable < total / 10
    # No second copy: the reference owns no parameters of its own.
    assert {id(p) for p in trainer.state.reference.parameters()} <= {
        id(p) for p in trainer.policy.parameters()
    }
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    batch = fixed_batch(trainer.pad_id)
    assert torch.allclose(
        logprobs(trainer.state.reference, batch), logprobs(base, batch), atol=1e-6
    )
    pre = trainer.precompute(batch, step=1)
    trainer.update(batch, pre, step=1)
    trainer.policy.eval()
    after = logprobs(trainer.policy, batch)
    assert (after - logprobs(base, batch)).abs().max() > 1e-4  # the adapter learned something
    assert torch.allclose(
        logprobs(trainer.state.reference, batch), logprobs(base, batch), atol=1e-6
    )
    from remix_rft.engines.lora import MergedPolicy

    MergedPolicy(trainer.policy, trainer.tokenizer).save_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(logprobs(merged, batch), after, atol=1e-5)  # merged = base + adapter
    trainer.reincarnate(step=1)
    assert torch.allclose(logprobs(trainer.policy, batch), after, atol=1e-5)  # π_θ unchanged
    assert torch.allclose(
        logprobs(trainer.state.reference, batch), after, atol=1e-5
    )  # π_base ← π_θ
    state = [v for st in trainer.state.optimizer.state.values() for v in st.values()]
    assert state and all(float(v.abs().max()) == 0 for v in state)  # fresh moments, step 0


def test_lora_run_checkpoints_a_merged_model_and_resumes(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from remix_rft.trainer.loop import resume, train

    cfg = lora_config(model_dir, tmp_path / "run", "steps=2", "reincarnation_step=1")
    summary = train(cfg)
    assert summary["reincarnated_at"] == 1
    step = cfg.resolved_out_dir() / "checkpoints" / "step_000002"
    merged = AutoModelForCausalLM.from_pretrained(step / "policy")  # a plain HF model
    assert not any("lora" in k for k in merged.state_dict())
    assert (step / "policy_lora" / "model_state.safetensors").is_file()
    assert not (step / "reference").exists()  # the reference is the base inside policy_lora
    resumed = lora_config(model_dir, tmp_path / "run", "steps=3", "reincarnation_step=1")
    resume(resumed.resolved_out_dir(), resumed)
    rows = [
        json.loads(x) for x in (cfg.resolved_out_dir() / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
