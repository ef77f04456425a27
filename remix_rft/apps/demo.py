"""``remix demo``: on-policy GRPO vs ReMix-GRPO on the embedded task, same seed and budget.

Prints held-out accuracy, rollouts and wall-clock to the target accuracy for both,
and writes a plot of accuracy vs rollouts. Sized for a 2-core laptop CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from remix_rft.apps.compare import (
    add_report_to,
    compare_table,
    format_table,
    load_run,
    plateau_accuracy,
)
from remix_rft.apps.progress import TrainProgress
from remix_rft.trainer.config import ConfigError, load_config
from remix_rft.trainer.loop import train

EXIT_USAGE = 2
DEMO_RUNS = (("grpo", "tiny-grpo"), ("remix-grpo", "tiny-remix-grpo"))
# GRPO: 30 iterations of 128 rollouts (its plateau is reached by ~20); ReMix: 60 of 64.
DEFAULT_BUDGET = 3840


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="on-policy GRPO vs ReMix-GRPO on the embedded model: table and plot"
    )
    p.add_argument("--out", default="runs/demo", help="directory for both runs and the plot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rollouts", type=int, default=DEFAULT_BUDGET,
        help="rollout budget of each run (responses sampled for training); sets its steps",
    )  # fmt: skip
    p.add_argument(
        "--target", type=float, default=None,
        help="target held-out accuracy (default: GRPO's plateau, mean of its last 3 evaluations)",
    )  # fmt: skip
    add_report_to(p, "both runs' metrics, and the plot as an image in a run named 'demo'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"remix demo: error: {out} is not empty; pass --out NEW_DIR", file=sys.stderr)
        return EXIT_USAGE
    run_dirs: list[Path] = []
    for label, config_name in DEMO_RUNS:
        overrides = [f"out_dir={out / label}", f"seed={args.seed}", f"name={label}"]
        overrides.append(f"report_to={','.join(args.report_to)}")
        try:
            cfg = load_config(config_name, overrides)
            steps = max(1, args.rollouts // cfg.fresh_batch_size())
            cfg = load_config(config_name, [*overrides, f"steps={steps}"])
        except ConfigError as err:
            print(f"remix demo: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        print(f"[{len(run_dirs) + 1}/{len(DEMO_RUNS)}] training {label} "
              f"({cfg.steps} steps x {cfg.fresh_batch_size()} rollouts)")  # fmt: skip
        progress = TrainProgress(cfg.steps, 0, label)
        try:
            train(cfg, on_step=progress)
        finally:
            progress.close()
        run_dirs.append(cfg.resolved_out_dir())
    runs = [load_run(d) for d in run_dirs]
    target = args.target if args.target is not None else plateau_accuracy(runs[0].rows)
    print()
    if target is not None:
        source = "--target" if args.target is not None else "GRPO's plateau (mean of last 3 evals)"
        print(f"target accuracy T = {target:.3f} ({source})")
    print(format_table(compare_table(runs, target)))
    from remix_rft.apps.plots import plot_runs

    png = plot_runs(runs, out / "demo.png", target=target)
    print(f"plot: {png}")
    if args.report_to:
        from remix_rft.trainer.trackers import log_plot

        log_plot(args.report_to, out, "demo", png)
    print(f"compare again: remix compare {' '.join(str(d) for d in run_dirs)} --plot {png}")
    return 0
