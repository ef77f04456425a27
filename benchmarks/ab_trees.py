"""Time one config on two source trees (before / after a change), side by side.

Each round runs the config once per tree, alternating which goes first, in a fresh
process with the tree on PYTHONPATH and one torch thread; then it reports s/iter
(``time/step_s``: evaluation and checkpoints excluded) per tree and round, the CPU
seconds of each whole run (less sensitive than wall-clock to other load on a shared
machine; start-up and evaluation included, the same for both trees), and whether the
metrics agree on a fixed seed (every non-timing key, per step).

    git archive <commit> | tar -x -C /tmp/before
    python benchmarks/ab_trees.py /tmp/before . --config tiny-remix-grpo --steps 15 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(tree: Path, config: str, overrides: list[str], out: Path) -> tuple[list[dict], float]:
    """The run's metrics rows and its CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree.resolve()), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "remix_rft", "train", config, "threads=1", f"out_dir={out}",
           *overrides]  # fmt: skip
    before = cpu_seconds()
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tree)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, cpu_seconds() - before


def differences(a: list[dict], b: list[dict]) -> dict[str, float]:
    """Largest |a − b| per metric over the steps both runs logged (timings excluded)."""
    worst: dict[str, float] = {}
    for ra, rb in zip(a, b, strict=True):
        for key in ra.keys() & rb.keys():
            if key.startswith("time/") or not isinstance(ra[key], int | float):
                continue
            diff = abs(float(ra[key]) - float(rb[key]))
            if math.isnan(diff):
                diff = 0.0 if math.isnan(ra[key]) and math.isnan(rb[key]) else math.inf
            worst[key] = max(worst.get(key, 0.0), diff)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--config", default="tiny-remix-grpo")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*", default=[], help="extra key=value overrides")
    args = parser.parse_args()
    overrides = [f"steps={args.steps}", f"eval_every={args.steps}", "eval_problems=16",
                 "save_every=1000", *args.overrides]  # fmt: skip
    trees = {"before": args.before, "after": args.after}
    times: dict[str, list[float]] = {name: [] for name in trees}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    metrics: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                rows, seconds = run(trees[name], args.config, overrides, Path(tmp) / f"{name}-{r}")
                steps = [row["time/step_s"] for row in rows if row["step"] > 0]
                times[name].append(statistics.mean(steps))
                cpu[name].append(seconds)
                metrics.setdefault(name, rows)
                print(f"round {r} {name}: {times[name][-1]:.3f} s/iter, run CPU {seconds:.1f} s",
                      flush=True)  # fmt: skip
    for name, values in times.items():
        print(f"{name}: mean {statistics.mean(values):.3f} s/iter over {len(values)} rounds "
              f"({', '.join(f'{v:.3f}' for v in values)}); run CPU mean "
              f"{statistics.mean(cpu[name]):.1f} s ({', '.join(f'{v:.1f}' for v in cpu[name])})")  # fmt: skip
    ratio = statistics.mean(times["after"]) / statistics.mean(times["before"])
    cpu_ratio = statistics.mean(cpu["after"]) / statistics.mean(cpu["before"])
    print(f"after / before: s/iter {ratio:.3f}, run CPU {cpu_ratio:.3f}")
    worst = differences(metrics["before"], metrics["after"])
    differing = {k: v for k, v in sorted(worst.items()) if v > 0}
    print("metrics identical on every step" if not differing else f"differences: {differing}")


if __name__ == "__main__":
    main()
