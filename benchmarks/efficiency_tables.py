"""The efficiency benchmark's analysis: finished runs (from their directories or the
archive), rollouts and seconds to a target, the tables and the plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import run_archive
from efficiency_variants import (
    BUDGET_SHARES,
    VARIANTS,
    Setting,
    default_config,
    expected_config,
    run_dir_for,
)

from remix_rft.apps.compare import eval_rows, load_run, plateau_accuracy, rollouts_to_target
from remix_rft.apps.runs import EVAL_KEY, RunLoadError, RunRecord


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

    def plateaus(self, budget: float = math.inf) -> list[float]:
        """Final accuracies: the last 3 evaluations at or before ``budget`` rollouts (a run
        counting every generated response can sample past it in the same iterations)."""
        return [
            p for r in self.runs
            if (p := plateau_accuracy([x for x in r.rows if x.get("rollouts", 0) <= budget]))
            is not None
        ]  # fmt: skip

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


def archived_run(
    setting_name: str, setting: Setting, variant: str, seed: int, rollout_grid: bool
) -> RunRecord | None:
    path = run_archive.archive_path(setting_name, variant, seed)
    expected = expected_config(setting, variant, seed, rollout_grid)
    return run_archive.load(path, expected, default_config())


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
    lines = [f"| variant | {heads} | final (last 3 evals ≤ budget) |",
             "|---|" + "---|" * (len(BUDGET_SHARES) + 1)]  # fmt: skip
    for name, vr in loaded.items():
        if not vr.runs:
            continue
        cells = []
        for share in BUDGET_SHARES:
            accs = [a for r in vr.runs if (a := accuracy_at(r.rows, budget * share)) is not None]
            cells.append(mean_std(accs))
        lines.append(f"| {name} | {' | '.join(cells)} | {mean_std(vr.plateaus(budget))} |")
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
        if ax.get_legend_handles_labels()[0]:  # a panel with no variant of its roles stays bare
            ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out greedy accuracy (500 problems)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
