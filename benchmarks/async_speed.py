"""Synchronous vs asynchronous rollouts, side by side: wall-clock and rollouts to a target.

For each seed and each algorithm config (GRPO: ``configs/tiny-grpo.yaml``, ReMix-GRPO:
``configs/tiny-remix-grpo.yaml``) it trains the sync run and the async run one after the
other, alternating which goes first from seed to seed, on the same machine with the
same CPU budget: sync with ``threads`` torch threads, async with ``threads − 1`` for the
learner and one for the producer process (``rollout_threads``). Reported per variant,
mean ± std over seeds:

* wall-clock (``time/total_s``, evaluations included at the same schedule) and rollouts
  to the target (the first evaluation whose mean with the previous one is ≥ T);
* final accuracy (mean of the last 3 evaluations) and the mean iteration time;
* the async/sync ratio of wall-clock to T, per seed, then mean ± std.

A third mode, ``async-lend``, is async with ``eval_threads = threads``: the learner
evaluates with the producer's thread too, as the producer waits at the staleness bound.
``async-full`` is what ``rollout_mode=async`` does with the default threads: the learner
keeps all ``threads`` and the producer runs beside it on one more (the cores
oversubscribed). ``sync-1t`` is the sync run on one thread: its wall-clock is the work of
the run on one core, W1, and no schedule of that work on ``threads`` cores -- async or
any other -- can reach T in less than W1 / threads. The report gives that bound as a
share of sync's wall-clock: where it is above a target ratio, no overlap of generation
and training can meet the target on this machine.

    python benchmarks/async_speed.py --seeds 0 1 2
    python benchmarks/async_speed.py --seeds 0 1 2 --report-only   # table from finished runs

Runs that finished in --runs-dir are reused (delete them to measure again). The table
goes to stdout and to benchmarks/results/async-speed.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tables import publish, reproduce_args

from remix_rft.apps.compare import eval_rows, load_run, plateau_accuracy, rollouts_to_target
from remix_rft.apps.runs import RunRecord

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"grpo": "configs/tiny-grpo.yaml", "remix-grpo": "configs/tiny-remix-grpo.yaml"}
# async-lend: async, and evaluation borrows the producer's thread (eval_threads = threads):
# the producer idles at the staleness bound while the learner evaluates
MODES = ("sync", "async", "async-lend", "async-full", "sync-1t")
DEFAULT_MODES = ("sync", "async", "async-lend")


@dataclass(frozen=True)
class Variant:
    algorithm: str
    mode: str

    @property
    def name(self) -> str:
        return f"{self.algorithm}-{self.mode}"


def overrides(variant: Variant, seed: int, threads: int, staleness: int, out: Path) -> list[str]:
    common = [f"seed={seed}", f"out_dir={out}", "report_to=[]"]
    if variant.mode == "sync":
        return [*common, f"threads={threads}"]
    if variant.mode == "sync-1t":
        return [*common, "threads=1"]
    learner = threads if variant.mode == "async-full" else max(threads - 1, 1)
    lend = [f"eval_threads={threads}"] if variant.mode == "async-lend" else []
    return [*common, "rollout_mode=async", f"max_staleness={staleness}",
            f"threads={learner}", "rollout_threads=1", *lend]  # fmt: skip


def run_dir(runs: Path, variant: Variant, seed: int) -> Path:
    return runs / f"{variant.name}-seed{seed}"


def train(variant: Variant, seed: int, args: argparse.Namespace) -> None:
    out = run_dir(args.runs_dir, variant, seed)
    if (out / "summary.json").is_file():
        print(f"  {out.name}: done before, reused", flush=True)
        return
    if out.exists():  # an interrupted run: start it again (a partial run has no timing)
        subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, "-m", "remix_rft", "train", CONFIGS[variant.algorithm],
           *overrides(variant, seed, args.threads, args.max_staleness, out)]  # fmt: skip
    print(f"  {out.name}: {' '.join(cmd[3:])}", flush=True)
    omp = 1 if variant.mode == "sync-1t" else args.threads
    env = {**os.environ, "OMP_NUM_THREADS": str(omp)}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


@dataclass
class Outcome:
    rollouts_to_t: int | None
    wall_to_t: float | None
    final: float | None
    step_s: float


def outcome(run: RunRecord, target: float) -> Outcome:
    hit = rollouts_to_target(run.rows, target)
    steps = [float(r["time/step_s"]) for r in run.rows if int(r.get("step", 0)) > 0]
    return Outcome(
        rollouts_to_t=hit.rollouts if hit else None,
        wall_to_t=hit.wall_s if hit else None,
        final=plateau_accuracy(run.rows),
        step_s=statistics.fmean(steps) if steps else float("nan"),
    )


def mean_std(values: list[float | None], spec: str = ".1f") -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "not reached"
    mean = statistics.fmean(got)
    spread = statistics.stdev(got) if len(got) > 1 else 0.0
    missing = (
        f" ({len(values) - len(got)} of {len(values)} not reached)"
        if len(got) < len(values)
        else ""
    )
    return f"{mean:{spec}} ± {spread:{spec}}{missing}"


def report(args: argparse.Namespace) -> str:
    lines = [
        f"Sync vs async rollouts, target T = {args.target}, seeds {' '.join(map(str, args.seeds))}, "
        f"{args.threads} CPU threads per run (async, async-lend: {max(args.threads - 1, 1)} "
        f"learner + 1 producer; async-full: {args.threads} learner + 1 producer; sync-1t: one "
        f"thread), max_staleness {args.max_staleness}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.",
        "",
        "| variant | wall-clock to T (s) | rollouts to T | final acc (last 3) | s / iteration | ÷ sync wall to T |",
        "|---|---|---|---|---|---|",
    ]
    for algorithm in args.algorithms:
        outcomes: dict[str, list[Outcome]] = {}
        for mode in args.modes:
            variant = Variant(algorithm, mode)
            runs = [load_run(run_dir(args.runs_dir, variant, s)) for s in args.seeds]
            outcomes[mode] = [outcome(r, args.target) for r in runs if eval_rows(r.rows)]
        for mode in args.modes:
            got = outcomes[mode]
            ratios = [
                a.wall_to_t / s.wall_to_t
                for s, a in zip(outcomes["sync"], got, strict=True)
                if a.wall_to_t and s.wall_to_t
            ]
            ratio = mean_std(ratios, ".2f") if mode != "sync" else "1"
            lines.append(
                f"| {algorithm} {mode} | {mean_std([o.wall_to_t for o in got])} | "
                f"{mean_std([o.rollouts_to_t for o in got], ',.0f')} | "
                f"{mean_std([o.final for o in got], '.3f')} | "
                f"{mean_std([o.step_s for o in got], '.2f')} | {ratio} |"
            )
        if "sync-1t" in outcomes:
            lines.append(work_bound_line(algorithm, outcomes, args.threads))
    lines += [
        "",
        "Reproduce: `python benchmarks/async_speed.py "
        + " ".join(reproduce_args(sys.argv[1:]))
        + "`",
    ]
    return "\n".join(lines)


def work_bound_line(algorithm: str, outcomes: dict[str, list[Outcome]], threads: int) -> str:
    """The lowest wall-clock to T that any schedule of the run's one-core work W1 can reach
    on ``threads`` cores (W1 / threads), as a share of sync's, per seed. A lower bound: a
    split into processes only adds work (start-up, weight copies)."""
    shares = [
        one.wall_to_t / threads / s.wall_to_t
        for s, one in zip(outcomes["sync"], outcomes["sync-1t"], strict=True)
        if one.wall_to_t and s.wall_to_t
    ]
    per_seed = ", ".join(f"{x:.2f}" for x in shares)
    return (
        f"| {algorithm}: bound W1 / {threads} ÷ sync wall | | | | | "
        f"{mean_std(shares, '.2f')} (per seed {per_seed}) |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES),
                        help="sync first: the ratios are to it (default: "
                        + " ".join(DEFAULT_MODES) + ")")  # fmt: skip
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run (default 2)")
    parser.add_argument("--max-staleness", type=int, default=1)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/async-speed"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/async-speed.md")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if "sync" not in args.modes:
        parser.error("--modes needs sync: every ratio is to it")
    if not args.report_only:
        for i, seed in enumerate(args.seeds):  # alternate which mode runs first
            order = args.modes if i % 2 == 0 else args.modes[::-1]
            for algorithm in args.algorithms:
                for mode in order:
                    train(Variant(algorithm, mode), seed, args)
    table = report(args)
    publish(table, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
