"""The embedded task: multi-step integer arithmetic with a worked chain and a boxed answer.

A problem is a sum of products, optionally multiplied by a final factor, e.g.
``(3*4+5*6)*2``. Its reasoning trace writes one operation per step::

    3*4=12 5*6=30 12+30=42 42*2=84 \\boxed{84}

Splits are deterministic functions of the seed and disjoint by expression, so the
held-out accuracy measures generalisation, not memorisation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from remix_rft.data.tasks import Problem
from remix_rft.rewards import math_reward

TASK_NAME = "arithmetic"


@dataclass(frozen=True)
class ArithmeticSpec:
    """Difficulty knobs and split sizes of the embedded task."""

    seed: int = 0
    num_products: int = 2  # products summed inside the parentheses
    min_operand: int = 1
    max_operand: int = 9
    outer_multiply: bool = True  # multiply the sum by a final operand
    n_train: int = 20000
    n_eval: int = 500

    def __post_init__(self) -> None:
        if self.num_products < 1:
            raise ValueError(f"num_products must be >= 1, got {self.num_products}")
        if not 0 <= self.min_operand <= self.max_operand:
            raise ValueError(
                f"need 0 <= min_operand <= max_operand, got {self.min_operand}, {self.max_operand}"
            )
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError("n_train and n_eval must be >= 1")
        if self.n_train + self.n_eval > self.num_distinct():
            raise ValueError(
                f"n_train + n_eval = {self.n_train + self.n_eval} exceeds the "
                f"{self.num_distinct()} distinct problems these difficulty knobs allow"
            )

    def num_operands(self) -> int:
        return 2 * self.num_products + int(self.outer_multiply)

    def num_steps(self) -> int:
        """Operations in a complete worked chain: products, additions, final multiply."""
        return 2 * self.num_products - 1 + int(self.outer_multiply)

    def small_final_factor(self, operands: Sequence[int]) -> bool:
        """The final factor is in the lowest third of the operand range (1-3 for 1-9)."""
        span = self.max_operand - self.min_operand + 1
        return operands[-1] < self.min_operand + max(1, span // 3)

    def num_distinct(self) -> int:
        return (self.max_operand - self.min_operand + 1) ** self.num_operands()


def expression(operands: Sequence[int], spec: ArithmeticSpec) -> str:
    pairs = [f"{operands[2 * i]}*{operands[2 * i + 1]}" for i in range(spec.num_products)]
    inner = "+".join(pairs)
    if spec.outer_multiply:
        return f"({inner})*{operands[-1]}"
    return inner


def solution_trace(operands: Sequence[int], spec: ArithmeticSpec) -> tuple[str, int]:
    """The worked chain of steps ending in ``\\boxed{answer}``, and the answer."""
    steps: list[str] = []
    products: list[int] = []
    for i in range(spec.num_products):
        a, b = operands[2 * i], operands[2 * i + 1]
        products.append(a * b)
        steps.append(f"{a}*{b}={a * b}")
    total = products[0]
    for p in products[1:]:
        steps.append(f"{total}+{p}={total + p}")
        total += p
    if spec.outer_multiply:
        e = operands[-1]
        steps.append(f"{total}*{e}={total * e}")
        total *= e
    steps.append(f"\\boxed{{{total}}}")
    return " ".join(steps), total


def shortcut_trace(operands: Sequence[int], spec: ArithmeticSpec) -> str:
    """A sloppy worked chain that stops before the final multiplication.

    It boxes the sum inside the parentheses, which is the answer only when the final
    factor is 1. Without a final multiplication there is nothing to skip: the full trace.
    """
    full, _ = solution_trace(operands, spec)
    if not spec.outer_multiply:
        return full
    steps = full.split(" ")[:-2]  # drop "<sum>*e=<answer>" and the box
    total = steps[-1].rsplit("=", 1)[1]
    return " ".join([*steps, f"\\boxed{{{total}}}"])


def prompt_text(expr: str) -> str:
    return f"{expr}=?"


def _sample_operands(rng: random.Random, spec: ArithmeticSpec) -> tuple[int, ...]:
    return tuple(
        rng.randint(spec.min_operand, spec.max_operand) for _ in range(spec.num_operands())
    )


def generate_splits(spec: ArithmeticSpec) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Disjoint (train, eval) operand tuples, a pure function of the spec."""
    rng = random.Random(spec.seed)
    seen: set[tuple[int, ...]] = set()
    ordered: list[tuple[int, ...]] = []
    while len(ordered) < spec.n_train + spec.n_eval:
        ops = _sample_operands(rng, spec)
        if ops not in seen:
            seen.add(ops)
            ordered.append(ops)
    # Held-out first so that growing n_train never changes the evaluation set.
    return ordered[spec.n_eval :], ordered[: spec.n_eval]


def _to_problem(ops: tuple[int, ...], spec: ArithmeticSpec, split: str, index: int) -> Problem:
    expr = expression(ops, spec)
    _, answer = solution_trace(ops, spec)
    return Problem(id=f"{split}-{index}", prompt=prompt_text(expr), answer=str(answer))


class ArithmeticTask:
    """Embedded arithmetic task; reward 1 for a correct last ``\\boxed{}``, else 0."""

    name = TASK_NAME

    def __init__(self, spec: ArithmeticSpec | None = None) -> None:
        self.spec = spec or ArithmeticSpec()
        train_ops, eval_ops = generate_splits(self.spec)
        self._train = [_to_problem(o, self.spec, "train", i) for i, o in enumerate(train_ops)]
        self._eval = [_to_problem(o, self.spec, "eval", i) for i, o in enumerate(eval_ops)]
        self._train_ops = train_ops

    def train_problems(self) -> list[Problem]:
        return self._train

    def eval_problems(self) -> list[Problem]:
        return self._eval

    def sft_examples(
        self, shortcut_rates: tuple[float, float] = (0.0, 0.0), seed: int = 0
    ) -> list[tuple[str, str]]:
        """(prompt, worked solution) pairs of the train split, for building the base model.

        Some solutions are sloppy (:func:`shortcut_trace`), drawn at random from ``seed``:
        ``shortcut_rates = (small, large)`` are the chances of the shortcut when the final
        factor is small (at most a third of the way up the operand range) and when it is
        large. A model trained on the mixture knows every step but, on most problems,
        prefers to skip the last one -- the habit RL has to break. Rates well away from
        1/2 make the greedy choice per problem stable from one build to the next.
        """
        small, large = (float(r) for r in shortcut_rates)
        if not (0.0 <= small <= 1.0 and 0.0 <= large <= 1.0):
            raise ValueError(f"shortcut rates must be in [0, 1], got {shortcut_rates}")
        rng = random.Random(seed)
        examples = []
        for problem, ops in zip(self._train, self._train_ops, strict=True):
            rate = small if self.spec.small_final_factor(ops) else large
            sloppy = rng.random() < rate
            trace = shortcut_trace(ops, self.spec) if sloppy else solution_trace(ops, self.spec)[0]
            examples.append((problem.prompt, trace))
        return examples

    def reward(self, response: str, problem: Problem) -> float:
        return math_reward(response, problem.answer)
