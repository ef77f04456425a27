"""The reward contract (docs/your-own-task.md): a user's reward function is called on every
response, cut ones included (``truncated=`` when it takes the keyword), and once before
training, so a broken one stops the run in seconds with one line naming it and the
file:line of the failure, even when every sampled response is truncated."""

import json
import logging
import math

import pytest

from remix_rft.cli import main
from remix_rft.reward_fns import RewardError, accepts_truncated, call_reward
from remix_rft.reward_pool import RewardPool
from remix_rft.trainer import loop
from remix_rft.trainer.loop import train
from remix_rft.trainer.plan import print_plan

# (reward file body, what the one-line error must say besides the function and its file)
BROKEN = {
    "raises": ("def score(response, problem):\n    return 1 / 0\n", "raised ZeroDivisionError"),
    "none": ("def score(response, problem):\n    return None\n", "returned None"),
    "nan": ("def score(response, problem):\n    return float('nan')\n", "returned nan"),
    "string": ("def score(response, problem):\n    return 'yes'\n", "returned 'yes'"),
    "signature": ("def score(response):\n    return 1.0\n", "has the signature (response)"),
}


def reward_file(tmp_path, body: str, name: str = "my_reward.py") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def rows_of(cfg) -> list[dict]:
    lines = (cfg.resolved_out_dir() / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_reward_stops_before_the_model_loads(kind, tiny_config, tmp_path, monkeypatch):
    body, said = BROKEN[kind]
    path = reward_file(tmp_path, body)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the reward function was checked")

    monkeypatch.setattr(loop, "load_tokenizer", no_model)
    # every response would be cut at one token: the probe call does not need any to finish
    cfg = tiny_config("steps=2", "max_new_tokens=1", f"task.reward_fn={path}:score",
                      "task.reward_workers=0")  # fmt: skip
    with pytest.raises(RewardError) as err:
        train(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert f"{path}:score ({path}:1)" in message  # the function, where it is defined
    assert said in message
    if kind == "raises":
        assert f"at {path}:2" in message  # the line that raised
    assert not (cfg.resolved_out_dir() / "metrics.jsonl").exists()


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    path = reward_file(tmp_path, BROKEN["none"][0])
    code = main(["train", "tiny-grpo", "steps=1", "max_new_tokens=1",
                 f"out_dir={tmp_path / 'run'}", f"task.reward_fn={path}:score"])  # fmt: skip
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.strip() and not x.startswith("tiny-grpo: ")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith("remix train: error: reward function ")
    assert "returned None" in errors[0] and f"({path}:1)" in errors[0]


def test_the_error_crosses_the_worker_process(tmp_path):
    path = reward_file(tmp_path, "def score(response, problem):\n    x = {}\n    return x['k']\n")
    with RewardPool(f"{path}:score", workers=1) as pool, pytest.raises(RewardError) as err:
        pool.score([("r", {"id": "p/0", "answer": "1"})])
    assert f"raised KeyError: 'k' at {path}:3 on item 0 (problem id 'p/0')" in str(err.value)


def test_dry_run_calls_the_reward_function(tiny_config, tmp_path, capsys):
    path = reward_file(tmp_path, BROKEN["string"][0])
    assert print_plan(tiny_config(f"task.reward_fn={path}:score")) == 2
    assert "returned 'yes'" in capsys.readouterr().err


def test_truncated_keyword_protocol():
    def plain(response, problem):
        return 1.0

    def named(response, problem, truncated=False):
        return 0.5 if truncated else 1.0

    def kwargs(response, problem, **extra):
        return extra["truncated"]

    assert not accepts_truncated(plain) and accepts_truncated(named) and accepts_truncated(kwargs)
    assert call_reward(plain, "r", {}, truncated=True) == 1.0
    assert call_reward(named, "r", {}, truncated=True) == 0.5
    assert call_reward(kwargs, "r", {}, truncated=False) is False


def test_completion_ids_reach_only_functions_that_take_them():
    def named(response, problem, completion_ids=None):
        return completion_ids

    def kwargs(response, problem, **extra):
        return extra.get("completion_ids")

    def plain(response, problem):
        return 1.0

    assert call_reward(named, "r", {}, False, [1, 2]) == [1, 2]
    assert call_reward(kwargs, "r", {}, False, [3]) == [3]
    assert call_reward(plain, "r", {}, False, [3]) == 1.0  # not taken: not passed
    assert call_reward(named, "r", {}, False) is None  # none given: the default stays


def test_every_truncated_response_reaches_the_users_function(tiny_config, tmp_path):
    path = reward_file(
        tmp_path,
        "def score(response, problem, truncated):\n    return 0.25 if truncated else 1.0\n",
    )
    cfg = tiny_config("steps=1", "max_new_tokens=1", f"task.reward_fn={path}:score",
                      "task.reward_workers=1", "eval_max_new_tokens=1")  # fmt: skip
    train(cfg)
    step = rows_of(cfg)[-1]
    assert step["finished/frac"] == 0.0  # one token: every response was cut
    assert step["reward/mean"] == 0.25  # the user's function saw each, with truncated=True
    assert step["eval/reward_mean"] == 0.25  # held-out responses too
    assert step["eval/accuracy"] == 0.0  # none reached task.accuracy_threshold (1.0)


def test_builtin_verifier_keeps_scoring_cut_responses_zero(tiny_config):
    cfg = tiny_config("steps=1", "max_new_tokens=1", "eval_every=5", "eval_max_new_tokens=1")
    train(cfg)
    step = rows_of(cfg)[-1]
    assert step["finished/frac"] == 0.0 and step["reward/mean"] == 0.0


def test_a_run_of_cut_responses_says_so(tiny_config, tmp_path, caplog):
    cfg = tiny_config("steps=2", "max_new_tokens=1", "eval_every=5", "eval_max_new_tokens=1",
                      "truncation_warn_steps=2")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="remix_rft.trainer.samples"):
        train(cfg)
    warned = [r.getMessage() for r in caplog.records if "max_new_tokens=1" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("steps 1-2: 100%")


def test_no_truncation_warning_when_switched_off(tiny_config, caplog):
    cfg = tiny_config("steps=2", "max_new_tokens=1", "eval_every=5", "eval_max_new_tokens=1",
                      "truncation_warn_steps=0")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        train(cfg)
    assert not [r for r in caplog.records if "max_new_tokens=1" in r.getMessage()]
    assert math.isclose(rows_of(cfg)[-1]["finished/frac"], 0.0)


def test_a_function_broken_only_on_cut_responses_stops_before_the_first_update(
    tiny_config, tmp_path
):
    path = reward_file(
        tmp_path, "def score(response, problem, truncated):\n    return None if truncated else 1\n"
    )
    cfg = tiny_config("steps=2", "max_new_tokens=1", "eval_every=5",
                      f"task.reward_fn={path}:score", "task.reward_workers=0")  # fmt: skip
    with pytest.raises(RewardError, match=r"returned None .* on item 0"):
        train(cfg)
    # the base model's evaluation (its responses cut at one token too) already stopped it
    assert not (cfg.resolved_out_dir() / "metrics.jsonl").exists()
    path = reward_file(  # broken on cut training responses only: the first iteration stops
        tmp_path,
        "def score(response, problem, truncated):\n"
        "    return None if truncated and problem['id'].startswith('train') else 1\n",
        name="train_only.py",
    )
    cfg = tiny_config("steps=2", "max_new_tokens=1", "eval_every=5", "eval_max_new_tokens=40",
                      f"task.reward_fn={path}:score", "task.reward_workers=0", out="run2")  # fmt: skip
    with pytest.raises(RewardError, match=r"returned None .* on item 0 \(problem id 'train-"):
        train(cfg)
    assert [r["step"] for r in rows_of(cfg)] == [0]  # the base evaluation only: no update
