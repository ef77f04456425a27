"""Reward grading throughput: the math verifier in 0 (in-process), 1 and 2 worker processes.

Items: every gold answer of the five shipped benchmarks (1,560 problems), boxed, plus
every reference solution that holds a ``\\boxed{}`` (AIME24, Minerva, OlympiadBench),
each graded against its problem's ground truth -- the mix of fast exact matches and
slow symbolic comparisons a training step meets. Worker start-up (math-verify import) is
excluded: each pool grades a few items before the clock starts, as a training run's
pool has by its second step. One cold pass per pool, then ``--rounds`` warm passes that
alternate the order of the settings, so that a load change on a shared machine does not
favour one of them::

    python benchmarks/reward_workers.py --rounds 2
    python benchmarks/reward_workers.py --workers 0 1 2 4 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from remix_rft.data.math_dataset import BENCHMARK_SPECS, load_benchmark
from remix_rft.reward_pool import RewardPool, ScoreItem


def solutions_with_box(meta: dict[str, Any]) -> list[str]:
    solution = meta.get("solution")
    texts = solution if isinstance(solution, list) else [solution]
    return [t for t in texts if isinstance(t, str) and "\\boxed" in t]


def benchmark_items() -> tuple[list[ScoreItem], int, int]:
    """(items, number of gold answers, number of reference solutions)."""
    golds: list[ScoreItem] = []
    solutions: list[ScoreItem] = []
    for name in BENCHMARK_SPECS:
        for problem in load_benchmark(name):
            answer = problem.answer[0] if isinstance(problem.answer, list) else problem.answer
            payload = {"id": problem.id, "answer": problem.answer}
            golds.append((f"The final answer is $\\boxed{{{answer}}}$.", payload))
            solutions += [(text, payload) for text in solutions_with_box(dict(problem.meta))]
    return golds + solutions, len(golds), len(solutions)


def time_pool(pool: RewardPool, items: list[ScoreItem]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    scores = pool.score(items)
    return time.perf_counter() - started, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    items, n_gold, n_solutions = benchmark_items()
    print(f"{len(items)} items: {n_gold} boxed gold answers + {n_solutions} reference solutions")
    print(f"CPUs available: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}")
    pools = {w: RewardPool(workers=w) for w in args.workers}
    for pool in pools.values():  # start the workers and import math-verify: not timed
        pool.score(items[:8])
    # The first full pass of a pool parses every ground truth (math-verify's parse of the
    # gold answer is cached per process): "cold", as in an evaluation. Later passes are
    # "warm", as in training, which grades each prompt's G responses against one gold.
    cold: dict[int, float] = {}
    warm: dict[int, list[float]] = {w: [] for w in args.workers}
    reference: list[float] | None = None
    for round_index in range(args.rounds + 1):
        order = args.workers if round_index % 2 == 0 else args.workers[::-1]
        for workers in order:
            elapsed, scores = time_pool(pools[workers], items)
            if round_index == 0:
                cold[workers] = elapsed
            else:
                warm[workers].append(elapsed)
            if reference is None:
                reference = scores
            elif scores != reference:  # grading must not depend on the pool
                diff = sum(a != b for a, b in zip(scores, reference, strict=True))
                print(f"WARNING: {workers} workers disagree on {diff} items (timeouts under load?)")
            label = "cold" if round_index == 0 else f"round {round_index}"
            print(f"  {label}: {workers} workers {len(items) / elapsed:8.1f} items/s")
    for pool in pools.values():
        pool.close()
    assert reference is not None
    print(f"\nscore 1.0 for {sum(reference):.0f} of {len(items)} items")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    base = statistics.mean(len(items) / s for s in warm[args.workers[0]])
    print(
        "\n| workers | cold pass items/s | warm items/s (mean) | warm min - max | warm speed-up |"
    )
    print("|---|---|---|---|---|")
    for workers in args.workers:
        rates = [len(items) / s for s in warm[workers]]
        mean = statistics.mean(rates)
        print(
            f"| {workers} | {len(items) / cold[workers]:.1f} | {mean:.1f} | "
            f"{min(rates):.1f} - {max(rates):.1f} | {mean / base:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
