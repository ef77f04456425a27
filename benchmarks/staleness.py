"""Does Mix-PPG's correction of stale data matter? Async GRPO at a staleness bound η, with
Mix-PPG's clip centre π_k/μ (``clip_centre: current``) vs the plain PPO clip around 1
(``clip_centre: one``: the ratio π_θ/μ to the behaviour policy, as coupled PPO treats it).

For each seed both centres train ``configs/tiny-grpo.yaml`` asynchronously
(``rollout_mode: async``, ``max_staleness: η``; one learner thread, one producer thread),
alternating which goes first. Reported, mean ± std over seeds: rollouts and wall-clock to
the target, final accuracy (mean of the last 3 evaluations), the staleness the learner
actually consumed (``async/staleness_mean`` and its max), and the clip fraction and largest
importance ratio of the updates.

    python benchmarks/staleness.py --seeds 0 1 2 --max-staleness 4

Runs that finished in --runs-dir are reused. The table goes to stdout and to
benchmarks/results/staleness.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from async_speed import mean_std, outcome  # the same outcome measures as the speed table
from tables import publish

from remix_rft.apps.compare import eval_rows, load_run

REPO = Path(__file__).resolve().parents[1]
CENTRES = ("current", "one")


def run_dir(runs: Path, centre: str, seed: int) -> Path:
    return runs / f"centre-{centre}-seed{seed}"


def train(centre: str, seed: int, args: argparse.Namespace) -> None:
    out = run_dir(args.runs_dir, centre, seed)
    if (out / "summary.json").is_file():
        print(f"  {out.name}: done before, reused", flush=True)
        return
    if out.exists():  # an interrupted run: start it again (a partial run has no timing)
        subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, "-m", "remix_rft", "train", "configs/tiny-grpo.yaml",
           f"seed={seed}", f"out_dir={out}", "report_to=[]", "rollout_mode=async",
           f"max_staleness={args.max_staleness}", "threads=1", "rollout_threads=1",
           f"clip_centre={centre}"]  # fmt: skip
    print(f"  {out.name}: {' '.join(cmd[3:])}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def row_stat(rows: list[dict], key: str, how: str) -> float:
    values = [float(r[key]) for r in rows if key in r]
    if not values:
        return float("nan")
    return max(values) if how == "max" else statistics.fmean(values)


def report(args: argparse.Namespace) -> str:
    lines = [
        f"Async GRPO (`configs/tiny-grpo.yaml`), max_staleness η = {args.max_staleness}, "
        f"target T = {args.target}, seeds {' '.join(map(str, args.seeds))}; 1 learner + 1 "
        f"producer thread; {platform.processor() or platform.machine()}, {os.cpu_count()} cores.",
        "",
        "| clip centre | rollouts to T | wall-clock to T (s) | final acc (last 3) "
        "| staleness mean / max | clip frac | ratio max |",
        "|---|---|---|---|---|---|---|",
    ]
    for centre in CENTRES:
        runs = [load_run(run_dir(args.runs_dir, centre, s)) for s in args.seeds]
        runs = [r for r in runs if eval_rows(r.rows)]
        got = [outcome(r, args.target) for r in runs]
        staleness = [row_stat(r.rows, "async/staleness_mean", "mean") for r in runs]
        worst = max(row_stat(r.rows, "async/staleness_max", "max") for r in runs)
        clip = [row_stat(r.rows, "clip/frac", "mean") for r in runs]
        ratio = max(row_stat(r.rows, "ratio/max", "max") for r in runs)
        name = "π_k/μ (Mix-PPG)" if centre == "current" else "1 (plain PPO clip)"
        lines.append(
            f"| {name} | {mean_std([o.rollouts_to_t for o in got], ',.0f')} | "
            f"{mean_std([o.wall_to_t for o in got])} | "
            f"{mean_std([o.final for o in got], '.3f')} | "
            f"{statistics.fmean(staleness):.2f} / {worst:.0f} | "
            f"{mean_std(clip, '.4f')} | {ratio:.3f} |"
        )
    lines += ["", "Reproduce: `python benchmarks/staleness.py " + " ".join(sys.argv[1:]) + "`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-staleness", type=int, default=4)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/staleness"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/staleness.md")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    args.runs_dir = args.runs_dir.resolve()
    if not args.report_only:
        for i, seed in enumerate(args.seeds):  # alternate which centre runs first
            for centre in CENTRES if i % 2 == 0 else CENTRES[::-1]:
                train(centre, seed, args)
    table = report(args)
    publish(table, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
