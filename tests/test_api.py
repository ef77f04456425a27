"""The Python API (issue #35): ``remix_rft.Trainer`` over the one trainer, TRL-protocol
reward functions in the isolating worker pool, datasets, callbacks, typed results."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remix_rft import TrainConfig, Trainer
from remix_rft.api.data import DatasetInputError
from remix_rft.cli import main
from remix_rft.data.arithmetic import ArithmeticTask
from remix_rft.reward_fns import RewardError, load_reward_fn
from remix_rft.reward_pool import RewardPool
from remix_rft.reward_protocol import RewardFuncs, callable_spec
from remix_rft.rewards import math_reward

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "steps": 2, "prompts_per_step": 2, "group_size": 4, "minibatch_size": 8,
    "max_new_tokens": 24, "eval_problems": 8, "eval_batch_size": 8, "eval_every": 1,
    "save_every": 1, "threads": 1,
}  # fmt: skip


# ---- TRL-protocol reward functions (top level: the reward workers import them) -------------
def correct(prompts, completions, completion_ids, answer, **kwargs):
    return [math_reward(c, a) for c, a in zip(completions, answer, strict=True)]


async def column_bonus(prompts, completions, completion_ids, bonus, **kwargs):
    """Async, reads an extra dataset column, and skips (None) the rows without a bonus."""
    return [None if b is None else float(b) for b in bonus]


def echo_ids(prompts, completions, completion_ids, **kwargs):
    return [float(len(ids)) for ids in completion_ids]


def ids_code(prompts, completions, completion_ids, **kwargs):
    """The ids themselves, as one number (position-weighted sum): a wrong id or order shows."""
    return [float(sum((i + 1) * t for i, t in enumerate(ids))) for ids in completion_ids]


def returns_text(prompts, completions, completion_ids, **kwargs):
    return ["yes" for _ in completions]


def no_kwargs(prompts, completions):
    return [0.0 for _ in completions]


def _arithmetic_rows(n: int, split: str = "train", bonus: bool = False) -> list[dict]:
    task = ArithmeticTask()
    problems = task.train_problems() if split == "train" else task.eval_problems()
    rows = [{"prompt": p.prompt, "answer": p.answer} for p in list(problems)[:n]]
    if bonus:
        for i, row in enumerate(rows):
            row["bonus"] = None if i % 2 else 0.5
    return rows


# ---- the adapter, without training -----------------------------------------------------------
def test_adapter_combines_weighted_rewards_skips_none_and_awaits_async():
    spec = RewardFuncs((callable_spec(correct), callable_spec(column_bonus)), (1.0, 2.0)).spec()
    fn = load_reward_fn(spec)
    problem = {"id": "x/0", "prompt": "2*3?", "answer": "6", "bonus": 0.5}
    assert fn("\\boxed{6}", problem) == pytest.approx(1.0 + 2.0 * 0.5)
    assert fn("\\boxed{7}", problem) == pytest.approx(1.0)  # 0 + 2·0.5
    assert fn("\\boxed{6}", {**problem, "bonus": None}) == pytest.approx(1.0)  # None: skipped


def test_adapter_passes_completion_ids_of_the_models_tokenizer():
    from transformers import AutoTokenizer

    from remix_rft.engines.models import resolve_model_path

    path = resolve_model_path("embedded")
    fn = load_reward_fn(RewardFuncs((callable_spec(echo_ids),), (1.0,), "", path).spec())
    tok = AutoTokenizer.from_pretrained(path)
    text = "the answer is \\boxed{12}"
    assert fn(text, {"id": "a", "prompt": "p", "answer": ""}) == len(
        tok(text, add_special_tokens=False)["input_ids"]
    )


def test_pool_workers_run_trl_protocol_functions_in_isolation():
    spec = RewardFuncs((callable_spec(correct),), (1.0,)).spec()
    with RewardPool(spec, workers=1) as pool:
        scores = pool.score([("\\boxed{6}", {"id": "a", "prompt": "p", "answer": "6"}),
                             ("\\boxed{5}", {"id": "b", "prompt": "p", "answer": "6"})])  # fmt: skip
    assert scores == [1.0, 0.0]


@pytest.mark.parametrize("workers", [0, 1])
def test_pool_passes_the_generated_ids_and_re_tokenizes_without_them(workers):
    from remix_rft.engines.models import resolve_model_path

    path = resolve_model_path("embedded")
    spec = RewardFuncs((callable_spec(ids_code),), (1.0,), "", path).spec()
    items = [("\\boxed{6}", {"id": "a", "prompt": "p", "answer": "6"})] * 2
    generated = [[5, 7, 2], [9]]  # not what the text tokenizes to: only the generator knows
    retokenized = load_reward_fn(spec).completion_ids(items[0][0])
    with RewardPool(spec, workers=workers) as pool:
        assert pool.score(items, [False, True], completion_ids=generated) == [5 + 14 + 6, 9]
        expected = float(sum((i + 1) * t for i, t in enumerate(retokenized)))
        assert retokenized and pool.score(items) == [expected, expected]  # no ids: re-tokenized


def test_bad_reward_functions_fail_with_a_clear_message(tmp_path):
    rows = _arithmetic_rows(4)
    with pytest.raises(RewardError, match="top level of an importable module"):
        Trainer("embedded", lambda prompts, completions, **kw: [0.0], train_dataset=rows,
                overrides={"out_dir": str(tmp_path / "a")})  # fmt: skip
    with pytest.raises(RewardError, match=r"cannot be called as TRL calls it.*\*\*kwargs"):
        Trainer("embedded", no_kwargs, train_dataset=rows, overrides={"out_dir": str(tmp_path)})
    fn = load_reward_fn(RewardFuncs((callable_spec(returns_text),), (1.0,)).spec())
    with pytest.raises(RewardError, match=r"test_api:returns_text returned 'yes' \(str"):
        fn("x", {"id": "a", "prompt": "p", "answer": ""})


def test_bad_dataset_rows_are_named(tmp_path):
    with pytest.raises(DatasetInputError, match="train_dataset: row 1 key 'prompt' is missing"):
        Trainer("embedded", correct, train_dataset=[{"prompt": "a"}, {"question": "b"}],
                overrides={"out_dir": str(tmp_path)})  # fmt: skip
    with pytest.raises(DatasetInputError, match="conversational prompts"):
        Trainer("embedded", correct, train_dataset=[{"prompt": [{"role": "user"}]}],
                overrides={"out_dir": str(tmp_path)})  # fmt: skip


def test_import_remix_rft_stays_light():
    code = "import sys, remix_rft; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)  # fmt: skip
    assert out.stdout.strip() == "False"


# ---- training through the API ----------------------------------------------------------------
def test_hf_dataset_extra_columns_async_reward_callbacks_and_save(tmp_path):
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_list(_arithmetic_rows(40, bonus=True))
    seen: dict[str, list] = {"step": [], "eval": [], "save": []}
    trainer = Trainer(
        "embedded", [correct, column_bonus], args="tiny-grpo", train_dataset=train,
        eval_dataset=_arithmetic_rows(8, "eval", bonus=True), reward_weights=[1.0, 0.5],
        overrides={**SMALL, "out_dir": str(tmp_path / "run")},
        on_step=lambda row: seen["step"].append(row["step"]),
        on_evaluate=lambda step, acc: seen["eval"].append(step),
        on_save=lambda step, path: seen["save"].append((step, path.name)),
    )  # fmt: skip
    result = trainer.train()
    assert seen["step"] == [0, 1, 2] and seen["eval"] == [0, 1, 2]
    assert seen["save"] == [(1, "step_000001"), (2, "step_000002")]
    assert [r.step for r in result.rows] == [0, 1, 2] and result.summary.steps == 2
    assert result.summary.rollouts == 16 == result.rows[-1].rollouts
    assert all(r.reward_mean is not None and r["reward/mean"] == r.reward_mean
               for r in result.rows[1:])  # fmt: skip
    cfg_text = (tmp_path / "run" / "config.yaml").read_text()
    assert "test_api:correct" in cfg_text and "test_api:column_bonus" in cfg_text
    out = trainer.save(tmp_path / "model")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)


def test_trl_reward_functions_get_the_generated_ids_eos_included(tmp_path):
    """The ids a reward function sees are the sampled response's: as many as the trainer
    counts in ``response_length`` (EOS included, as TRL's completion_ids)."""
    result = Trainer(
        "embedded", [echo_ids], args="tiny-grpo", train_dataset=_arithmetic_rows(16),
        overrides={**SMALL, "steps": 1, "eval_every": 5, "save_every": 5, "max_new_tokens": 96,
                   "out_dir": str(tmp_path / "run")},
    ).train()  # fmt: skip
    row = result.rows[-1]
    assert row["finished/frac"] > 0  # some ended with EOS: re-tokenizing would count one less
    assert row["reward/mean"] == pytest.approx(row["response_length/mean"])


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_api_metrics_equal_remix_train_of_the_same_config_and_seed(tmp_path):
    overrides = {**SMALL, "seed": 3}
    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    argv = [f"{k}={v}" for k, v in overrides.items()]
    assert main(["train", "tiny-remix-grpo", *argv, f"out_dir={cli_dir}"]) == 0
    cli_rows = [json.loads(line) for line in (cli_dir / "metrics.jsonl").read_text().splitlines()]
    result = Trainer(
        args="tiny-remix-grpo", overrides={**overrides, "out_dir": str(api_dir)}
    ).train()
    assert _without_time([dict(r.values) for r in result.rows]) == _without_time(cli_rows)
    summary = json.loads((cli_dir / "summary.json").read_text())
    assert result.summary.final_eval_accuracy == summary["final_eval_accuracy"]
    assert result.summary.rollouts == summary["rollouts"]


def test_train_config_objects_and_overrides(tmp_path):
    cfg = TrainConfig(steps=7, lr=1e-4)
    trainer = Trainer(args=cfg, overrides=["lr=2e-4", f"out_dir={tmp_path}"])
    assert trainer.config.steps == 7 and trainer.config.lr == 2e-4
    assert Trainer(args={"algorithm": "remix-grpo"}).config.algorithm == "remix-grpo"


def test_from_trl_maps_the_key_table_and_names_unknown_keys_once(caplog):
    trl = pytest.importorskip("trl")
    args = trl.GRPOConfig(
        output_dir="/tmp/remix-from-trl", learning_rate=2e-5, num_generations=8,
        per_device_train_batch_size=32, steps_per_generation=4, max_steps=40, beta=0.04,
        epsilon=0.2, epsilon_high=0.28, loss_type="dr_grpo", max_completion_length=64,
        lr_scheduler_type="cosine", use_cpu=True, top_entropy_quantile=0.2,
        label_smoothing_factor=0.1, report_to="none",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        cfg = TrainConfig.from_trl(args)
    assert (cfg.lr, cfg.group_size, cfg.prompts_per_step, cfg.minibatch_size) == (2e-5, 8, 16, 32)
    assert cfg.steps == 10  # 40 optimizer steps, 4 per generation round
    assert (cfg.kl_coef, cfg.kl_lambda, cfg.clip_eps_high) == (0.04, 1.0, 0.28)
    assert cfg.loss_agg == "seq-mean-token-sum-norm" and cfg.lr_schedule == "cosine"
    warnings = [r.getMessage() for r in caplog.records if "from_trl" in r.getMessage()]
    assert len(warnings) == 1
    assert "label_smoothing_factor" in warnings[0] and "top_entropy_quantile" in warnings[0]
    back = cfg.to_trl()
    assert (back.learning_rate, back.num_generations, back.loss_type) == (2e-5, 8, "dr_grpo")
    assert back.per_device_train_batch_size * back.steps_per_generation == 128


def test_python_api_example_runs(tmp_path):
    overrides = [f"{k}={v}" for k, v in SMALL.items()] + [f"out_dir={tmp_path / 'run'}"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), *overrides],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out accuracy" in out.stdout and "after 16 rollouts (3 metrics rows)" in out.stdout
    assert (tmp_path / "run" / "final-model" / "config.json").is_file()


def test_reward_funcs_config_keys_are_checked():
    from remix_rft.trainer.config import ConfigError, load_config

    ok = load_config(None, ["task.reward_funcs=[test_api:correct, test_api:echo_ids]",
                            "task.reward_weights=[1, 0.5]"])  # fmt: skip
    assert ok.task.reward_funcs == ["test_api:correct", "test_api:echo_ids"]
    assert ok.task.reward_weights == [1.0, 0.5]
    bad = {
        "1 weights \\(one per": ["task.reward_funcs=[a:b]", "task.reward_weights=[1, 2]"],
        "one or the other": ["task.reward_funcs=[a:b]", "task.reward_fn=c:d"],
        "rows without answers": ["task.answer_key="],
        r"reward_weights\[1\]": ["task.reward_funcs=[a:b, c:d]", "task.reward_weights=[1, x]"],
    }
    for message, overrides in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)
