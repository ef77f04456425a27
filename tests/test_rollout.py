"""The rollout interface without vLLM: the HF engine, the registry, config keys, clear errors."""

from __future__ import annotations

import sys

import pytest
import torch

from remix_rft.engines.catalog import build_engine, engine_names
from remix_rft.engines.policy import load_policy, load_tokenizer, response_logprobs
from remix_rft.engines.rollout import (
    ENGINES,
    EngineOptions,
    RolloutEngine,
    SamplingSettings,
    register_engine,
)
from remix_rft.trainer.config import ConfigError, load_config


@pytest.fixture(scope="module")
def hf(model_dir):
    tokenizer = load_tokenizer(str(model_dir))
    policy = load_policy(str(model_dir))
    engine = build_engine(
        "hf", policy=policy, tokenizer=tokenizer, options=EngineOptions(model_path="")
    )
    return engine, policy, ["1+2=", "3*4=", "5+6*7="]


def test_hf_engine_returns_n_per_prompt_in_order_with_logprobs(hf, generation_batch):
    engine, policy, prompts = hf
    gen = engine.generate(
        prompts, SamplingSettings(max_new_tokens=12, temperature=0.6, n=3, seed=1)
    )
    assert len(gen) == 9 and len(gen.texts) == 9 and len(gen.finish_reasons) == 9
    for i in range(3):  # prompt-major: the 3 samples of prompt i are rows 3i..3i+2
        assert all(torch.equal(gen.prompt_ids[3 * i], gen.prompt_ids[3 * i + j]) for j in (1, 2))
    assert not torch.equal(gen.prompt_ids[0], gen.prompt_ids[3])
    batch = generation_batch(gen)
    with torch.no_grad():
        forward = response_logprobs(policy, batch, temperature=0.6)
    mask = batch.response_mask.bool()
    assert (forward - batch.behavior_logprobs)[mask].abs().max() < 1e-4
    assert set(gen.finish_reasons) <= {"stop", "length"}
    assert gen.stats["time/gen_tokens_per_s"] > 0


def test_a_seed_makes_sampling_repeatable_and_leaves_the_global_stream_alone(hf):
    engine, _, prompts = hf
    settings = SamplingSettings(max_new_tokens=12, temperature=1.0, n=2, seed=7)
    torch.manual_seed(123)
    first = engine.generate(prompts, settings).texts
    after_first = torch.rand(1)
    torch.manual_seed(123)
    assert engine.generate(prompts, settings).texts == first
    assert torch.equal(torch.rand(1), after_first)  # the trainer's RNG stream is untouched


def test_engines_are_a_registry_by_name():
    assert {"hf", "hf-static", "vllm"} <= set(engine_names())

    class Echo(RolloutEngine):
        def __init__(self, **kwargs):
            pass

        def generate(self, prompts, settings):
            raise NotImplementedError

    try:
        register_engine("echo-test")(Echo)
        assert "echo-test" in engine_names()
        with pytest.raises(ValueError, match="registered twice"):
            register_engine("echo-test")(Echo)
        assert load_config(None, ["rollout_engine=echo-test"]).rollout_engine == "echo-test"
    finally:
        ENGINES.pop("echo-test", None)
    with pytest.raises(ValueError, match="unknown rollout engine 'nope'"):
        build_engine("nope", policy=None, tokenizer=None, options=EngineOptions(model_path=""))


def test_config_keys_of_the_engine_and_evaluation():
    with pytest.raises(ConfigError, match="'rollout_engine'.*hf, hf-static, vllm"):
        load_config(None, ["rollout_engine=sglang"])
    with pytest.raises(ConfigError, match="'behavior_logprobs'"):
        load_config(None, ["behavior_logprobs=mu"])
    with pytest.raises(ConfigError, match="'eval_samples'"):
        load_config(None, ["eval_samples=0"])
    with pytest.raises(ConfigError, match="'vllm_gpu_memory_utilization'"):
        load_config(None, ["vllm_gpu_memory_utilization=1.5"])
    assert load_config(None, ["generation_backend=hf-static"]).rollout_engine == "hf-static"
    r1 = load_config("r1-distill-1.5b-remix-grpo")
    assert (r1.rollout_engine, r1.eval_temperature, r1.eval_samples) == ("vllm", 0.6, 4)


def test_vllm_missing_is_one_line_naming_the_extra(monkeypatch):
    from remix_rft.engines.vllm_engine import EngineError

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(EngineError, match=r"pip install -e '\.\[vllm\]'.*install-vllm-cpu\.sh"):
        build_engine("vllm", policy=None, tokenizer=None, options=EngineOptions(model_path="x"))


def test_sampled_evaluation_is_avg_at_k_and_does_not_move_training_rng(tiny_config):
    from remix_rft.trainer.loop import Trainer

    cfg = tiny_config("eval_temperature=1.0", "eval_samples=3", "eval_problems=6")
    trainer = Trainer(cfg, cfg.resolved_out_dir())
    calls = []
    real = trainer.engine.generate

    def spy(prompts, settings):
        calls.append((len(prompts), settings))
        return real(prompts, settings)

    trainer.engine.generate = spy
    torch.manual_seed(5)
    accuracy = trainer.evaluate()
    after = torch.rand(1)
    assert [n for n, _ in calls] == [6] and calls[0][1].n == 3
    assert calls[0][1].temperature == 1.0 and calls[0][1].seed is not None
    assert accuracy in {i / 18 for i in range(19)}  # correct answers over 6 problems × 3
    torch.manual_seed(5)
    assert trainer.evaluate() == accuracy  # its own seed: the same samples again
    assert torch.equal(torch.rand(1), after)
