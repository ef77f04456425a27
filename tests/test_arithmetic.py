"""The embedded arithmetic task: splits, worked chains, the sloppy SFT traces, the reward."""

from __future__ import annotations

import pytest

from remix_rft.data.arithmetic import (
    ArithmeticSpec,
    ArithmeticTask,
    expression,
    shortcut_trace,
    solution_trace,
)

SMALL = ArithmeticSpec(n_train=300, n_eval=50)


def test_worked_chain_and_answer():
    trace, answer = solution_trace((3, 4, 5, 6, 2), ArithmeticSpec())
    assert trace == "3*4=12 5*6=30 12+30=42 42*2=84 \\boxed{84}"
    assert answer == 84
    assert expression((3, 4, 5, 6, 2), ArithmeticSpec()) == "(3*4+5*6)*2"
    assert ArithmeticSpec().num_steps() == trace.count("=")


def test_shortcut_trace_skips_the_final_multiplication():
    assert shortcut_trace((3, 4, 5, 6, 2), ArithmeticSpec()) == "3*4=12 5*6=30 12+30=42 \\boxed{42}"
    # With a final factor of 1 the shortcut happens to be right.
    task = ArithmeticTask(SMALL)
    problem = task.train_problems()[0]
    assert task.reward(shortcut_trace((3, 4, 5, 6, 1), SMALL), problem) == float(
        problem.answer == "42"
    )
    flat = ArithmeticSpec(outer_multiply=False, n_train=10, n_eval=10)
    assert shortcut_trace((1, 2, 3, 4), flat) == solution_trace((1, 2, 3, 4), flat)[0]


def test_splits_are_deterministic_and_disjoint():
    a, b = ArithmeticTask(SMALL), ArithmeticTask(SMALL)
    assert [p.prompt for p in a.train_problems()] == [p.prompt for p in b.train_problems()]
    train = {p.prompt for p in a.train_problems()}
    held_out = {p.prompt for p in a.eval_problems()}
    assert len(train) == 300 and len(held_out) == 50 and not train & held_out
    other = ArithmeticTask(ArithmeticSpec(seed=1, n_train=300, n_eval=50))
    assert [p.prompt for p in other.eval_problems()] != [p.prompt for p in a.eval_problems()]


def test_sft_mixture_takes_the_shortcut_at_the_requested_rates():
    task = ArithmeticTask(SMALL)
    full = task.sft_examples()
    assert all(s.count("=") == SMALL.num_steps() for _, s in full)
    mixed = task.sft_examples((0.1, 0.9), seed=3)
    assert mixed == task.sft_examples((0.1, 0.9), seed=3)
    assert [p for p, _ in mixed] == [p for p, _ in full]
    by_factor = {True: [0, 0], False: [0, 0]}  # small final factor -> [sloppy, total]
    for (_, solution), ops in zip(mixed, task._train_ops, strict=True):
        counts = by_factor[SMALL.small_final_factor(ops)]
        counts[0] += solution.count("=") < SMALL.num_steps()
        counts[1] += 1
    assert by_factor[True][0] < 0.25 * by_factor[True][1]
    assert by_factor[False][0] > 0.75 * by_factor[False][1]
    assert [SMALL.small_final_factor((0, 0, 0, 0, e)) for e in range(1, 10)] == [True] * 3 + [
        False
    ] * 6
    with pytest.raises(ValueError, match="shortcut rates"):
        task.sft_examples((0.5, 1.5))


def test_reward_checks_the_last_box():
    task = ArithmeticTask(SMALL)
    problem = task.train_problems()[0]
    assert task.reward(f"... \\boxed{{{problem.answer}}}", problem) == 1.0
    assert task.reward(f"\\boxed{{{int(problem.answer) + 1}}}", problem) == 0.0
    assert task.reward(problem.answer, problem) == 0.0  # no box, no reward


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="num_products"):
        ArithmeticSpec(num_products=0)
    with pytest.raises(ValueError, match="distinct problems"):
        ArithmeticSpec(max_operand=2, n_train=1000, n_eval=10)
