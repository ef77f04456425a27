"""Acceptance measurement of the math verifier on the paper's five benchmarks.

For every item of each benchmark file:

* self: a response ending ``\\boxed{<its ground truth>}`` must score 1.0 (target >= 99.5%);
  measured with the loader's normalised answer and with the raw form from the file;
* variant: the same with cosmetic changes (spacing, ``\\dfrac``), a diagnostic of the
  math comparison itself (string equality cannot decide these);
* other: a response boxing a different item's (textually different) answer must score
  0.0 (target >= 97%);

plus three adversarial responses that must score 0 in under 5 seconds each.

    python benchmarks/verifier_check.py [--data-dir DIR (default: the shipped copies)] [--show-failures]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from remix_rft.data.builtin import BUILTIN_BENCHMARK_DIR
from remix_rft.data.math_dataset import BENCHMARK_SPECS, load_benchmark
from remix_rft.rewards import math_reward

DEFAULT_DATA_DIR = BUILTIN_BENCHMARK_DIR
SELF_TARGET = 99.5
OTHER_TARGET = 97.0
ADVERSARIAL_LIMIT_S = 5.0


def _first(answer: object) -> str:
    return str(answer[0]) if isinstance(answer, list) else str(answer)


def _variant(gold: str) -> str:
    """The same answer written differently (spacing, \\dfrac), so that string equality
    cannot decide and the math comparison has to."""
    v = gold.replace("\\dfrac", "\\frac").replace("\\frac", "\\dfrac").replace(" ", "")
    return v if v != gold else f" {gold} "


def _raw_answers(path: Path) -> list[str]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [_first(row["answer"]) for row in rows]


def check_benchmark(name: str, data_dir: Path, show_failures: bool) -> dict[str, float]:
    problems = load_benchmark(name, data_dir)
    raw = _raw_answers(data_dir / BENCHMARK_SPECS[name].file)
    n = len(problems)
    self_ok = raw_ok = variant_ok = other_ok = 0
    start = time.perf_counter()
    for i, p in enumerate(problems):
        gold = _first(p.answer)
        if math_reward(f"So the answer is $\\boxed{{{gold}}}$.", p.answer) == 1.0:
            self_ok += 1
        elif show_failures:
            print(f"  [{name} {i}] self FAIL: {gold!r} vs {p.answer!r}")
        if math_reward(f"Thus \\boxed{{{raw[i]}}}", p.answer) == 1.0:
            raw_ok += 1
        elif show_failures:
            print(f"  [{name} {i}] raw FAIL: {raw[i]!r} vs {p.answer!r}")
        if math_reward(f"\\boxed{{{_variant(gold)}}}", p.answer) == 1.0:
            variant_ok += 1
        elif show_failures:
            print(f"  [{name} {i}] variant FAIL: {_variant(gold)!r} vs {p.answer!r}")
        # the next item whose answer is textually different
        j = (i + 1) % n
        while _first(problems[j].answer) == gold and j != i:
            j = (j + 1) % n
        other = _first(problems[j].answer)
        if math_reward(f"\\boxed{{{other}}}", p.answer) == 0.0:
            other_ok += 1
        elif show_failures:
            print(f"  [{name} {i}] other FAIL: boxed {other!r} accepted for {p.answer!r}")
    return {
        "items": n,
        "self": 100.0 * self_ok / n,
        "raw": 100.0 * raw_ok / n,
        "variant": 100.0 * variant_ok / n,
        "other": 100.0 * other_ok / n,
        "seconds": time.perf_counter() - start,
    }


ADVERSARIAL = {
    "100 KB nested braces": lambda: "\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}",
    "100 KB unbalanced braces": lambda: "\\boxed{" + "{" * 100_000,
    "code in box": lambda: "\\boxed{__import__('os').system('id')}",
    "10^6-digit number": lambda: "\\boxed{" + "7" * 1_000_000 + "}",
    "power tower": lambda: "\\boxed{9^{9^{9^{9}}}}",
}


def check_adversarial() -> dict[str, tuple[float, float]]:
    out = {}
    for label, make in ADVERSARIAL.items():
        response = make()
        start = time.perf_counter()
        score = math_reward(response, "7")
        out[label] = (score, time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--benchmarks", default=",".join(BENCHMARK_SPECS))
    parser.add_argument("--show-failures", action="store_true")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        print(f"error: data directory {args.data_dir} does not exist", file=sys.stderr)
        return 2

    ok = True
    print(
        f"{'benchmark':<15}{'items':>6}{'self %':>9}{'raw %':>9}{'variant %':>11}{'other %':>9}{'time s':>8}"
    )
    for name in args.benchmarks.split(","):
        r = check_benchmark(name, args.data_dir, args.show_failures)
        ok &= r["self"] >= SELF_TARGET and r["other"] >= OTHER_TARGET
        print(
            f"{name:<15}{r['items']:>6}{r['self']:>9.2f}{r['raw']:>9.2f}{r['variant']:>11.2f}"
            f"{r['other']:>9.2f}{r['seconds']:>8.1f}"
        )
    print(f"targets: self >= {SELF_TARGET}%, other >= {OTHER_TARGET}%")
    print()
    print(f"{'adversarial':<28}{'score':>6}{'seconds':>9}")
    for label, (score, secs) in check_adversarial().items():
        ok &= score == 0.0 and secs < ADVERSARIAL_LIMIT_S
        print(f"{label:<28}{score:>6.1f}{secs:>9.3f}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
