"""The memory plan (issue #38): shapes, phases, verdicts of the shipped recipes, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from remix_rft.cli import main
from remix_rft.trainer.config import PACKAGED_CONFIGS, ConfigError, load_config
from remix_rft.trainer.memory_plan import (
    GIB,
    KNOWN_SHAPES,
    Hardware,
    ModelShape,
    PlanError,
    memory_plan,
    model_shape,
    plan_text,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(PACKAGED_CONFIGS.glob("r1-distill-*.yaml"))


def _params_of(shape: ModelShape) -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate, tie_word_embeddings=shape.tied,
    )  # fmt: skip
    with torch.device("meta"):  # no memory: only the parameters' shapes
        model = Qwen2ForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # a tied weight counts once


@pytest.mark.parametrize("name", ["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                                  "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "Qwen/Qwen2-0.5B"])
def test_parameter_count_of_a_table_shape_equals_the_model_built_from_it(name):
    shape = model_shape(name)
    assert "built-in table" in shape.source  # no network: the hub id resolves from the table
    assert shape.params() == _params_of(shape)


def test_published_parameter_counts():
    assert model_shape("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B").params() / 1e9 == (
        pytest.approx(1.777, abs=0.001)
    )
    assert model_shape("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").params() / 1e9 == (
        pytest.approx(7.616, abs=0.001)
    )


def test_a_local_config_is_read_and_an_unknown_hub_model_is_one_clear_error():
    shape = model_shape("embedded")
    assert "config.json" in shape.source
    assert shape.params() == _params_of(shape)
    with pytest.raises(PlanError, match="org/unknown-model.*built-in table"):
        model_shape("org/unknown-model")
    assert set(KNOWN_SHAPES) == {k.lower() for k in KNOWN_SHAPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_fits_its_documented_hardware(path):
    """The recipes' documented hardware: 8 GPUs of 80 GB (docs/scale-out.md)."""
    cfg = load_config(path)
    plan = memory_plan(cfg, Hardware(gpu_memory_gb=80, gpus=8))
    assert plan.fits(), "\n".join(plan_text(cfg, Hardware(gpu_memory_gb=80, gpus=8)))
    assert {p.name.split(" (")[0] for p in plan.phases} >= {"update", "generation"}


def test_the_full_push_of_the_7b_policy_does_not_fit_80gb_the_streamed_one_does():
    """Issue #38's arithmetic: a full fp32 gather per rank next to vLLM and AdamW."""
    cfg = load_config(PACKAGED_CONFIGS / "r1-distill-7b-ppo.yaml")
    full = memory_plan(cfg, Hardware(push="full"))
    assert [p.name for p in full.misfits()] == ["weight push (full)"]
    assert full.peak.total / GIB == pytest.approx(93, abs=3)
    streamed = memory_plan(cfg, Hardware(push="streamed"))
    assert streamed.fits()
    lines = plan_text(cfg, Hardware(push="full"))
    assert any("WARNING: weight push (full)" in x and "weight_sync_bucket_mb" in x for x in lines)


def test_misfits_name_the_key_to_change():
    cfg = load_config(PACKAGED_CONFIGS / "r1-distill-7b-ppo.yaml",
                      ["gradient_checkpointing=false", "micro_batch_tokens=65536"])
    lines = plan_text(cfg, Hardware(gpus=8, push="streamed"))
    assert any(x.startswith("  WARNING: update needs") and "micro_batch_tokens" in x
               and "gradient_checkpointing" in x for x in lines)  # fmt: skip
    cfg = load_config(PACKAGED_CONFIGS / "r1-distill-1.5b-grpo.yaml",
                      ["vllm_gpu_memory_utilization=0.05"])
    assert any("raise vllm_gpu_memory_utilization" in x for x in plan_text(cfg, Hardware()))


def test_terms_scale_as_the_formulas_say():
    cfg = load_config(PACKAGED_CONFIGS / "r1-distill-1.5b-grpo.yaml")
    shape = model_shape(cfg.model)
    one, eight = (memory_plan(cfg, Hardware(gpus=n, push="streamed")) for n in (1, 8))
    assert dict(one.phases[0].terms)["policy: fp32 weights, grads, AdamW (/1)"] == 16 * (
        shape.params()
    )
    assert dict(eight.phases[0].terms)["policy: fp32 weights, grads, AdamW (/8)"] == 2 * (
        shape.params()
    )
    # the token budget sets the activations; checkpointing shrinks them
    small, big = (load_config(PACKAGED_CONFIGS / "r1-distill-1.5b-grpo.yaml",
                              [f"micro_batch_tokens={t}"]) for t in (16384, 32768))  # fmt: skip
    act = [[b for k, b in memory_plan(c, Hardware()).phases[0].terms if "activations" in k][0]
           for c in (small, big)]  # fmt: skip
    assert act[1] == pytest.approx(2 * act[0])
    no_gc = load_config(PACKAGED_CONFIGS / "r1-distill-1.5b-grpo.yaml",
                        ["gradient_checkpointing=false"])
    assert memory_plan(no_gc, Hardware()).phases[0].total > memory_plan(
        small, Hardware()).phases[0].total + 20 * GIB  # fmt: skip
    # logprob_micro_batch_tokens sets the no-grad passes' tokens
    lp = load_config(PACKAGED_CONFIGS / "r1-distill-1.5b-grpo.yaml",
                     ["logprob_micro_batch_tokens=131072"])
    assert any("131072 tokens" in k for k, _ in memory_plan(lp, Hardware()).phases[1].terms)


def test_dry_run_prints_the_memory_plan_with_the_cli_flags(capsys, tmp_path):
    code = main(["train", str(ROOT / "configs" / "tiny-grpo.yaml"), f"out_dir={tmp_path / 'r'}",
                 "--dry-run", "--gpus", "1", "--gpu-memory-gb", "16"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "memory plan    per GPU, 1 x 16 GiB" in out and "predicted peak" in out
    assert "dry run: config and data are valid" in out
    code = main(["train", str(ROOT / "configs" / "tiny-grpo.yaml"), "model=embedded",
                 "--dry-run", "--device", "cpu"])  # fmt: skip
    assert code == 0 and "per process (host RAM)" in capsys.readouterr().out


def test_logprob_micro_batch_tokens_is_a_checked_key_and_sets_the_no_grad_budget():
    from remix_rft.engines.distributed import DistEnv
    from remix_rft.trainer.update import Updater

    with pytest.raises(ConfigError, match="logprob_micro_batch_tokens"):
        load_config(None, ["logprob_micro_batch_tokens=-1"])
    cfg = load_config(None, ["micro_batch_tokens=64", "logprob_micro_batch_tokens=512"])
    state = SimpleNamespace(reincarnated=False)
    updater = Updater(cfg, state=state, dist=DistEnv(device=torch.device("cpu")))
    assert (updater.logprob_micro().tokens, updater.logprob_micro().rows) == (512, 0)
    assert updater.micro().tokens == 64
    cfg = load_config(None, ["micro_batch_tokens=64"])  # 0: the update's micro-batches
    updater = Updater(cfg, state=state, dist=DistEnv(device=torch.device("cpu")))
    assert updater.logprob_micro() == updater.micro()


def test_no_grad_log_probs_equal_the_grad_path_without_every_layers_hidden_states():
    from remix_rft.data.batch import collate
    from remix_rft.data.buffer import Sample
    from remix_rft.engines.policy import load_policy, response_stats

    model = load_policy("embedded")
    gen = torch.Generator().manual_seed(0)
    samples = [
        Sample(prompt_ids=torch.randint(0, 50, (5 + i,), generator=gen),
               response_ids=torch.randint(0, 50, (7 - i,), generator=gen),
               behavior_logprobs=torch.zeros(7 - i), reward=1.0, advantage=1.0, version=1,
               group=0, finished=True)
        for i in range(3)
    ]  # fmt: skip
    batch = collate(samples, pad_id=0)
    seen: list[dict] = []
    forward = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return forward(*args, **kwargs)

    model.forward = spy
    with_grad = response_stats(model, batch, temperature=0.7)
    with torch.no_grad():
        without = response_stats(model, batch, temperature=0.7)
    assert torch.equal(with_grad.logprobs.detach(), without.logprobs)
    assert torch.equal(with_grad.entropy.detach(), without.entropy)
    assert seen[0].get("output_hidden_states") is True
    assert not seen[1].get("output_hidden_states")


def test_the_cpu_check_measures_a_step_and_a_publication():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import memory_plan_check as check

    shape = check.SHAPES["tiny"]
    # measured in a fresh process, as the benchmark does: in this long-lived one, freed memory
    # of earlier tests absorbs a tiny model's step without any growth of the resident set
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import memory_plan_check as c; "
            "print(c.child_train(c.SHAPES['tiny'], True, 8, 24, 'cpu', 'float32'))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) > 0
    assert check.predicted_update(shape, True, 8, 24, "cpu", "float32") > 0
    assert check.predicted_push(shape, "full") > check.predicted_push(shape, "streamed") > 0


def test_sampled_logprobs_from_flat_lists_and_from_dicts_agree():
    from types import SimpleNamespace as Logprob

    from remix_rft.engines.vllm_engine import _sampled_logprobs

    tokens = [5, 7, 9]
    dicts = [{5: Logprob(logprob=-0.5)}, {7: Logprob(logprob=-1.0)}, {9: Logprob(logprob=-2.0)}]
    flat = SimpleNamespace(logprobs=[-0.5, -1.0, -2.0], start_indices=[0, 1, 2])
    # the sampled token first, then a top-1 entry at each position
    wider = SimpleNamespace(logprobs=[-0.5, -0.1, -1.0, -0.2, -2.0, -0.3],
                            start_indices=[0, 2, 4])  # fmt: skip
    expected = torch.tensor([-0.5, -1.0, -2.0])
    for per_position in (dicts, flat, wider):
        assert torch.equal(_sampled_logprobs(per_position, tokens), expected)
    assert torch.isnan(_sampled_logprobs(None, tokens)).all()
    try:  # vLLM's own container, where it is installed
        from vllm.logprobs import FlatLogprobs
        from vllm.logprobs import Logprob as VLogprob
    except ImportError:
        return
    real = FlatLogprobs()
    for token, value in zip(tokens, expected.tolist(), strict=True):
        real.append({token: VLogprob(logprob=value), 0: VLogprob(logprob=-9.0)})
    assert torch.equal(_sampled_logprobs(real, tokens), expected)


def test_the_gpu_checks_fail_fast_and_clearly_without_cuda(monkeypatch, capsys):
    import subprocess

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import memory_plan_check as check

    monkeypatch.setattr(check, "_cuda_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["memory_plan_check.py", "--device", "cuda"])
    assert check.main() == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    if torch.cuda.is_available():
        return
    import vllm_cycle

    monkeypatch.setattr(sys, "argv", ["vllm_cycle.py"])
    assert vllm_cycle.main() == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OUT": "/tmp/gpu-check-test",
                               "PYTHON": sys.executable})  # fmt: skip
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr


def test_a_recipe_dry_run_without_the_hub_prints_its_plan(monkeypatch, capsys, tmp_path):
    """No network in tests: the hub dataset and tokenizer fail as they do offline."""
    from remix_rft.data import math_dataset
    from remix_rft.trainer import plan

    def offline(name, split):
        raise math_dataset.DatasetError(f"cannot load Hugging Face dataset {name!r}: offline")

    def no_tokenizer(model):
        raise OSError("offline")

    monkeypatch.setattr(math_dataset, "_read_hub", offline)
    monkeypatch.setattr(plan, "load_tokenizer", no_tokenizer)
    path = PACKAGED_CONFIGS / "r1-distill-7b-ppo.yaml"
    assert main(["train", str(path), f"out_dir={tmp_path / 'r'}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train data NOT CHECKED (cannot load Hugging Face dataset" in out
    assert "500 held-out problems" in out
    assert "memory plan    per GPU, 8 x 80 GiB" in out and "predicted peak" in out
