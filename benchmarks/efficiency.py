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
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import run_archive
from tables import reproduce_args

from remix_rft.apps.compare import eval_rows, load_run, plateau_accuracy, rollouts_to_target
from remix_rft.apps.runs import EVAL_KEY, RunLoadError, RunRecord
from remix_rft.trainer.config import load_config


@dataclass(frozen=True)
class Setting:
    model: str
    budget: int  # rollouts per run
    fixed_target: float  # a documented, fixed accuracy besides the plateau target
    eval_rollouts: int  # evaluate about every this many rollouts
    remix_overrides: tuple[str, ...] = ()  # for the ReMix variants only
    # the stability table looks at evaluations from here on: past the early climb, where a
    # fall of accuracy between evaluations is instability rather than noise of the climb
    stable_after: int = 0


SETTINGS: dict[str, Setting] = {
    # The demo's budget: 30 GRPO iterations of 16 x 8.
    "default": Setting("embedded", 3840, 0.9, 128, stable_after=1280),
    # 100 GRPO iterations of 16 x 8 (one update each): GRPO creeps up to ~0.45 by then
    # (~0.47 by 150). The fixed target 0.40 is the early-speed mark (base 0.15, factor-2/3
    # problems solved: 0.31); the plateau target is tuned GRPO's final accuracy - 0.01.
    # ReMix reincarnates later here (80 iterations, 2,560 rollouts).
    "hard": Setting("embedded-hard", 12800, 0.40, 512, ("reincarnation_step=80",), 4096),
}


@dataclass(frozen=True)
class Variant:
    config: str
    overrides: tuple[str, ...] = ()
    role: str = ""  # grpo (an lr of the baseline), control, remix, ablation, ppo
    settings: tuple[str, ...] = ("default", "hard")
    note: str = ""
    tier: int = 0  # launch order: the comparison itself, then PPO, ablations, extras


# tiny-remix-ppo moved to the paper's regime: tiny-remix-grpo-paper's share, window, UTD
# and λ schedule; the minibatch holds the whole mixed batch, as there
PAPER_PPO = (
    "prompts_per_step=8", "offpolicy_fraction=0.4", "window=3", "epochs=2",
    "kl_lambda_schedule=step-down", "kl_lambda_start=1.0", "kl_lambda_hold_steps=8",
    "kl_lambda_every=2", "kl_lambda_decrement=0.1", "kl_lambda=0.5",
    # after reincarnation: tiny-ppo's on-policy batch and single update, as the GRPO
    # paper config switches to tiny-grpo's
    "post_reincarnation_prompts_per_step=32", "post_reincarnation_minibatch_size=128",
    "post_reincarnation_epochs=1", "post_reincarnation_kl_coef=0",
)  # fmt: skip

# The overrides come on top of the shipped config; the setting's overrides come first, so
# a variant's own value wins.
VARIANTS: dict[str, Variant] = {
    "grpo-lr5e-5": Variant("tiny-grpo", ("lr=5e-5",), "grpo", tier=3),
    "grpo": Variant("tiny-grpo", (), "grpo", note="16 x 8 fresh, one update per iteration"),
    "grpo-lr2e-4": Variant("tiny-grpo", ("lr=2e-4",), "grpo"),
    "grpo-lr4e-4": Variant("tiny-grpo", ("lr=4e-4",), "grpo"),
    "remix-grpo": Variant(
        "tiny-remix-grpo",
        (),
        "remix",
        note="4 x 8 fresh + 32 reused (window 4), one update per iteration, KL-Convex, "
        "reincarnation, then tiny-grpo's settings",
    ),  # fmt: skip
    # control 1: everything of ReMix-GRPO (fresh batch, one update per iteration, KL,
    # reincarnation and the on-policy phase after it) except the reuse
    "remix-grpo-no-reuse": Variant(
        "tiny-remix-grpo",
        ("offpolicy_fraction=0",),
        "control",
        note="ReMix-GRPO without reuse (control: same fresh batch and updates)",
    ),  # fmt: skip
    # control 2: smaller fresh batches without reuse -- more updates per rollout
    "grpo-4x8": Variant("tiny-grpo", ("prompts_per_step=4",), "control", note="4 x 8 fresh"),
    "grpo-2x8": Variant(
        "tiny-grpo", ("prompts_per_step=2",), "control", note="2 x 8 fresh", tier=3
    ),
    # ablations of ReMix's parts
    "remix-grpo-kl-base-only": Variant(
        "tiny-remix-grpo", ("kl_lambda=1.0",), "ablation", tier=2, note="no KL-Convex: λ = 1"
    ),
    "remix-grpo-no-kl": Variant(
        "tiny-remix-grpo", ("kl_coef=0",), "ablation", tier=2, note="no KL at all: β = 0"
    ),
    "remix-grpo-no-reincarnation": Variant(
        "tiny-remix-grpo",
        ("reincarnation_step=0",),
        "ablation",
        tier=2,
        note="reuse for the whole run",
    ),  # fmt: skip
    "remix-grpo-centre-one": Variant(
        "tiny-remix-grpo", ("clip_centre=one",), "ablation", tier=2, note="clip around 1, not π_k/μ"
    ),
    "ppo": Variant("tiny-ppo", (), "ppo", settings=("hard",), tier=1),
    # PPO's own lr sweep on the hard setting (actor lr; the critic keeps 1e-4): the baseline
    # of the ReMix-PPO comparison gets its best shot, as GRPO does
    "ppo-lr5e-5": Variant("tiny-ppo", ("lr=5e-5",), "ppo", settings=("hard",), tier=9),
    "ppo-lr2e-4": Variant("tiny-ppo", ("lr=2e-4",), "ppo", settings=("hard",), tier=9),
    "remix-ppo": Variant("tiny-remix-ppo", (), "ppo", settings=("hard",), tier=1),
    # ReMix-PPO in the paper's regime (p 0.4, window 3, 2 updates per batch, the λ
    # schedule of tiny-remix-grpo-paper) on an 8 x 4 fresh batch, and the same without reuse
    **{
        name: Variant(
            "tiny-remix-ppo", PAPER_PPO + extra, role, settings=("hard",), tier=8, note=note
        )  # fmt: skip
        for name, extra, role, note in (
            (
                "paper-remix-ppo",
                (),
                "remix",
                "ReMix-PPO: 8 x 4 fresh + 21 reused (window 3, p 0.4), 2 updates, λ schedule",
            ),
            (
                "paper-ppo-no-reuse",
                ("offpolicy_fraction=0",),
                "control",
                "the same 8 x 4 fresh batch and 2 updates, no reuse (critic GAE)",
            ),
        )  # fmt: skip
    },
    # DAPO's dynamic sampling: the filter that competes with reuse for the same sparse
    # signal; every generated response counts in the rollouts, kept or dropped
    "grpo-dynamic": Variant(
        "tiny-grpo",
        ("dynamic_sampling=true", "max_generation_rounds=3"),
        "filter",
        settings=("hard",),
        tier=4,
        note="16 x 8 fresh, groups without signal dropped and refilled, up to 3 rounds",
    ),  # fmt: skip
    # The three arms of the reuse test in the paper's regime (2 updates per batch, where
    # the clip centre acts): (a) ReMix, (b) the same fresh batch and updates without the
    # reuse, (c) half the fresh batch with one update: the same updates per rollout as
    # (a) and (b). (c) reincarnates at the same rollout count (160 x 16 = 80 x 32) and
    # steps its λ at the same rollout counts.
    "paper-remix": Variant(
        "tiny-remix-grpo-paper",
        (),
        "remix",
        settings=("hard",),
        tier=5,
        note="4 x 8 fresh + 21 reused (window 3, p 0.4), 2 updates, λ schedule",
    ),  # fmt: skip
    "paper-no-reuse": Variant(
        "tiny-remix-grpo-paper",
        ("offpolicy_fraction=0",),
        "control",
        settings=("hard",),
        tier=5,
        note="arm (b): the same 4 x 8 fresh batch and 2 updates, no reuse",
    ),  # fmt: skip
    "paper-2x8-one-update": Variant(
        "tiny-remix-grpo-paper",
        (
            "offpolicy_fraction=0",
            "prompts_per_step=2",
            "epochs=1",
            "minibatch_size=16",
            "reincarnation_step=160",
            "kl_lambda_hold_steps=16",
            "kl_lambda_every=4",
        ),
        "control",
        settings=("hard",),
        tier=5,
        note="arm (c): 2 x 8 fresh, 1 update: the updates per rollout of (a) and (b)",
    ),  # fmt: skip
    # ablations of the paper regime's parts (role "ablation": the right-hand plot panel)
    **{
        name: Variant(
            "tiny-remix-grpo-paper", overrides, "ablation", settings=("hard",), tier=6, note=note
        )
        for name, overrides, note in (
            (
                "paper-lambda-constant",
                ("kl_lambda_schedule=constant",),
                "no λ schedule: λ = 0.5 throughout",
            ),
            (
                "paper-lambda-1",
                ("kl_lambda_schedule=constant", "kl_lambda=1.0"),
                "no KL-Convex: λ = 1 (base KL only)",
            ),
            ("paper-no-kl", ("kl_coef=0",), "no KL at all: β = 0"),
            ("paper-utd1", ("epochs=1",), "UTD 1: one update per batch"),
        )
    },  # fmt: skip
    # where reuse degrades: more updates per batch, older data, and pure Mix-PPG (no
    # reincarnation) for the whole budget (the paper reports destructive degradation of
    # pure Mix-PPG at high UTD after ~200 steps)
    **{
        name: Variant(
            "tiny-remix-grpo-paper", overrides, "ablation", settings=("hard",), tier=7, note=note
        )
        for name, overrides, note in (
            ("paper-utd4", ("epochs=4",), "UTD 4: four updates per batch"),
            ("paper-window6", ("window=6",), "window 6: the last 5 past policies"),
            (
                "paper-no-reincarnation",
                ("reincarnation_step=0",),
                "pure Mix-PPG (UTD 2) for the whole budget",
            ),
            (
                "paper-utd4-no-reincarnation",
                ("epochs=4", "reincarnation_step=0"),
                "pure Mix-PPG at UTD 4 for the whole budget",
            ),
        )
    },  # fmt: skip
}
BUDGET_SHARES = (0.125, 0.25, 0.5, 1.0)
EVAL_PROBLEMS = 500


# ----------------------------------------------------------------------------- launching


def run_dir_for(root: Path, variant: str, seed: int) -> Path:
    return root / variant / f"seed{seed}"


def run_overrides(
    setting: Setting, variant: str, seed: int, rollout_grid: bool = False
) -> list[str]:
    """The overrides of one run: setting, variant, the budget's steps and the eval cadence
    (every ``eval_every`` iterations, or with ``rollout_grid`` whenever the rollout count
    crosses a multiple of the setting's ``eval_rollouts``, the same grid for every batch
    size, before and after reincarnation)."""
    v = VARIANTS[variant]
    extra = setting.remix_overrides if v.config.startswith("tiny-remix") else ()
    base = [f"model={setting.model}", *extra, *v.overrides]
    cfg = load_config(v.config, base)
    steps = cfg.steps_for_rollouts(setting.budget)
    per_step = cfg.rollouts_for_steps(1)  # before reincarnation: the smallest iterations
    eval_every = max(1, setting.eval_rollouts // per_step)
    cadence = (f"eval_every_rollouts={setting.eval_rollouts}" if rollout_grid
               else f"eval_every={eval_every}")  # fmt: skip
    return [*base, f"steps={steps}", cadence,
            f"eval_problems={EVAL_PROBLEMS}", f"save_every={steps}", "keep_checkpoints=1",
            f"seed={seed}", f"name={variant}"]  # fmt: skip


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


def mean_std(values: Sequence[float], spec: str = ".3f") -> str:
    """``mean ± std`` of ``values`` in format ``spec`` (one value: itself; none: a dash)."""
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.mean(values), spec)} ± {format(statistics.stdev(values), spec)}"


def train_seconds_to(rows: Sequence[dict[str, Any]], step: int) -> float:
    """Training wall-clock up to ``step``: the iterations' own time, evaluations excluded."""
    return sum(float(r.get("time/step_s", 0.0)) for r in rows if 0 < r["step"] <= step)


def accuracy_at(rows: Sequence[dict[str, Any]], rollouts: float) -> float | None:
    """The last held-out accuracy measured at or before ``rollouts``."""
    before = [r for r in eval_rows(rows) if float(r.get("rollouts", 0)) <= rollouts + 1e-9]
    return float(before[-1][EVAL_KEY]) if before else None


@dataclass
class VariantRuns:
    name: str
    runs: list[RunRecord] = field(default_factory=list)

    def plateaus(self) -> list[float]:
        return [p for r in self.runs if (p := plateau_accuracy(r.rows)) is not None]

    def to_target(self, target: float) -> tuple[list[float], list[float]]:
        """Rollouts and training seconds to ``target`` of the seeds that reached it."""
        rollouts, seconds = [], []
        for r in self.runs:
            hit = rollouts_to_target(r.rows, target)
            if hit is not None and hit.rollouts is not None and hit.step is not None:
                rollouts.append(float(hit.rollouts))
                seconds.append(train_seconds_to(r.rows, hit.step))
        return rollouts, seconds

    def mean_of(self, key: str, rows_filter: Any = None) -> list[float]:
        """Per seed, the mean of metric ``key`` over the iterations that logged it."""
        out = []
        for r in self.runs:
            vals = [float(row[key]) for row in r.rows if key in row and row["step"] > 0
                    and (rows_filter is None or rows_filter(row))]  # fmt: skip
            if vals:
                out.append(statistics.mean(vals))
        return out


@dataclass(frozen=True)
class RunSource:
    """Where a report finds its runs: the runs directory, then the archive."""

    root: Path
    setting_name: str
    setting: Setting
    rollout_grid: bool
    use_archive: bool


def expected_config(
    setting: Setting, variant: str, seed: int, rollout_grid: bool
) -> dict[str, Any]:
    overrides = run_overrides(setting, variant, seed, rollout_grid)
    return load_config(VARIANTS[variant].config, overrides).to_dict()


def archived_run(
    setting_name: str, setting: Setting, variant: str, seed: int, rollout_grid: bool
) -> RunRecord | None:
    path = run_archive.archive_path(setting_name, variant, seed)
    expected = expected_config(setting, variant, seed, rollout_grid)
    return run_archive.load(path, expected, load_config(None, []).to_dict())


def finished_run(source: RunSource, variant: str, seed: int) -> RunRecord | None:
    """The finished run of ``variant`` and ``seed``: from its directory (archived as it is
    read), else from the archive when the variant still resolves to the archived config."""
    try:
        run: RunRecord | None = load_run(run_dir_for(source.root, variant, seed))
    except RunLoadError:
        run = None
    if run is not None and run.summary:  # finished runs only
        if source.use_archive:
            run_archive.save(run, run_archive.archive_path(source.setting_name, variant, seed))
        return run
    if not source.use_archive:
        return None
    return archived_run(source.setting_name, source.setting, variant, seed, source.rollout_grid)


def load_variants(
    source: RunSource, variants: Sequence[str], seeds: Sequence[int]
) -> dict[str, VariantRuns]:
    loaded: dict[str, VariantRuns] = {}
    for v in variants:
        vr = VariantRuns(v)
        vr.runs = [run for s in seeds if (run := finished_run(source, v, s)) is not None]
        loaded[v] = vr
    return loaded


def tuned_grpo(loaded: dict[str, VariantRuns]) -> str | None:
    """The GRPO learning rate with the best mean plateau (final accuracy)."""
    scored = [(statistics.mean(vr.plateaus()), name) for name, vr in loaded.items()
              if VARIANTS[name].role == "grpo" and vr.plateaus()]  # fmt: skip
    return max(scored)[1] if scored else None


def best_control(loaded: dict[str, VariantRuns], target: float) -> str | None:
    """The fresh-only control with the fewest mean rollouts to ``target`` (all seeds)."""
    scored = []
    for name, vr in loaded.items():
        if VARIANTS[name].role != "control" or not vr.runs:
            continue
        rollouts, _ = vr.to_target(target)
        if len(rollouts) == len(vr.runs):
            scored.append((statistics.mean(rollouts), name))
    return min(scored)[1] if scored else None


def target_table(loaded: dict[str, VariantRuns], target: float, baseline: str | None) -> list[str]:
    control = best_control(loaded, target)
    base = loaded[baseline].to_target(target)[0] if baseline else []
    ctrl = loaded[control].to_target(target)[0] if control else []
    lines = [
        f"| variant | role | seeds reaching T | rollouts to T | ratio to {baseline or 'GRPO'} "
        f"| ratio to {control or 'best control'} | training s to T |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, vr in loaded.items():
        if not vr.runs:
            continue
        rollouts, seconds = vr.to_target(target)
        all_reached = len(rollouts) == len(vr.runs)
        lines.append(
            f"| {name} | {VARIANTS[name].role} | {len(rollouts)}/{len(vr.runs)} | "
            f"{mean_std(rollouts, ',.0f')} | {ratio(rollouts, base, all_reached)} | "
            f"{ratio(rollouts, ctrl, all_reached)} | {mean_std(seconds, '.0f')} |"
        )
    return lines


def ratio(mine: Sequence[float], theirs: Sequence[float], all_reached: bool) -> str:
    """Ratio of means, with the spread of the per-seed ratios to the other mean."""
    if not mine or not theirs or not all_reached:
        return "—"
    ref = statistics.mean(theirs)
    per_seed = [m / ref for m in mine]
    spread = f" ± {statistics.stdev(per_seed):.2f}" if len(per_seed) > 1 else ""
    return f"{statistics.mean(mine) / ref:.2f}{spread}"


def budget_table(loaded: dict[str, VariantRuns], budget: int) -> list[str]:
    heads = " | ".join(f"acc @ {int(budget * f):,}" for f in BUDGET_SHARES)
    lines = [f"| variant | {heads} | final (last 3 evals) |",
             "|---|" + "---|" * (len(BUDGET_SHARES) + 1)]  # fmt: skip
    for name, vr in loaded.items():
        if not vr.runs:
            continue
        cells = []
        for share in BUDGET_SHARES:
            accs = [a for r in vr.runs if (a := accuracy_at(r.rows, budget * share)) is not None]
            cells.append(mean_std(accs))
        lines.append(f"| {name} | {' | '.join(cells)} | {mean_std(vr.plateaus())} |")
    return lines


def largest_drop(rows: Sequence[dict[str, Any]], after: float) -> float | None:
    """The largest fall of held-out accuracy from one evaluation to the next, among the
    evaluations at or after ``after`` rollouts (0.0: it never fell; None: < 2 evaluations)."""
    accs = [float(r[EVAL_KEY]) for r in eval_rows(rows) if float(r.get("rollouts", 0)) >= after]
    if len(accs) < 2:
        return None
    return max(0.0, *(a - b for a, b in zip(accs, accs[1:], strict=False)))


def stability_table(loaded: dict[str, VariantRuns], after: int) -> list[str]:
    """Per variant and seed, the largest fall between consecutive evaluations after
    ``after`` rollouts: how much a run loses from one evaluation to the next."""
    lines = ["| variant | largest drop, per seed | mean ± std |", "|---|---|---|"]
    for name, vr in loaded.items():
        drops = [d for r in vr.runs if (d := largest_drop(r.rows, after)) is not None]
        if drops:
            per_seed = " / ".join(f"{d:.3f}" for d in drops)
            lines.append(f"| {name} | {per_seed} | {mean_std(drops)} |")
    return lines


def diagnostics_table(loaded: dict[str, VariantRuns]) -> list[str]:
    """Signal sparsity of the fresh batches, and the reused data's ratio/clip by age."""
    lines = [
        "| variant | uniform groups (first 20 it.) | all-wrong groups (first 20 it.) | "
        "mean abs log(π/μ), age 1 / 2 / 3 | clip frac, age 0 / 1 / 2 / 3 |",
        "|---|---|---|---|---|",
    ]
    early = lambda row: row["step"] <= 20  # noqa: E731
    for name, vr in loaded.items():
        if not vr.runs:
            continue
        drift = [mean_std(vr.mean_of(f"age{a}/log_ratio_abs"), ".3f") for a in (1, 2, 3)]
        clip = [mean_std(vr.mean_of(f"age{a}/clip_frac"), ".3f") for a in (0, 1, 2, 3)]
        cells = [
            mean_std(vr.mean_of("groups/uniform_frac", early), ".2f"),
            mean_std(vr.mean_of("groups/all_wrong_frac", early), ".2f"),
            " / ".join(drift) if vr.mean_of("age1/log_ratio_abs") else "—",
            " / ".join(clip),
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def curve(run: RunRecord, grid: Sequence[float]) -> list[float]:
    """Accuracy on a rollout grid (the last evaluation at or before each point)."""
    return [a if (a := accuracy_at(run.rows, x)) is not None else math.nan for x in grid]


def plot(
    loaded: dict[str, VariantRuns], budget: int, targets: Sequence[float], path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [budget * i / 200 for i in range(201)]
    groups = {
        "main": ("grpo", "control", "filter", "remix", "ppo"),
        "ablations": ("remix", "ablation"),
    }
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, (panel, roles) in zip(axes, groups.items(), strict=True):
        for name, vr in loaded.items():
            if VARIANTS[name].role not in roles or not vr.runs:
                continue
            if panel == "ablations" and name != "remix-grpo" and VARIANTS[name].role == "remix":
                continue
            curves = [curve(r, grid) for r in vr.runs]
            mean = [statistics.fmean(c[i] for c in curves) for i in range(len(grid))]
            std = [statistics.pstdev([c[i] for c in curves]) for i in range(len(grid))]
            style = "-" if VARIANTS[name].role in ("remix", "grpo") else "--"
            color = plt.get_cmap("tab20")(list(VARIANTS).index(name) % 20)  # same in both panels
            (line,) = ax.plot(
                grid, mean, style, color=color, label=f"{name} (n={len(curves)})", lw=1.4
            )
            ax.fill_between(grid, [m - s for m, s in zip(mean, std, strict=True)],
                            [m + s for m, s in zip(mean, std, strict=True)],
                            color=line.get_color(), alpha=0.15)  # fmt: skip
        for t in targets:
            ax.axhline(t, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("rollouts (sampled responses)")
        ax.set_title(f"{title}: {panel}")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out greedy accuracy (500 problems)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(source: RunSource, variants: Sequence[str], seeds: Sequence[int],
           targets: Sequence[float] | None) -> tuple[str, dict[str, VariantRuns], list[float]]:  # fmt: skip
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


def resolved(overrides: Sequence[str]) -> list[str]:
    """``key=value`` overrides with later values winning, in first-seen key order (as the
    config loader applies them), so a variant's description names each key once."""
    values: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        values[key] = value
    return [f"{k}={v}" for k, v in values.items()]


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
    body, loaded, targets = report(source, variants, args.seeds, args.targets)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    report_name = args.report_name or f"efficiency-{args.setting}"
    png = args.out_dir / f"{report_name}.png"
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
           if setting.remix_overrides else "")
        + ".\n\n"
    )  # fmt: skip
    out = args.out_dir / f"{report_name}.md"
    out.write_text(header + body)
    print(body)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
