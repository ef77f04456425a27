"""Rollout efficiency of ReMix vs on-policy baselines and controls (docs/design.md §5).

Two settings of the embedded task:

* ``default`` -- the shipped base (``model: embedded``): RL only has to stop a habit of
  skipping the last multiplication, which GRPO learns in ~20 updates.
* ``hard`` -- the ``embedded-hard`` base, which almost never finishes the work when the
  final factor is large: most prompt groups are all wrong (sparse signal) and on-policy
  GRPO needs more than 100 updates to plateau.

Every variant runs for several seeds at the same rollout budget (as many iterations as fit
it), is evaluated greedily on 500 held-out problems about every ``--eval-rollouts``
rollouts, and the report gives, per variant, mean ± std over seeds of

* rollouts (and training wall-clock, evaluations excluded) to the target accuracy T --
  by default T = the plateau of tuned GRPO (the learning rate with the best final
  accuracy; plateau = mean of the last 3 evaluations, averaged over seeds) minus 0.01,
  and the fixed ``--fixed-target`` --, and the ratio to tuned GRPO and to the best
  fresh-only control;
* held-out accuracy at fixed shares of the budget, and the final accuracy;
* for ReMix variants, the per-age diagnostics of reused data (importance ratio, clip
  fraction), and for all, the share of fresh prompt groups without signal.

It also writes a plot of accuracy vs rollouts (mean over seeds, ± std band).

``--paired-control VARIANT`` adds the fine, paired comparison (efficiency_paired.py):
rollouts-to-T interpolated between evaluations, the area under the accuracy curve, and
per-seed differences to VARIANT with their standard error; its plot shows them instead. The
replay test (docs/results-replay.md) runs it on the ``hard-replay`` setting.

    python benchmarks/efficiency.py --setting default --seeds 0 1 2 3 4 --jobs 2
    python benchmarks/efficiency.py --setting hard --seeds 0 1 2 3 4 --jobs 14 --device cuda
    python benchmarks/efficiency.py --setting hard --report-only   # tables from finished runs

Runs that already finished in --runs-dir are reused, so an interrupted benchmark continues
where it stopped. Every finished run is also archived in benchmarks/results/runs/ (a few kB
each, committed; see run_archive.py), and a run whose directory is gone is read from there
when its variant still resolves to the same configuration: a later session adds seeds or
variants without training the archived ones again (``--no-archive`` ignores it). Markdown
tables and the plot go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from efficiency_paired import paired_table, plot_paired, signal_table, verdicts
from efficiency_tables import (
    RunSource,
    VariantRuns,
    archived_run,
    budget_table,
    diagnostics_table,
    load_variants,
    mean_std,
    plot,
    stability_table,
    target_table,
    tuned_grpo,
)
from efficiency_variants import (
    EVAL_PROBLEMS,
    SETTINGS,
    VARIANTS,
    Setting,
    resolved,
    run_dir_for,
    run_overrides,
)
from tables import reproduce_args

# ----------------------------------------------------------------------------- launching


def launch(root: Path, setting: Setting, variant: str, seed: int, args: argparse.Namespace) -> None:
    out = run_dir_for(root, variant, seed)
    if (out / "summary.json").is_file():
        return
    if not args.no_archive and archived_run(
        args.setting, setting, variant, seed, args.rollout_grid
    ):
        print(f"  {variant} seed {seed}: in the archive, not run again", flush=True)
        return
    overrides = run_overrides(setting, variant, seed, args.rollout_grid)
    cmd = [sys.executable, "-m", "remix_rft", "train", VARIANTS[variant].config, *overrides,
           f"out_dir={out}", f"threads={args.threads}", f"device={args.device}"]  # fmt: skip
    if (out / "metrics.jsonl").is_file():
        cmd = [sys.executable, "-m", "remix_rft", "train", "--resume", str(out)]
    log = out.parent / f"seed{seed}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f"seed{seed}.lock"
    try:  # two benchmark processes sharing a runs-dir must not run (or resume) one run twice
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        print(f"  {variant} seed {seed}: skipped ({lock} exists: another benchmark process "
              "runs it, or one was killed -- then delete the file)", flush=True)  # fmt: skip
        return
    started = time.perf_counter()
    try:
        with open(log, "w") as fh:
            done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    finally:
        lock.unlink(missing_ok=True)
    status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode}, see {log})"
    print(f"  {variant} seed {seed}: {status} in {time.perf_counter() - started:.0f} s", flush=True)


def run_all(
    root: Path, setting: Setting, jobs: list[tuple[str, int]], args: argparse.Namespace
) -> None:
    """Run ``jobs`` ``args.jobs`` at a time; after ``--deadline-s`` start no new run."""
    started = time.perf_counter()

    def one(job: tuple[str, int]) -> None:
        if args.deadline_s and time.perf_counter() - started > args.deadline_s:
            print(f"  {job[0]} seed {job[1]}: not started (past --deadline-s)", flush=True)
            return
        launch(root, setting, job[0], job[1], args)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, jobs))


# ------------------------------------------------------------------------------ analysis


def report(source: RunSource, variants: Sequence[str], seeds: Sequence[int],
           targets: Sequence[float] | None,
           control: str | None = None) -> tuple[str, dict[str, VariantRuns], list[float]]:  # fmt: skip
    loaded = load_variants(source, variants, seeds)
    setting = source.setting
    baseline = tuned_grpo(loaded)
    lines: list[str] = []
    if targets is None:
        targets = [setting.fixed_target]
        if baseline:
            targets.insert(0, round(statistics.mean(loaded[baseline].plateaus()) - 0.01, 3))
    if baseline:
        plateaus = {n: mean_std(vr.plateaus()) for n, vr in loaded.items()
                    if VARIANTS[n].role == "grpo" and vr.runs}  # fmt: skip
        lines += [f"Tuned GRPO: **{baseline}** (final accuracy by learning rate: "
                  + ", ".join(f"{n} {p}" for n, p in plateaus.items()) + ").", ""]  # fmt: skip
    if control:
        lines += paired_section(loaded, control, targets, source.setting)
    for t in targets:
        lines += [f"### Rollouts to T = {t:.3f}", "",
                  "A run reaches T when two consecutive evaluations average ≥ T; ratios are "
                  "given only when every seed reached T (± the spread of the per-seed ratios).",
                  "", *target_table(loaded, t, baseline), ""]  # fmt: skip
    after = setting.stable_after or setting.budget // 3
    lines += ["### Accuracy at fixed rollout budgets (mean ± std over seeds)", "",
              *budget_table(loaded, setting.budget), "",
              f"### Stability: the largest fall of held-out accuracy between consecutive "
              f"evaluations at or after {after:,} rollouts", "",
              *stability_table(loaded, after), "",
              "### Diagnostics (means over iterations, then mean ± std over seeds)", "",
              "Uniform groups: fresh prompt groups whose responses all got the same reward "
              "(zero GRPO advantage). Age a: data generated a iterations before the update.",
              "", *diagnostics_table(loaded), ""]  # fmt: skip
    return "\n".join(lines), loaded, list(targets)


def paired_section(loaded: dict[str, VariantRuns], control: str, targets: Sequence[float],
                   setting: Setting) -> list[str]:  # fmt: skip
    """The fine, paired comparison to ``control`` (efficiency_paired.py)."""
    reuse_until = setting.stable_after or setting.budget
    lines: list[str] = []
    for t in targets:
        lines += [f"### Paired comparison to {control}: rollouts to T = {t:.3f} and AUC", "",
                  "Rollouts to T: where the two-evaluation mean first reaches T, interpolated "
                  "linearly between evaluations (seeds that never reach T are left out of its "
                  "pairs). AUC: mean held-out accuracy over the budget (trapezoid on the "
                  f"rollout axis). Δ and ratio: per seed against {control} (same seed = same "
                  "prompts), mean ± standard error over the seeds both finished.", "",
                  *paired_table(loaded, control, t, setting.budget), "",
                  *verdicts(loaded, control, t, setting.budget), ""]  # fmt: skip
    lines += [f"### What the batches held (iterations up to {reuse_until:,} rollouts; "
              "per-iteration means, then mean ± std over seeds)", "",
              *signal_table(loaded, reuse_until), ""]  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=list(SETTINGS), default="default")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                        help="default: every variant of the setting")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--targets", nargs="+", type=float, default=None,
                        help="target accuracies (default: tuned GRPO's plateau - 0.01 and "
                        "the setting's fixed target)")  # fmt: skip
    parser.add_argument("--eval-rollouts", type=int, default=0,
                        help="evaluate about every this many rollouts (0: the setting's)")  # fmt: skip
    parser.add_argument("--budget", type=int, default=0,
                        help="rollouts per run (0: the setting's)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--deadline-s", type=float, default=0.0,
                        help="start no new run after this many seconds (0: no limit)")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="only tabulate finished runs")
    parser.add_argument("--no-archive", action="store_true",
                        help="neither read nor write benchmarks/results/runs/ (the finished "
                        "runs kept in the repository; see run_archive.py)")  # fmt: skip
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="default: runs/efficiency-SETTING")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--rollout-grid", action="store_true",
                        help="evaluate on a rollout grid (eval_every_rollouts), not every "
                        "N iterations")  # fmt: skip
    parser.add_argument("--paired-control", default=None, choices=list(VARIANTS),
                        help="add the paired comparison to this variant: interpolated "
                        "rollouts-to-T, AUC, per-seed differences with their standard error")  # fmt: skip
    parser.add_argument(
        "--report-name",
        default=None,
        help="name of the table and plot (default: efficiency-SETTING)",
    )
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    if args.budget:
        setting = dataclasses.replace(setting, budget=args.budget)
    if args.eval_rollouts:
        setting = dataclasses.replace(setting, eval_rollouts=args.eval_rollouts)
    variants = args.variants or [n for n, v in VARIANTS.items() if args.setting in v.settings]
    root = args.runs_dir or Path(f"runs/efficiency-{args.setting}")
    started = time.perf_counter()
    if not args.report_only:
        # tier by tier, seed-major: an interrupted benchmark has the main comparison on
        # every seed, and every variant of a tier on the first seeds
        jobs = [(v, s) for tier in sorted({VARIANTS[v].tier for v in variants})
                for s in args.seeds for v in variants if VARIANTS[v].tier == tier]  # fmt: skip
        print(f"{len(jobs)} runs ({args.setting} setting, {setting.budget:,} rollouts each), "
              f"{args.jobs} at a time, into {root}", flush=True)  # fmt: skip
        run_all(root, setting, jobs, args)
    source = RunSource(root, args.setting, setting, args.rollout_grid, not args.no_archive)
    body, loaded, targets = report(source, variants, args.seeds, args.targets,
                                   args.paired_control)  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report_name = args.report_name or f"efficiency-{args.setting}"
    png = args.out_dir / f"{report_name}.png"
    if args.paired_control:
        plot_paired(loaded, args.paired_control, setting.budget, targets, png,
                    f"{args.setting} setting")  # fmt: skip
    else:
        plot(loaded, setting.budget, targets, png, f"{args.setting} setting")
    n_runs = sum(len(vr.runs) for vr in loaded.values())
    from_archive = sum(r.path.name.endswith(".json.gz") for vr in loaded.values() for r in vr.runs)
    command = f"python benchmarks/efficiency.py {' '.join(reproduce_args(sys.argv[1:]))}"
    header = (
        f"# Rollout efficiency: {args.setting} setting (model `{setting.model}`, "
        f"{setting.budget:,} rollouts per run)\n\n"
        f"{n_runs} finished runs ({from_archive} of them read from the archive, "
        f"`benchmarks/results/runs/`), seeds {args.seeds}; greedy evaluation on {EVAL_PROBLEMS} "
        f"held-out problems about every {setting.eval_rollouts} rollouts. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, device {args.device}"
        + ("" if args.report_only else f", {args.jobs} runs in parallel with "
           f"{args.threads} thread(s) each; total {time.perf_counter() - started:.0f} s")
        + f". Plot: `{png.name}`.\n\nRuns: `{command}`"
        + (" (this file: the same with `--report-only`)" if args.report_only else "")
        + "\n\nVariants: "
        + "; ".join(f"`{n}` = {v.config} {' '.join(resolved(v.overrides))}".rstrip()
                    + (f" ({v.note})" if v.note else "")
                    for n, v in VARIANTS.items() if n in variants)
        + (f". ReMix variants also: {' '.join(setting.remix_overrides)}"
           if setting.remix_overrides
           and any(VARIANTS[n].config.startswith("tiny-remix") for n in variants) else "")
        + ".\n\n"
    )  # fmt: skip
    out = args.out_dir / f"{report_name}.md"
    out.write_text(header + body)
    print(body)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
