"""The math verifier: hand cases, answer forms, adversarial input, threads, fast path."""

from __future__ import annotations

import threading
import time

import pytest

from remix_rft import rewards
from remix_rft.rewards import extract_last_boxed, format_reward, math_reward, verify


def boxed(x: str) -> str:
    return f"Some reasoning... so the final answer is $\\boxed{{{x}}}$."


# ---------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{5}", "5"),
        ("a \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\fbox{7}", "7"),
        ("\\boxed{1} and \\fbox{3}", "3"),
        ("\\boxed 42$", "42"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{  x + 1 }", "x + 1"),
        ("no box here", None),
        ("\\boxed{unbalanced", None),
        ("\\boxed{}", None),
        ("\\boxedfoo{3}", None),
    ],
)
def test_extract_last_boxed(text, expected):
    assert extract_last_boxed(text) == expected


def test_format_reward():
    assert format_reward("work \\boxed{3}") == 1.0
    assert format_reward("\\boxed{3} \\boxed{4}") == 0.0
    assert format_reward("no answer") == 0.0
    assert format_reward("\\boxed{3") == 0.0


# ---------------------------------------------------------------------------- equality


@pytest.mark.parametrize(
    ("pred", "answer"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac{3}{4}", "\\frac34"),
        ("3/4", "\\dfrac{3}{4}"),
        ("[1,2)", "[1, 2)"),
        ("x \\in [2, 5)", "[2,5)"),
        ("\\{3,2,1\\}", "\\{1,2,3\\}"),
        ("(1, 2)", "(1,2)"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("5\\text{ cm}", "5"),
        ("5", "5 \\mathrm{~cm}"),
        ("30^\\circ", "30"),
        ("30", "30^{\\circ}"),
        ("10\\%", "10"),
        ("\\$18.90", "18.90"),
        ("1,000", "1000"),
        ("8.7\\times10^8", "8.7 \\times 10^{8}"),
        ("870000000", "8.7 \\times 10^{8}"),
        ("8.7e8", "8.7 \\times 10^{8}"),
        ("x^2+2x+1", "(x+1)^2"),
        ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
        ("25", "025"),
        ("84, 69", "69, 84"),
        ("(9,3),(6,3)", "(6,3),(9,3)"),
        ("E_1,E_2", "E_1, E_2"),
        ("C", "\\text{(C)}"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),
    ],
)
def test_equal_forms(pred, answer):
    assert math_reward(boxed(pred), answer) == 1.0


@pytest.mark.parametrize(
    ("pred", "answer"),
    [
        ("3", "4"),
        ("\\frac{1}{3}", "0.5"),
        ("(1, 2]", "[1, 2)"),
        ("(2,1)", "(1,2)"),
        ("870000001", "8.7 \\times 10^{8}"),
        ("x^2+1", "(x+1)^2"),
        ("2", "\\frac{1}{2}"),
        ("0.03", ["0.01\n", "0.02\n"]),
    ],
)
def test_unequal_forms(pred, answer):
    assert math_reward(boxed(pred), answer) == 0.0


# Forms found by grading the benchmark files' gold answers rewritten as models write them
# (MATH500 198 / 242, Minerva 90 / 141 / 266 / 270, OlympiadBench 34).
@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("10,\\!080", "10080"),  # MATH's thousands separator: comma + negative thin space
        ("10,\\!080", "10,080"),
        ("\\$32,\\!348", "32348"),
        ("1,\\!000,\\!000", "1000000"),
        ("E_{1}", "E_1"),  # one-character subscripts with and without braces
        ("E_{1},E_{2}", "E_1, E_2"),
        (
            "\\frac{d^{2} v_{o}}{d t^{2}}+\\frac{v_{o}}{L C}",
            "\\frac{d^2 v_o}{dt^2}+\\frac{v_o}{LC}",
        ),
        ("m_{\\max }=n^{2}-n-1", "m_{\\max}=n^2-n-1"),
        ("e^{i t}", "e^{it}"),  # spaces inside LaTeX math are not significant
        ("\\frac{4A}{3+3i}e^{i t}", "\\frac{4A}{3+3i}e^{it}"),
        ("\\frac{dM}{d t}", "\\frac{dM}{dt}"),
        ("\\pi r^{2}", "\\pi r^2"),  # the space ending a control word stays
    ],
)
def test_equal_forms_both_directions(one, other):
    assert math_reward(boxed(one), other) == 1.0
    assert math_reward(boxed(other), one) == 1.0


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("10,\\!080", "10,\\!800"),
        ("E_{12}", "E_1"),  # E_12 is E_1 times 2; only one character drops its braces
        ("e^{it}", "e^{i}t"),  # e^i · t
    ],
)
def test_unequal_forms_both_directions(one, other):
    assert math_reward(boxed(one), other) == 0.0
    assert math_reward(boxed(other), one) == 0.0


def test_answer_types():
    assert math_reward(boxed("142"), 142.0) == 1.0
    assert math_reward(boxed("142"), 142) == 1.0
    assert math_reward(boxed("142"), "142.0") == 1.0
    assert math_reward(boxed("0.25"), 0.25) == 1.0
    assert math_reward(boxed("7"), ["6", "7"]) == 1.0
    assert math_reward(boxed("0.02"), ["0.01\n", "0.02\n"]) == 1.0
    assert math_reward(boxed("8"), ["6", "7"]) == 0.0
    assert math_reward(boxed("8"), []) == 0.0


def test_last_box_counts():
    assert math_reward("first \\boxed{3}, corrected: \\boxed{4}", "4") == 1.0
    assert math_reward("first \\boxed{4}, corrected: \\boxed{3}", "4") == 0.0
    assert math_reward("the answer is 4", "4") == 0.0


# ---------------------------------------------------------------------------- adversarial


ADVERSARIAL = {
    "nested braces": "\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}",
    "unbalanced braces": "\\boxed{" + "{" * 100_000,
    "code": "\\boxed{__import__('os').system('id')}",
    "million digits": "\\boxed{" + "7" * 1_000_000 + "}",
    "power tower": "\\boxed{9^{9^{9^{9}}}}",
    "huge exponent": "\\boxed{2^{999999999}}",
    "huge factorial": "\\boxed{(10^{9})!}",
    "huge response": "x" * 300_000 + "\\boxed{7}",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_scores_zero_fast(name):
    start = time.perf_counter()
    assert math_reward(ADVERSARIAL[name], "7") == 0.0
    assert time.perf_counter() - start < 5.0


def test_model_text_never_reaches_eval(monkeypatch):
    """sympy runs eval/exec on its own templates and on number tokens of the LaTeX
    lexer; no string the model wrote may ever get there."""
    import builtins

    real_eval, real_exec = builtins.eval, builtins.exec
    code_seen: list[str] = []

    def spy_eval(source, *args, **kwargs):
        code_seen.append(source if isinstance(source, str) else "")
        return real_eval(source, *args, **kwargs)

    def spy_exec(source, *args, **kwargs):
        code_seen.append(source if isinstance(source, str) else "")
        return real_exec(source, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", spy_eval)
    monkeypatch.setattr(builtins, "exec", spy_exec)
    for text in (
        "__import__('canary').system('id')",
        "canary.system('id')",
        "canary.__class__",
        "canary+1",
        "\\text{canary}",
        "\\operatorname{canary}(x)",
    ):
        assert math_reward(boxed(text), "0") == 0.0
    assert math_reward(boxed("x^2+2x+1"), "(x+1)^2") == 1.0
    assert not [
        c for c in code_seen if "canary" in c or "import" in c.replace("from sympy import *", "")
    ]


def test_works_in_a_thread_without_signals():
    results: list[float] = []

    def work() -> None:
        results.append(math_reward(boxed("\\frac{1}{2}"), "0.5"))
        results.append(math_reward(ADVERSARIAL["power tower"], "7"))
        results.append(math_reward(ADVERSARIAL["million digits"], "7"))

    thread = threading.Thread(target=work)
    start = time.perf_counter()
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert results == [1.0, 0.0, 0.0]
    assert time.perf_counter() - start < 10.0


# passes every static guard, then runs for minutes inside C big-integer code
SLOW_TOWER = "\\boxed{((((((9^9)^9)^9)^9)^9)^9)^9}"


def _timed_in_thread(fn):
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    start = time.perf_counter()
    thread.start()
    thread.join(timeout=60)
    return out, time.perf_counter() - start


def test_time_limit_kills_c_level_work(monkeypatch):
    monkeypatch.setattr(verify, "CALL_TIME_LIMIT_S", 1.0)
    # the worker starts (not counted in the limit) and answers
    assert math_reward(boxed("\\frac{1}{2}"), "0.5") == 1.0
    start = time.perf_counter()
    assert math_reward(SLOW_TOWER, "7") == 0.0
    assert time.perf_counter() - start < 3.0
    assert math_reward(boxed("0.5"), "\\frac{1}{2}") == 1.0  # a fresh worker took over
    out, seconds = _timed_in_thread(lambda: math_reward(SLOW_TOWER, "7"))
    assert out == [0.0] and seconds < 3.0
    out, _ = _timed_in_thread(lambda: math_reward(boxed("\\sqrt{4}"), "2"))
    assert out == [1.0]


def test_inline_mode_time_limit(monkeypatch):
    def slow(pred: str, gold: str) -> bool:
        time.sleep(10)
        return True

    verify._warm_up()  # imports are not part of the limit
    monkeypatch.setattr(verify, "VERIFY_ISOLATION", "inline")
    monkeypatch.setattr(verify, "_equal", slow)
    monkeypatch.setattr(verify, "CALL_TIME_LIMIT_S", 0.2)
    start = time.perf_counter()
    assert math_reward(boxed("x+1"), "1+x") == 0.0
    assert time.perf_counter() - start < 2.0


def test_inline_mode_matches(monkeypatch):
    monkeypatch.setattr(verify, "VERIFY_ISOLATION", "inline")
    assert math_reward(boxed("\\frac{1}{2}"), "0.5") == 1.0
    assert math_reward(boxed("\\frac{1}{3}"), "0.5") == 0.0


def test_integer_fast_path_skips_math_verify(monkeypatch):
    def boom(pairs: list) -> bool:
        raise AssertionError("math-verify called on integers")

    monkeypatch.setattr(rewards, "_verify", boom)
    start = time.perf_counter()
    for i in range(20_000):
        assert math_reward(f"3*4=12 12+{i}={12 + i} \\boxed{{{12 + i}}}", str(12 + i)) == 1.0
    assert math_reward("\\boxed{ 1 2 }", "12") == 1.0
    assert math_reward("\\boxed{13}", 12) == 0.0
    assert time.perf_counter() - start < 2.0
