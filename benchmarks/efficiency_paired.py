"""The fine, paired measurement of the efficiency benchmark (``--paired-control``): the
statistics least sensitive to where the evaluations fall, compared seed by seed.

* rollouts to T, interpolated: the held-out curve smoothed as the two-evaluation mean of
  docs/design.md §7 (the mean of evaluations i−1 and i, placed at their mid-point), and
  the rollouts where it first reaches T read by linear interpolation between two
  smoothed points, not at the first grid point past T;
* AUC: the mean held-out accuracy over the budget, the trapezoid rule on the rollout axis
  from 0 (the base model's evaluation) to the budget (the last evaluation held flat);
* final: the mean of the last 3 evaluations at or before the budget (as the other two,
  nothing past the budget counts);
* paired: per seed (same seed = same prompts and the same base) the difference and the
  ratio of an arm to the control, and their mean ± the standard error over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from efficiency_tables import VariantRuns, mean_std
from efficiency_variants import VARIANTS

from remix_rft.apps.compare import eval_rows, plateau_accuracy
from remix_rft.apps.runs import EVAL_KEY, RunRecord

Row = dict[str, Any]
MIN_SEEDS = 3  # below it a standard error of the paired difference means little


def eval_points(rows: Sequence[Row]) -> list[tuple[float, float]]:
    """``(rollouts, accuracy)`` of every evaluation, in order."""
    return [(float(r.get("rollouts", 0)), float(r[EVAL_KEY])) for r in eval_rows(rows)]


def interpolated_rollouts_to(rows: Sequence[Row], target: float) -> float | None:
    """Rollouts at which the two-evaluation mean first reaches ``target``, interpolated
    linearly between consecutive smoothed points; None if it never does."""
    points = eval_points(rows)
    pairs = zip(points, points[1:], strict=False)
    smooth = [((x0 + x1) / 2, (a0 + a1) / 2) for (x0, a0), (x1, a1) in pairs]
    for i, (x, a) in enumerate(smooth):
        if a < target - 1e-12:
            continue
        if i == 0:
            return x
        (xp, ap) = smooth[i - 1]
        return xp + (target - ap) / (a - ap) * (x - xp)
    return None


def auc(rows: Sequence[Row], budget: float) -> float | None:
    """Mean held-out accuracy over ``[0, budget]`` rollouts (trapezoid rule; the last
    evaluation held to the budget, evaluations past it cut off)."""
    points = [(x, a) for x, a in eval_points(rows) if x <= budget]
    if not points or points[0][0] > 0:
        return None
    if points[-1][0] < budget:
        points.append((budget, points[-1][1]))
    pairs = zip(points, points[1:], strict=False)
    area = sum((x1 - x0) * (a0 + a1) / 2 for (x0, a0), (x1, a1) in pairs)
    return area / budget


@dataclass(frozen=True)
class Paired:
    """An arm against the control over the seeds both finished."""

    seeds: int
    diff_mean: float
    diff_se: float
    ratio_mean: float
    ratio_se: float

    def cells(self, spec: str) -> tuple[str, str]:
        return (
            f"{format(self.diff_mean, spec)} ± {format(self.diff_se, spec)}",
            f"{self.ratio_mean:.3f} ± {self.ratio_se:.3f}",
        )

    @property
    def z(self) -> float:
        """The paired difference in standard errors (nan below two seeds)."""
        if self.seeds < 2 or math.isnan(self.diff_se):
            return math.nan
        if self.diff_se == 0:
            return math.copysign(math.inf, self.diff_mean) if self.diff_mean else 0.0
        return self.diff_mean / self.diff_se


def se(values: Sequence[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def paired(mine: dict[int, float], control: dict[int, float]) -> Paired | None:
    seeds = sorted(set(mine) & set(control))
    if not seeds:
        return None
    diffs = [mine[s] - control[s] for s in seeds]
    ratios = [mine[s] / control[s] for s in seeds]
    return Paired(len(seeds), statistics.mean(diffs), se(diffs), statistics.mean(ratios),
                  se(ratios))  # fmt: skip


def per_seed(vr: VariantRuns, stat: Callable[[RunRecord], float | None]) -> dict[int, float]:
    return {seed_of(r): v for r in vr.runs if (v := stat(r)) is not None}


def seed_of(run: RunRecord) -> int:
    return int(run.config["seed"])


def within(rows: Sequence[Row], budget: float) -> list[Row]:
    """The rows up to ``budget`` rollouts: a run that counts every generated response
    (dynamic sampling) can sample past the budget in the iterations the others take."""
    return [r for r in rows if float(r.get("rollouts", 0)) <= budget]


def statistics_of(target: float, budget: int) -> dict[str, Callable[[RunRecord], float | None]]:
    """The per-run statistics compared, all within the budget: rollouts to T
    (interpolated), AUC, final accuracy (the last 3 evaluations at or before the budget)."""
    return {
        "to_t": lambda r: interpolated_rollouts_to(within(r.rows, budget), target),
        "auc": lambda r: auc(r.rows, budget),
        "final": lambda r: plateau_accuracy(within(r.rows, budget)),
    }


def compare(
    vr: VariantRuns, control: VariantRuns, target: float, budget: int
) -> tuple[dict[str, dict[int, float]], dict[str, Paired | None]]:
    """Per statistic: the arm's per-seed values, and the paired comparison to ``control``."""
    stats = statistics_of(target, budget)
    mine = {k: per_seed(vr, f) for k, f in stats.items()}
    return mine, {k: paired(mine[k], per_seed(control, f)) for k, f in stats.items()}


def paired_table(
    loaded: dict[str, VariantRuns], control: str, target: float, budget: int
) -> list[str]:
    """Per arm: rollouts to ``target`` (interpolated) and AUC, each with the paired
    difference and ratio to ``control`` (mean ± standard error over the common seeds),
    and the final accuracy with its paired difference."""
    lines = [
        f"| variant | seeds | reaching T | rollouts to T | Δ vs {control} | ratio | "
        f"AUC | Δ AUC | AUC ratio | final (last 3 evals ≤ budget) | Δ final |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, vr in loaded.items():
        if not vr.runs:
            continue
        mine, pair = compare(vr, loaded[control], target, budget)
        own = name == control
        t_cells = pair["to_t"].cells(",.0f") if pair["to_t"] and not own else ("—", "—")
        a_cells = pair["auc"].cells(".4f") if pair["auc"] and not own else ("—", "—")
        f_cell = pair["final"].cells(".4f")[0] if pair["final"] and not own else "—"
        lines.append(
            f"| {name} | {len(vr.runs)} | {len(mine['to_t'])}/{len(vr.runs)} | "
            f"{mean_std(list(mine['to_t'].values()), ',.0f')} | {t_cells[0]} | {t_cells[1]} | "
            f"{mean_std(list(mine['auc'].values()), '.4f')} | {a_cells[0]} | {a_cells[1]} | "
            f"{mean_std(list(mine['final'].values()), '.4f')} | {f_cell} |"
        )
    return lines


def verdicts(loaded: dict[str, VariantRuns], control: str, target: float, budget: int) -> list[str]:
    """Which arms beat the control by more than two standard errors of the paired difference
    (fewer rollouts to T, or a larger AUC) with a final accuracy ≥ the control's − 0.005."""
    out = []
    for name, vr in loaded.items():
        if name == control or not vr.runs or VARIANTS[name].role not in ("remix", "filter"):
            continue
        _, pair = compare(vr, loaded[control], target, budget)
        to_t, area, final = pair["to_t"], pair["auc"], pair["final"]
        if final is None:
            continue
        faster = to_t is not None and to_t.z < -2
        larger = area is not None and area.z > 2
        win = (faster or larger) and final.diff_mean >= -0.005
        verdict = "**beats the control**" if win else "no win"
        if final.seeds < MIN_SEEDS:
            verdict = f"too few paired seeds for a verdict (< {MIN_SEEDS})"
        z_t = f"{to_t.z:+.1f}" if to_t else "—"
        z_a = f"{area.z:+.1f}" if area else "—"
        out.append(
            f"- `{name}` ({final.seeds} paired seeds): {verdict} (paired difference / its SE: "
            f"rollouts to T {z_t}, AUC {z_a}; Δ final {final.diff_mean:+.4f})"
        )
    return out


SIGNAL_KEYS = (
    ("groups/uniform_frac", "uniform groups, fresh"),
    ("fresh/informative_frac", "informative, fresh (generated)"),
    ("batch/informative_frac", "informative, training batch"),
    ("replay/informative_frac", "informative, replayed"),
    ("offpolicy/fraction", "replayed share of the batch"),
    ("replay/reuse_mean", "times replayed (mean)"),
    ("replay/reuse_max", "times replayed (max)"),
    ("replay/age_1", "age 1 share"),
)


def signal_table(loaded: dict[str, VariantRuns], until_rollouts: float) -> list[str]:
    """What the strategies did, over the iterations up to ``until_rollouts`` (the reuse
    phase): per-iteration means, then mean ± std over seeds."""
    lines = ["| variant | " + " | ".join(label for _, label in SIGNAL_KEYS) + " |",
             "|---|" + "---|" * len(SIGNAL_KEYS)]  # fmt: skip
    early = lambda row: float(row.get("rollouts", 0)) <= until_rollouts  # noqa: E731
    for name, vr in loaded.items():
        if not vr.runs:
            continue
        cells = [mean_std(vr.mean_of(key, early), ".3f") for key, _ in SIGNAL_KEYS]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def linear_curve(rows: Sequence[Row], grid: Sequence[float]) -> list[float]:
    """Held-out accuracy on ``grid``, linear between evaluations (held after the last)."""
    points = eval_points(rows)
    xs, accs = [x for x, _ in points], [a for _, a in points]
    return [float(_interp(x, xs, accs)) for x in grid]


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    if not xs or x < xs[0]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True),
                                  strict=False):  # fmt: skip
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return ys[-1]


def plot_paired(loaded: dict[str, VariantRuns], control: str, budget: int,
                targets: Sequence[float], path: Any, title: str) -> None:  # fmt: skip
    """Left: mean accuracy per arm (linear between evaluations) ± its standard error;
    right: the paired difference to ``control`` per rollout count, mean ± standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [budget * i / 256 for i in range(257)]
    ctrl = {seed_of(r): linear_curve(r.rows, grid) for r in loaded[control].runs}
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    for name, vr in loaded.items():
        if not vr.runs:
            continue
        curves = {seed_of(r): linear_curve(r.rows, grid) for r in vr.runs}
        color = plt.get_cmap("tab10")(list(loaded).index(name) % 10)
        _band(left, grid, list(curves.values()), color, f"{name} (n={len(curves)})")
        diffs = [[a - b for a, b in zip(curves[s], ctrl[s], strict=True)]
                 for s in curves if s in ctrl]  # fmt: skip
        if name != control and diffs:
            _band(right, grid, diffs, color, f"{name} − {control} (n={len(diffs)} seeds)")
    for t in targets:
        left.axhline(t, color="grey", lw=0.8, ls=":")
    right.axhline(0.0, color="black", lw=0.8)
    left.set_ylabel("held-out greedy accuracy (500 problems)")
    right.set_ylabel(f"paired difference to {control}")
    for ax, panel in ((left, "mean ± SE"), (right, "paired difference, mean ± SE")):
        ax.set_xlabel("rollouts (sampled responses)")
        ax.set_title(f"{title}: {panel}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _band(
    ax: Any, grid: Sequence[float], curves: list[list[float]], color: Any, label: str
) -> None:
    mean = [statistics.fmean(c[i] for c in curves) for i in range(len(grid))]
    err = [se([c[i] for c in curves]) if len(curves) > 1 else 0.0 for i in range(len(grid))]
    ax.plot(grid, mean, color=color, lw=1.4, label=label)
    ax.fill_between(grid, [m - e for m, e in zip(mean, err, strict=True)],
                    [m + e for m, e in zip(mean, err, strict=True)], color=color, alpha=0.15)  # fmt: skip
