"""Make Countdown problems: reach a target with given numbers, + - * / and parentheses.

Each problem is built backwards from a random expression over its numbers, so every one
has a solution (stored as ``solution``, for checking the verifier, never shown to the
model). Train and eval splits are disjoint by (numbers, target) and fixed by the seed::

    python examples/countdown/generate.py            # rewrites examples/countdown/data/
    python examples/countdown/generate.py --train 5000 --min-numbers 4 --out /tmp/cd

Rows (JSON lines): prompt (for instruction-following models), short_prompt (for the
embedded model), target, numbers, solution.
"""

from __future__ import annotations

import argparse
import json
import random
from fractions import Fraction
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = (
    "Using the numbers {numbers}, make {target}. Use + - * / and parentheses, "
    "each number exactly once. Answer as \\boxed{{expression}}."
)
# The embedded model knows only terse arithmetic prompts like "(3*4+5*6)*2=?"; in this
# form it ends its answers (with a sentence prompt it never stops, and unfinished
# responses score 0 without reaching the reward function).
SHORT_PROMPT = "({numbers})={target}?"


def random_expression(numbers: list[int], rng: random.Random) -> tuple[str, Fraction]:
    """A random binary expression over ``numbers`` in the given order, and its value;
    every composite operand is parenthesised, so the text reads unambiguously."""
    if len(numbers) == 1:
        return str(numbers[0]), Fraction(numbers[0])
    split = rng.randint(1, len(numbers) - 1)
    left, lv = random_expression(numbers[:split], rng)
    right, rv = random_expression(numbers[split:], rng)
    op = rng.choice("+-*/" if rv != 0 else "+-*")
    value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else lv}[op]
    left = left if split == 1 else f"({left})"
    right = right if split == len(numbers) - 1 else f"({right})"
    return f"{left} {op} {right}", value


def make_problem(rng: random.Random, args: argparse.Namespace) -> dict | None:
    """One problem, or None when the random expression's value is not a usable target."""
    count = rng.randint(args.min_numbers, args.max_numbers)
    numbers = [rng.randint(1, args.max_number) for _ in range(count)]
    expression, value = random_expression(numbers, rng)
    if value.denominator != 1 or not 1 <= value <= args.max_target:
        return None
    shown = numbers[:]
    rng.shuffle(shown)  # the solution's order is no hint
    target = int(value)
    return {
        "prompt": PROMPT.format(numbers=", ".join(map(str, shown)), target=target),
        "short_prompt": SHORT_PROMPT.format(numbers=" ".join(map(str, shown)), target=target),
        "target": target,
        "numbers": shown,
        "solution": expression,
    }


def generate(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    rng = random.Random(args.seed)
    seen: set[tuple[tuple[int, ...], int]] = set()
    rows: list[dict] = []
    while len(rows) < args.train + args.eval:
        row = make_problem(rng, args)
        if row is None:
            continue
        key = (tuple(sorted(row["numbers"])), row["target"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows[args.eval :], rows[: args.eval]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--min-numbers", type=int, default=3)
    p.add_argument("--max-numbers", type=int, default=4)
    p.add_argument("--max-number", type=int, default=20)
    p.add_argument("--max-target", type=int, default=100)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train, held_out = generate(args)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "eval.jsonl", held_out)
    print(f"wrote {len(train)} train and {len(held_out)} eval problems to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
