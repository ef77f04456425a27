"""The Countdown example: its verifier (hand cases, hostile input), data and a short run."""

from __future__ import annotations

import builtins
import importlib.util
import json
import os
from pathlib import Path

import pytest

from remix_rft.trainer.config import load_config
from remix_rft.trainer.loop import train

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "countdown"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"countdown_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verifier = _load("verifier")
generator = _load("generate")
PROBLEM = {"numbers": [3, 7, 25], "target": 46}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("so \\boxed{25 + 7*3}", 1.0),
        ("\\boxed{3 \\times 7 + 25}", 1.0),
        ("\\boxed{(3×7)+25}", 1.0),
        ("<answer>7*3+25</answer> and later \\boxed{1}", 1.0),  # the tag wins
        ("\\boxed{(25 + 7) * 3}", verifier.FORMAT_SCORE),  # right numbers, wrong value
        ("\\boxed{25 + 21}", 0.0),  # 21 is not one of the numbers
        ("\\boxed{25 + 7*3*3}", 0.0),  # 3 used twice
        ("\\boxed{25 + 7}", 0.0),  # 3 unused
        ("\\boxed{25 - -7*3}", 0.0),  # no unary minus
        ("\\boxed{25 + 7*3", 0.0),  # unbalanced box
        ("\\boxed{(25 + 7*3}", 0.0),  # unbalanced parentheses
        ("\\boxed{25 + 7*3 =46}", 0.0),
        ("\\boxed{}", 0.0),
        ("no answer at all", 0.0),
    ],
)
def test_hand_cases(response, expected):
    assert verifier.score(response, PROBLEM) == expected


def test_exact_fractions_and_division_by_zero():
    assert verifier.score("\\boxed{6/(1-3/4)}", {"numbers": [1, 3, 4, 6], "target": 24}) == 1.0
    assert verifier.score("\\boxed{6/(4-4)+1}", {"numbers": [1, 4, 4, 6], "target": 1}) == 0.0
    assert verifier.evaluate("8 / 3 * 3")[0] == 8


HOSTILE = [
    "\\boxed{__import__('pathlib').Path('PWNED').write_text('x')}",
    "<answer>eval('1+1')</answer>",
    "\\boxed{(lambda: 46)()}",
    "\\boxed{3 .__class__}",
    "\\boxed{25 + 7**3}",
    "\\boxed{9^9^9^9}",
    "\\boxed{" + "9" * 10**6 + "}",
    "\\boxed{" + "(" * 100_000 + "3" + ")" * 100_000 + "}",
    "\\boxed{" + "(" * 9 + "25 + 7*3" + ")" * 9 + "}",  # deeper than MAX_DEPTH
    "\\boxed{25+7*3\x00}",
    "\\boxed{1e2}",
    "x" * 5_000_000,
]


@pytest.mark.parametrize("response", HOSTILE, ids=lambda r: repr(r[:24]))
def test_hostile_answers_score_zero_and_run_nothing(response, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("the verifier must never evaluate model text as code")

    for name in ("eval", "exec", "compile", "__import__"):
        monkeypatch.setattr(builtins, name, forbidden)
    try:
        assert verifier.score(response, PROBLEM) == 0.0
    finally:
        monkeypatch.undo()
    assert not (tmp_path / "PWNED").exists()


def test_shipped_data_is_the_generators_and_every_solution_scores_one():
    rows = {}
    for split in ("train", "eval"):
        text = (EXAMPLE / "data" / f"{split}.jsonl").read_text()
        rows[split] = [json.loads(line) for line in text.splitlines()]
    train_rows, eval_rows = generator.generate(generator.parse_args([]))  # the defaults
    assert train_rows == rows["train"] and eval_rows == rows["eval"]
    keys = {(tuple(sorted(r["numbers"])), r["target"]) for r in train_rows}
    assert not keys & {(tuple(sorted(r["numbers"])), r["target"]) for r in eval_rows}
    for row in train_rows + eval_rows:
        assert verifier.score(f"\\boxed{{{row['solution']}}}", row) == 1.0


RECORDING_REWARD = """
import json, os, sys
sys.path.insert(0, {example!r})
from verifier import score as countdown_score


def score(response, problem):
    with open({log!r}, "a") as fh:
        fh.write(json.dumps({{"pid": os.getpid(), "numbers": problem["numbers"]}}) + "\\n")
    return countdown_score(response, problem)
"""


def test_example_config_trains_two_steps_with_the_reward_in_workers(tmp_path, monkeypatch):
    """The shipped config end to end; the reward function is wrapped to record where it ran."""
    monkeypatch.chdir(tmp_path)  # the config's paths follow the config file, not the cwd
    log = tmp_path / "calls.jsonl"
    wrapper = tmp_path / "recording.py"
    wrapper.write_text(RECORDING_REWARD.format(example=str(EXAMPLE), log=str(log)))
    cfg = load_config(
        str(EXAMPLE / "countdown-remix-grpo.yaml"),
        [
            f"out_dir={tmp_path / 'run'}", "steps=2", "prompts_per_step=4", "group_size=4",
            "minibatch_size=16", "eval_problems=8", "eval_every=1", "save_every=2",
            "threads=1", "task.reward_workers=2", f"task.reward_fn={wrapper}:score",
        ],
    )  # fmt: skip
    assert cfg.algorithm == "remix-grpo" and cfg.task.name == "custom"
    summary = train(cfg)
    assert summary["steps"] == 2 and summary["rollouts"] == 32
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[2]["offpolicy/samples"] > 0  # ReMix reused step 1's data
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    finished = sum(round(r["finished/frac"] * 16) for r in rows[1:])
    assert len(calls) >= finished > 0  # every finished response graded (plus evaluations)
    assert {c["pid"] for c in calls}.isdisjoint({os.getpid()})  # in worker processes
    assert all(len(c["numbers"]) in (3, 4) for c in calls)  # with the dataset row
