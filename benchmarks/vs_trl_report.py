"""The report of ``vs_trl.py``: runs summarised per method, the table, the verdicts (speed
and wall-clock to the target), the markdown file and the ``--json`` dump."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from vs_trl_runs import EVAL_KEY, LABELS, METHODS, WALL_KEY, Row, RunResult

from remix_rft.apps.compare import plateau_accuracy, rollouts_to_target


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _fmt(mean: float | None, std: float | None, digits: int, n: int) -> str:
    if mean is None:
        return "—"
    text = f"{mean:.{digits}f}"
    if n > 1 and std is not None:
        text += f" ± {std:.{digits}f}"
    return text


def _mean_or_dash(values: Sequence[float]) -> str:
    vals = [v for v in values if not math.isnan(v)]
    return f"{statistics.fmean(vals):.2f}" if vals else "—"


def wall_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows with ``time/total_s`` = the wall-clock since training began, evaluations
    included: the fair clock for an asynchronous run, whose producer keeps generating while
    the learner evaluates."""
    return [{**r, "time/total_s": r.get(WALL_KEY, math.nan)} for r in rows]


def full_wall_to_target(run: RunResult, target: float | None) -> float | None:
    hit = rollouts_to_target(wall_rows(run.rows), target) if target is not None else None
    return None if hit is None or hit.wall_s is None or math.isnan(hit.wall_s) else hit.wall_s


def summarize(results: Sequence[RunResult], target: float | None) -> list[dict[str, Any]]:
    table = []
    for method in METHODS:
        runs = [r for r in results if r.method == method]
        if not runs:
            continue
        per_run_s = [statistics.fmean(r.step_s) for r in runs if r.step_s]
        all_steps = [s for r in runs for s in r.step_s]
        gen = [g for r in runs for g in r.gen_s if not math.isnan(g)]
        hits = [rollouts_to_target(r.rows, target) if target is not None else None for r in runs]
        reached = [h for h in hits if h is not None]
        finals = [r.evals()[-1][EVAL_KEY] for r in runs if r.evals()]
        bases = [r.evals()[0][EVAL_KEY] for r in runs if r.evals()]
        rewards = [statistics.fmean(r.rewards[-5:]) for r in runs if r.rewards]
        n = len(runs)
        table.append(
            {
                "method": LABELS[method],
                "runs": n,
                "rollouts_per_iter": runs[0].rollouts_per_iter,
                "s_per_iter": _mean_std(per_run_s),
                "s_per_iter_median": statistics.median(all_steps) if all_steps else None,
                "gen_s_per_iter": statistics.fmean(gen) if gen else None,
                "reached": f"{len(reached)}/{n}",
                "rollouts_to_target": _mean_std([float(h.rollouts or 0) for h in reached]),
                "wall_to_target_s": _mean_std([float(h.wall_s or 0.0) for h in reached]),
                "full_wall_to_target_s": _mean_std(
                    [w for r in runs if (w := full_wall_to_target(r, target)) is not None]
                ),
                "base_acc": _mean_std(bases),
                "final_acc": _mean_std(finals),
                "train_reward_last5": _mean_std(rewards),
            }
        )
    return table


def format_table(table: Sequence[dict[str, Any]]) -> str:
    header = [
        "method", "runs", "rollouts/iter", "s/iter (mean)", "s/iter (median)", "gen s/iter",
        "reached T", "rollouts→T", "train wall→T (s)", "wall→T incl. eval (s)", "base acc",
        "final acc",
        "train reward (last 5)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        n = row["runs"]
        med, gen = row["s_per_iter_median"], row["gen_s_per_iter"]
        cells = [
            row["method"],
            str(n),
            str(row["rollouts_per_iter"]),
            _fmt(*row["s_per_iter"], 2, n),
            "—" if med is None else f"{med:.2f}",
            "—" if gen is None else f"{gen:.2f}",
            row["reached"],
            _fmt(*row["rollouts_to_target"], 0, n),
            _fmt(*row["wall_to_target_s"], 0, n),
            _fmt(*row["full_wall_to_target_s"], 0, n),
            _fmt(*row["base_acc"], 3, n),
            _fmt(*row["final_acc"], 3, n),
            _fmt(*row["train_reward_last5"], 3, n),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_verdict(table: Sequence[dict[str, Any]]) -> str | None:
    """Our GRPO iteration against TRL's: "comparable" when the means differ by less than
    the larger spread over runs."""
    by = {row["method"]: row for row in table}
    trl, ours = by.get(LABELS["trl"]), by.get(LABELS["ours"])
    if not trl or not ours or trl["s_per_iter"][0] is None or ours["s_per_iter"][0] is None:
        return None
    (t, t_std), (o, o_std) = trl["s_per_iter"], ours["s_per_iter"]
    spread = max(t_std or 0.0, o_std or 0.0)
    if abs(o - t) <= spread:
        verdict = "comparable to"
    else:
        verdict = "faster than" if o < t else "SLOWER than"
    return (
        f"Our GRPO iteration ({o:.2f} s) is {verdict} TRL's ({t:.2f} s) on the same settings "
        f"(spread over runs ± {spread:.2f} s): TRL / ours = {t / o:.2f}x (means over "
        f"iterations; medians {trl['s_per_iter_median']:.2f} s vs "
        f"{ours['s_per_iter_median']:.2f} s)."
    )


def wall_verdicts(results: Sequence[RunResult], target: float | None) -> list[str]:
    """ReMix-GRPO's wall-clock to T (sync and async) over TRL's, evaluations included,
    paired by seed and round (the two ran back to back, so both saw the same load)."""
    trl = {(r.seed, r.round): r for r in results if r.method == "trl"}
    lines = []
    for method in ("trl-remix", "remix", "remix-async"):
        ratios = []
        for r in results:
            other = trl.get((r.seed, r.round))
            if r.method != method or other is None:
                continue
            mine, theirs = full_wall_to_target(r, target), full_wall_to_target(other, target)
            if mine is not None and theirs:
                ratios.append(mine / theirs)
        if not ratios:
            continue
        mean, std = _mean_std(ratios)
        assert mean is not None and std is not None
        lines.append(
            f"{LABELS[method]}'s wall-clock to T (evaluations included) is {mean:.2f} ± "
            f"{std:.2f}x TRL GRPOTrainer's ({len(ratios)} paired runs: "
            + ", ".join(f"{x:.2f}" for x in ratios)
            + ")."
        )
    return lines


def per_seed_lines(results: Sequence[RunResult], target: float | None) -> list[str]:
    """Rollouts to T (docs/design.md §5) and final accuracy of every run, by seed: the same
    seed gives every method the same model and task, so differences are read per seed."""
    if target is None:
        return []
    lines = ["Per seed (round 0), rollouts→T / final accuracy (— : T not reached):", ""]
    for method in METHODS:
        runs = sorted((r for r in results if r.method == method and r.round == 0),
                      key=lambda r: r.seed)  # fmt: skip
        if not runs:
            continue
        cells = []
        for r in runs:
            hit = rollouts_to_target(r.rows, target)
            final = r.evals()[-1][EVAL_KEY] if r.evals() else math.nan
            cells.append(f"seed {r.seed}: {hit.rollouts if hit else '—'} / {final:.3f}")
        lines.append(f"- {LABELS[method]}: " + "; ".join(cells))
    return lines


def describe_model(source: str, snapshot: Path) -> str:
    weights = sorted(snapshot.glob("*.safetensors"))
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in weights)).hexdigest()[:12]
    text = f"{source} (weights sha256 {digest}"
    try:
        info = json.loads((snapshot / "build_info.json").read_text(encoding="utf-8"))
        text += f", {info.get('parameters', '?')} parameters"
    except (OSError, ValueError):
        pass
    return text + ")"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"torch {torch.__version__}"]
    for mod in ("transformers", "trl", "accelerate"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            versions.append(f"{mod} not installed")
    return (
        f"{cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}; "
        + ", ".join(versions)
    )


# What the table's columns measure, and on which clock.
COLUMNS_NOTE = (
    "Columns: s/iter is the time of one iteration (generate → score → loss → one optimizer "
    "update for GRPO; ReMix also recomputes log-probs of reused samples and takes its own "
    "number of updates), evaluation and checkpointing excluded; gen s/iter is its "
    "generation share. rollouts→T and train wall→T are read at the first evaluation "
    "where the mean of two consecutive evaluations is ≥ T (docs/design.md §5); train wall is "
    "the cumulative iteration time (evaluation excluded) so the three are comparable. "
    "wall→T incl. eval is the wall-clock since training began, evaluations included: the "
    "fair clock for the asynchronous run, whose producer generates while the learner "
    "evaluates (and whose producer start-up it counts); its s/iter is the learner's "
    "iteration, waiting for data included. Means ± std are over runs that reached T."
)

# Why one TRL global step is one of our iterations, and what still differs.
ITERATION_NOTE = (
    "What counts as an iteration: TRL with `per_device_train_batch_size=128`, "
    "`steps_per_generation=1`, `gradient_accumulation_steps=1`, `num_iterations=1` "
    "generates 16 prompts x 8 completions and takes one optimizer step per global step, "
    "which is one of our iterations. Because its samples are exactly on-policy, TRL skips "
    "the no-grad forward pass that recomputes log π_old (`old_per_token_logps = None`) "
    "and uses the detached current log-probs; so does our trainer whenever an iteration "
    "takes a single update (`Trainer.single_update`), reused samples included. "
    "TRL computes token entropies in "
    "its loss forward; we do not. Both sample from the full distribution (TRL "
    "`top_k=0`, ours `top_k=None`). Differences that remain: TRL's dataloader order vs "
    "our prompt sampler, and TRL's per-step logging."
)


def write_markdown(
    path: Path,
    table: Sequence[dict[str, Any]],
    results: Sequence[RunResult],
    target: float | None,
    target_source: str,
    args: argparse.Namespace,
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    """The report as markdown: how it was run and on what, the table, the verdicts, the runs
    per seed and what the columns mean."""
    verdict = speed_verdict(table)
    order = ", ".join(f"{LABELS[r.method]} (seed {r.seed}, round {r.round})" for r in results)
    lines = [
        "# TRL GRPOTrainer vs our GRPO and ReMix-GRPO, sync and async (embedded model and task)",
        "",
        f"Command: `{shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}`",
        "",
        f"Machine: {machine()}; torch threads per run: "
        f"{sorted({r.threads for r in results})}; load average (1/5/15 min) at start "
        f"{'/'.join(f'{x:.1f}' for x in loads[0])}, at end {'/'.join(f'{x:.1f}' for x in loads[1])}"
        " (the machine is shared: other processes' load inflates all timings).",
        "",
        f"Model: {getattr(args, 'model_desc', args.model)}.",
        "",
        f"Settings: {args.steps} iterations, seeds {args.seeds}, {args.rounds} round(s); "
        f"evaluation every {args.eval_every} iterations on the first {args.eval_problems} "
        "held-out problems (greedy pass@1). Run order: " + order + ".",
        "",
        f"Target T = {target:.3f} ({target_source})." if target is not None else "No target.",
        "",
        *([args.merge_note, ""] if getattr(args, "merge_note", None) else []),
        format_table(table),
        "",
    ]
    if verdict:
        lines += [verdict, ""]
    for line in wall_verdicts(results, target):
        lines += [line, ""]
    lines += [*per_seed_lines(results, target), ""]
    lines += [
        COLUMNS_NOTE,
        "",
        ITERATION_NOTE,
        "",
        "Per-run iteration times (s, mean / min / max):",
        "",
    ]
    lines += per_run_lines(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def per_run_lines(results: Sequence[RunResult]) -> list[str]:
    """One line per run: its iteration times (mean / min / max), generation share, no-grad
    log-prob pass, wall-clock and evaluation time."""
    lines = []
    for r in results:
        if r.step_s:
            lines.append(
                f"- {LABELS[r.method]} seed {r.seed} round {r.round}: "
                f"{statistics.fmean(r.step_s):.2f} / {min(r.step_s):.2f} / {max(r.step_s):.2f}"
                f" over {len(r.step_s)} iterations; generation {_mean_or_dash(r.gen_s)} s/iter"
                + (
                    f", no-grad log-prob pass {_mean_or_dash(r.precompute_s)} s/iter"
                    if r.precompute_s
                    else ""
                )
                + f"; run wall-clock {r.run_s:.0f} s incl. {r.eval_s:.0f} s evaluation"
                + (f" ({r.notes})" if r.notes else "")
            )
    return lines


def report(
    args: argparse.Namespace,
    methods: list[str],
    results: list[RunResult],
    loads: tuple[tuple[float, ...], tuple[float, ...]],
) -> int:
    """Print and write the table of ``results``."""
    target, source = args.target, "--target"
    if target is None:
        ref = "ours" if "ours" in methods else methods[0]
        plateaus = [plateau_accuracy(r.rows) for r in results if r.method == ref]
        plateaus = [p for p in plateaus if p is not None]
        if plateaus:
            target = statistics.fmean(plateaus)
            source = f"plateau of {LABELS[ref]}: mean of its last 3 evaluations, over its runs"
    table = summarize(results, target)
    print()
    print(format_table(table))
    for line in (speed_verdict(table), *wall_verdicts(results, target)):
        if line:
            print(line)
    write_markdown(args.out, table, results, target, source, args, loads)
    print(f"wrote {args.out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps([r.__dict__ for r in results], indent=1, default=str), encoding="utf-8"
        )
    return 0
