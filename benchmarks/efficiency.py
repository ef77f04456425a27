"""Rollout efficiency of ReMix vs on-policy baselines, by the protocol of DESIGN §7.

Runs every variant for several seeds on the embedded task, then reports the mean ± std
of rollouts-to-target, wall-clock-to-target and final accuracy, and the ratio of each
variant's rollouts-to-target to on-policy GRPO's. The target defaults to the plateau of
on-policy GRPO (mean over seeds of the mean of its last three evaluations).

    python benchmarks/efficiency.py --seeds 0 1 2 --jobs 2
    python benchmarks/efficiency.py --variants grpo remix-grpo --seeds 0 --steps 100

Runs that already finished in --runs-dir are reused, so an interrupted benchmark
continues where it stopped. The markdown table goes to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from remix_rft.apps.compare import load_run, plateau_accuracy, rollouts_to_target

# name -> (config, overrides). Each baseline runs at the learning rate tuned for it.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "grpo": ("tiny-grpo", []),
    # ReMix-GRPO as shipped: 4 prompts x 8 fresh + 32 reused from the last 3 iterations
    # (window 4), one update of 64 per iteration, KL-Convex, reincarnation at 20, then
    # on-policy with tiny-grpo's settings (16 x 8 fresh, one update of 128, no KL).
    "remix-grpo": ("tiny-remix-grpo", []),
    # control 1 = control 2 for it: the same fresh batch (4 x 8) and the same single
    # update per iteration on fresh data only -- as many updates per rollout, no reuse
    "grpo-small-batch": ("tiny-grpo", ["prompts_per_step=4"]),
    # ReMix with 8 x 8 fresh + 64 reused (window 3), 2 updates of 64 per iteration ...
    "remix-grpo-8x8": ("tiny-remix-grpo", ["prompts_per_step=8", "window=3"]),
    # ... its control: the same fresh batch and 2 updates per iteration, fresh data only
    "grpo-same-updates": ("tiny-grpo", ["prompts_per_step=8", "minibatch_size=32"]),
    # ablations of the paper's parts (on the 8 x 8 setting)
    "remix-grpo-8x8-no-reincarnation": (
        "tiny-remix-grpo",
        ["prompts_per_step=8", "window=3", "reincarnation_step=0"],
    ),
    "remix-grpo-8x8-no-klconvex": (
        "tiny-remix-grpo",
        ["prompts_per_step=8", "window=3", "kl_lambda=1.0"],
    ),
    # a larger learning rate: does reuse (and KL-Convex) keep it stable where fresh-only
    # batches are not? Each control then counts at its better learning rate.
    "remix-grpo-8x8-lr2e-4": ("tiny-remix-grpo", ["prompts_per_step=8", "window=3", "lr=2e-4"]),
    "grpo-same-updates-lr2e-4": (
        "tiny-grpo",
        ["prompts_per_step=8", "minibatch_size=32", "lr=2e-4"],
    ),
    "grpo-small-batch-lr2e-4": ("tiny-grpo", ["prompts_per_step=4", "lr=2e-4"]),
    # 4 x 8 fresh + 32 reused (window 3), 2 updates of 32: one update per 16 rollouts ...
    "remix-grpo-4x8-2updates": (
        "tiny-remix-grpo",
        ["prompts_per_step=4", "window=3", "minibatch_size=32"],
    ),
    # ... and its two controls: the same fresh batch and updates on fresh data only,
    "grpo-4x8-2updates": ("tiny-grpo", ["prompts_per_step=4", "minibatch_size=16"]),
    # and a 2 x 8 fresh batch (one update per 16 rollouts, no reuse); 80 iterations, as
    # 40 would stop it at half the others' rollout budget.
    "grpo-2x8": ("tiny-grpo", ["prompts_per_step=2", "steps=80"]),
    "ppo": ("tiny-ppo", []),
    "remix-ppo": ("tiny-remix-ppo", []),
}


def run_dir_for(root: Path, variant: str, seed: int) -> Path:
    return root / variant / f"seed{seed}"


def launch(root: Path, variant: str, seed: int, steps: int, threads: int, extra: list[str]) -> Path:
    config, overrides = VARIANTS[variant]
    overrides = [*overrides, *extra]
    out = run_dir_for(root, variant, seed)
    if (out / "summary.json").is_file():
        return out
    args = [sys.executable, "-m", "remix_rft", "train", config, *overrides,
            f"seed={seed}", f"out_dir={out}", f"name={variant}", f"threads={threads}"]  # fmt: skip
    if steps and not any(o.startswith("steps=") for o in overrides):
        args.append(f"steps={steps}")  # a variant's own length wins
    if (out / "metrics.jsonl").is_file():
        args = [sys.executable, "-m", "remix_rft", "train", "--resume", str(out)]
    log = out.parent / f"seed{seed}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT)
    status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode}, see {log})"
    print(f"  {variant} seed {seed}: {status} in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.0f}" if values[0] > 2 else f"{values[0]:.3f}"
    m, s = statistics.mean(values), statistics.stdev(values)
    return f"{m:.0f} ± {s:.0f}" if m > 2 else f"{m:.3f} ± {s:.3f}"


def summarize(root: Path, variants: list[str], seeds: list[int], target: float | None) -> str:
    runs = {v: [load_run(run_dir_for(root, v, s)) for s in seeds] for v in variants}
    if target is None:
        plateaus = [plateau_accuracy(r.rows) for r in runs.get("grpo", [])]
        plateaus = [p for p in plateaus if p is not None]
        if not plateaus:
            raise SystemExit("no target: run the grpo variant or pass --target")
        target = statistics.mean(plateaus)
    lines = [
        f"Target T = {target:.3f} held-out greedy accuracy "
        "(reached when the mean of two consecutive evaluations ≥ T).",
        "",
        "| variant | seeds reaching T | rollouts to T | ratio to GRPO | wall-clock to T (s) | final accuracy | total wall-clock (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    base_rollouts: float | None = None
    for variant in variants:
        hits = [rollouts_to_target(r.rows, target) for r in runs[variant]]
        reached = [h for h in hits if h is not None and h.rollouts is not None]
        rollouts = [float(h.rollouts) for h in reached]
        walls = [float(h.wall_s) for h in reached if h.wall_s is not None]
        finals = [r.summary["final_eval_accuracy"] for r in runs[variant] if r.summary]
        totals = [r.summary["wall_time_s"] for r in runs[variant] if r.summary]
        mean_rollouts = statistics.mean(rollouts) if rollouts else None
        if variant == "grpo":
            base_rollouts = mean_rollouts
        ratio = (
            f"{mean_rollouts / base_rollouts:.2f}"
            if mean_rollouts is not None and base_rollouts and len(reached) == len(hits)
            else "—"
        )
        lines.append(
            f"| {variant} | {len(reached)}/{len(hits)} | {mean_std(rollouts)} | {ratio} | "
            f"{mean_std(walls)} | {mean_std(finals)} | {mean_std(totals)} |"
        )
    lines += ["", "Ratio is shown only when every seed reached T (a run that never reaches T "
              "has no rollouts-to-target; it is not counted as its budget)."]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=0, help="iterations per run (0: the configs')")
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument(
        "--eval-every", type=int, default=0,
        help="iterations between evaluations for every variant (0: the configs'); "
        "finer evaluation resolves rollouts-to-target more finely",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/efficiency"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/efficiency.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    print(f"{len(jobs)} runs, {args.jobs} at a time, into {args.runs_dir}", flush=True)
    extra = [f"eval_every={args.eval_every}"] if args.eval_every else []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda j: launch(args.runs_dir, j[0], j[1], args.steps, 1, extra), jobs))
    table = summarize(args.runs_dir, args.variants, args.seeds, args.target)
    header = (
        f"# Rollout efficiency on the embedded task\n\nMachine: {platform.machine()}, "
        f"{platform.processor() or 'CPU'}, {args.jobs} runs in parallel with 1 thread each; "
        f"seeds {args.seeds}; total {time.perf_counter() - started:.0f} s.\n\n"
        f"Command: `python benchmarks/efficiency.py {' '.join(sys.argv[1:])}`\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + table + "\n")
    print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
