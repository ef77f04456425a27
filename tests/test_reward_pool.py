"""The reward worker pool: order, hung and crashed workers, user functions and their errors."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from remix_rft.reward_fns import RewardError, load_reward_fn
from remix_rft.reward_pool import MATH_REWARD_SPEC, RewardPool
from remix_rft.trainer.config import ConfigError, load_config
from remix_rft.trainer.tasks import GradedTask, build_task, score_responses

USER_REWARDS = '''
import math
import os
import signal
import time


def score(response, problem):
    """Exact match, with ways to misbehave chosen by the response."""
    if response == "hang":  # not even an alarm stops it: the parent has to kill the worker
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        time.sleep(600)
    if response == "spin":  # pure Python: the worker's own alarm stops it
        while True:
            pass
    if response == "crash":
        os._exit(3)
    if response == "print":
        print("a reward function that prints must not break the protocol")
        return 1.0
    return response == problem["answer"]


def bad(response, problem):
    values = {"nan": math.nan, "inf": math.inf, "str": "0.5", "none": None}
    if response == "raise":
        raise KeyError("target")
    return values.get(response, 1)
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(USER_REWARDS))
    return path


def items(*responses: str) -> list[tuple[str, dict]]:
    return [(r, {"id": f"p{i}", "answer": "ok"}) for i, r in enumerate(responses)]


MATH_ITEMS = [
    ("so \\boxed{\\frac{1}{2}}", {"answer": "0.5"}),
    ("\\boxed{3}", {"answer": "4"}),
    ("no box", {"answer": "1"}),
    ("\\boxed{x^2+2x+1}", {"answer": "(x+1)^2"}),
    ("\\boxed{142}", {"answer": "142"}),
    ("\\boxed{[1,2)}", {"answer": "[1, 2)"}),
    ("x" * 150_000 + "\\boxed{7}", {"answer": "7"}),  # larger than a pipe's buffer
] * 3


def test_workers_keep_order_and_agree_with_in_process():
    with RewardPool(MATH_REWARD_SPEC, workers=0) as inline, RewardPool(workers=2) as pool:
        inline.score(MATH_ITEMS)  # sympy's first simplification is slow: keep it off the clock
        expected = inline.score(MATH_ITEMS)
        assert expected[:7] == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
        assert pool.score(MATH_ITEMS) == expected
        assert pool.score(MATH_ITEMS[::-1]) == expected[::-1]
        assert pool.score([]) == []


def test_hung_and_crashed_workers_cost_only_their_item(user_file, caplog):
    batch = items("ok", "hang", "no", "crash", "ok", "print", "ok", "spin", "no", "ok")
    with RewardPool(f"{user_file}:score", workers=2, time_limit_s=0.5) as pool:
        with caplog.at_level(logging.WARNING, logger="remix_rft.reward_pool"):
            scores = pool.score(batch)
        assert scores == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
        # replaced: the hung worker (killed) and the crashed one; "spin" stopped itself
        assert pool.replaced == 2
        messages = caplog.text
        assert "item 1 (problem id 'p1')" in messages and "killed and replaced" in messages
        assert "item 3 (problem id 'p3')" in messages and "exit status 3" in messages
        assert "item 7 (problem id 'p7')" in messages
        # the replacements work: the next step is graded in full
        assert pool.score(items("ok", "no", "ok")) == [1.0, 0.0, 1.0]


def test_in_process_grading_keeps_the_time_limit(user_file, caplog):
    with RewardPool(f"{user_file}:score", workers=0, time_limit_s=0.3) as pool:
        with caplog.at_level(logging.WARNING, logger="remix_rft.reward_pool"):
            assert pool.score(items("ok", "spin", "ok")) == [1.0, 0.0, 1.0]
    assert "ran past 0.3s on item 1" in caplog.text


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize(
    ("response", "shown"),
    [
        ("nan", "returned nan (not a finite number)"),
        ("inf", "returned inf (not a finite number)"),
        ("str", "returned '0.5' (str, not a number)"),
        ("none", "returned None (NoneType, not a number)"),
        ("raise", "raised KeyError: 'target'"),
    ],
)
def test_bad_return_values_name_function_and_item(user_file, workers, response, shown):
    with RewardPool(f"{user_file}:bad", workers=workers) as pool:
        with pytest.raises(RewardError) as err:
            pool.score(items("fine", response, "fine"))
        message = str(err.value)
        assert f"{user_file}:bad" in message and shown in message
        assert "item 1 (problem id 'p1')" in message
        assert pool.score(items("fine")) == [1.0]  # nothing left in flight


def test_loading_errors_are_clear(tmp_path, user_file):
    with pytest.raises(RewardError, match="does not exist"):
        load_reward_fn(f"{tmp_path / 'nope.py'}:score")
    with pytest.raises(RewardError, match="has no function 'missing'"):
        load_reward_fn(f"{user_file}:missing")
    with pytest.raises(RewardError, match="expected path/to/file.py:function"):
        load_reward_fn(str(user_file))
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(RewardError, match="ModuleNotFoundError"):
        load_reward_fn(f"{broken}:score")
    with pytest.raises(RewardError, match="importing no_such_package.rewards failed"):
        load_reward_fn("no_such_package.rewards:score")
    assert load_reward_fn("remix_rft.reward_pool:math_score")("\\boxed{2}", {"answer": 2}) == 1.0


def test_config_checks_reward_keys(tmp_path, user_file):
    with pytest.raises(ConfigError, match="task.reward_fn"):
        load_config(None, ["task.name=custom", f"task.train_path={tmp_path / 'd.jsonl'}"])
    with pytest.raises(ConfigError, match="an existing file"):
        load_config(None, [f"task.reward_fn={tmp_path / 'nope.py'}:score"])
    with pytest.raises(ConfigError, match="task.reward_fn"):
        load_config(None, ["task.reward_fn=not a spec"])
    with pytest.raises(ConfigError, match="task.reward_workers"):
        load_config(None, ["task.reward_workers=-2"])
    with pytest.raises(ConfigError, match="task.reward_timeout_s"):
        load_config(None, ["task.reward_timeout_s=0"])
    with pytest.raises(ConfigError, match="builtin:math_train"):
        load_config(None, ["task.name=math", "task.train_path=builtin:gsm8k"])
    cfg = load_config(None, [f"task.reward_fn={user_file}:score"])
    assert cfg.task.reward_fn.endswith("my_rewards.py:score")


def test_custom_task_passes_the_whole_row(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "say hi", "answer": "hi", "lang": "en"}\n')
    reward = tmp_path / "lang.py"
    reward.write_text(
        "def score(response, problem):\n"
        "    return float(problem['lang'] == 'en' and response == problem['answer'])\n"
    )
    cfg = load_config(
        None,
        [
            "task.name=custom",
            f"task.train_path={data}",
            "task.problem_key=prompt",
            f"task.reward_fn={reward}:score",
            "task.reward_workers=1",
        ],
    )
    task = build_task(cfg.task)
    assert isinstance(task, GradedTask) and task.pool.workers == 1
    problem = task.train_problems()[0]
    assert problem.as_dict() == {"id": "rows/0", "prompt": "say hi", "answer": "hi", "lang": "en"}
    pairs = [("hi", problem), ("ho", problem), ("hi", problem)]
    # the user's function sees every response, the cut one too (the reward contract)
    assert score_responses(task, pairs, graded=[True, True, False]) == [1.0, 0.0, 1.0]
    task.close()


def test_default_workers_by_task():
    assert build_task(load_config(None, []).task).pool.workers == 0  # embedded: in-process
    math_task = build_task(
        load_config(None, ["task.name=math", "task.train_path=builtin:aime24"]).task
    )
    assert math_task.pool.workers >= 1
