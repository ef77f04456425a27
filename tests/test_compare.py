"""`remix compare`: loading run directories, the rollouts-to-target rule, table, JSON, plot."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from remix_rft.apps import compare
from remix_rft.apps.compare import (
    MISSING,
    RunLoadError,
    load_run,
    plateau_accuracy,
    rollouts_to_target,
    summarize,
)

ROLLOUTS_PER_STEP = 64


def make_rows(accs: dict[int, float], steps: int, length0: float = 100.0) -> list[dict]:
    """Metric rows for steps 0..steps; evaluations at the steps in ``accs``."""
    rows = []
    for step in range(steps + 1):
        row = {
            "step": step,
            "rollouts": step * ROLLOUTS_PER_STEP,
            "tokens": step * ROLLOUTS_PER_STEP * 50,
            "reward/mean": 0.5,
            "response_length/mean": length0 - step,
            "reflection/rate": 0.1,
            "time/step_s": 2.0,
            "time/total_s": 10.0 * step + 1.0,
        }
        if step in accs:
            row["eval/accuracy"] = accs[step]
        rows.append(row)
    return rows


def write_run(
    root: Path,
    name: str,
    rows: list[dict],
    algorithm: str = "grpo",
    done: bool = True,
    extra_lines: dict[int, str] | None = None,
    task: str = "math",
) -> Path:
    """A run directory; ``extra_lines`` inserts raw text before the given row index."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        f"name: {name}\nalgorithm: {algorithm}\nseed: 0\ntask:\n  name: {task}\n"
    )
    lines = []
    for i, row in enumerate(rows):
        if extra_lines and i in extra_lines:
            lines.append(extra_lines[i])
        lines.append(json.dumps(row))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if done:
        evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
        summary = {
            "algorithm": algorithm,
            "final_eval_accuracy": evals[-1] if evals else None,
            "base_eval_accuracy": evals[0] if evals else None,
            "rollouts": rows[-1]["rollouts"],
            "steps": rows[-1]["step"],
            "wall_time_s": rows[-1]["time/total_s"] + 5.0,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="remix")
    compare.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the rule


def test_two_consecutive_evaluations_rule():
    # evals every 2 steps: 0.2, 0.8 (a lucky spike), 0.5, 0.7, 0.7
    rows = make_rows({0: 0.2, 2: 0.8, 4: 0.5, 6: 0.7, 8: 0.7}, steps=8)
    # T = 0.7: a single eval of 0.8 is not enough — mean(0.2, 0.8) = 0.5,
    # mean(0.8, 0.5) = 0.65, mean(0.5, 0.7) = 0.6, mean(0.7, 0.7) = 0.7 -> reached at step 8
    hit = rollouts_to_target(rows, 0.7)
    assert hit is not None
    assert hit == (8 * ROLLOUTS_PER_STEP, 81.0, 8)
    assert hit.rollouts == 8 * ROLLOUTS_PER_STEP and hit.wall_s == 81.0 and hit.step == 8
    # T = 0.65: mean(0.8, 0.5) = 0.65 >= T at the eval of step 4 (values read at eval i)
    assert rollouts_to_target(rows, 0.65) == (4 * ROLLOUTS_PER_STEP, 41.0, 4)
    # T = 0.5: mean(0.2, 0.8) = 0.5 at step 2; the first eval alone can never reach
    assert rollouts_to_target(rows, 0.5) == (2 * ROLLOUTS_PER_STEP, 21.0, 2)
    assert rollouts_to_target(make_rows({0: 0.99}, steps=3), 0.1) is None


def test_never_reached_is_none():
    rows = make_rows({0: 0.1, 5: 0.3, 10: 0.35}, steps=10)
    assert rollouts_to_target(rows, 0.5) is None
    assert rollouts_to_target([], 0.5) is None


def test_plateau_accuracy():
    rows = make_rows({0: 0.1, 2: 0.4, 4: 0.6, 6: 0.5, 8: 0.7}, steps=8)
    assert plateau_accuracy(rows) == pytest.approx((0.6 + 0.5 + 0.7) / 3)
    assert plateau_accuracy(rows, last=1) == pytest.approx(0.7)
    assert plateau_accuracy(make_rows({0: 0.2, 4: 0.4}, steps=4)) == pytest.approx(0.3)
    assert plateau_accuracy(make_rows({}, steps=4)) is None


def test_resumed_run_duplicate_steps_later_line_wins():
    rows = make_rows({0: 0.2, 2: 0.4, 4: 0.6}, steps=4)
    # the run crashed after step 4, resumed from the step-2 checkpoint and re-logged 3..4
    resumed = rows + [dict(rows[3], rollouts=999), dict(rows[4], **{"eval/accuracy": 0.9})]
    assert rollouts_to_target(resumed, 0.65)[2] == 4
    assert plateau_accuracy(resumed) == pytest.approx((0.2 + 0.4 + 0.9) / 3)


# ----------------------------------------------------------------------------- loading


def test_load_run_and_summarize(tmp_path):
    rows = make_rows({0: 0.2, 5: 0.5, 10: 0.6}, steps=10)
    rows[3]["reincarnated"] = True
    rows[4]["kl/base"] = float("nan")
    run = load_run(write_run(tmp_path, "remix", rows, algorithm="remix-grpo"))
    assert run.name == "remix" and run.algorithm == "remix-grpo"
    assert not run.running and run.status == "done"
    assert len(run.rows) == 11

    s = summarize(run, 0.55)
    assert s["run"] == "remix" and s["algorithm"] == "remix-grpo" and s["status"] == "done"
    assert s["base_accuracy"] == 0.2
    assert s["final_accuracy"] == 0.6
    assert s["last3_accuracy"] == pytest.approx((0.2 + 0.5 + 0.6) / 3)
    assert s["best_accuracy"] == 0.6
    assert s["rollouts_to_target"] == 10 * ROLLOUTS_PER_STEP
    assert s["wall_s_to_target"] == 101.0
    assert s["total_rollouts"] == 10 * ROLLOUTS_PER_STEP
    assert s["steps"] == 10
    assert s["mean_response_length"] == pytest.approx(95.0)
    assert s["reflection_rate"] == pytest.approx(0.1)
    assert summarize(run, 0.9)["rollouts_to_target"] is None
    assert summarize(run, None)["wall_s_to_target"] is None


def test_algorithm_from_config_when_no_summary(tmp_path):
    rows = make_rows({0: 0.2}, steps=2)
    run = load_run(write_run(tmp_path, "r", rows, algorithm="ppo", done=False))
    assert run.algorithm == "ppo"


def test_corrupt_and_truncated_lines_skipped_with_warning(tmp_path, caplog):
    rows = make_rows({0: 0.2, 2: 0.4, 4: 0.6}, steps=4)
    run_dir = write_run(tmp_path, "r", rows, extra_lines={2: '{"step": 2, "rollo'})
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write("[1, 2]\n")  # valid JSON, not an object
        fh.write('{"step": 5, "rollouts": 3')  # truncated last line, no newline
    with caplog.at_level(logging.WARNING, logger="remix_rft.apps.compare"):
        run = load_run(run_dir)
    assert len(run.rows) == 5
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 3
    metrics = str(run_dir / "metrics.jsonl")
    assert f"{metrics}:3:" in messages[0]  # the inserted corrupt line is line 3
    assert f"{metrics}:7:" in messages[1]
    assert f"{metrics}:8:" in messages[2]
    assert rollouts_to_target(run.rows, 0.5) == (4 * ROLLOUTS_PER_STEP, 41.0, 4)


def test_still_running_run(tmp_path, capsys):
    base = write_run(tmp_path, "grpo", make_rows({0: 0.2, 5: 0.5, 10: 0.6}, steps=10))
    live = write_run(
        tmp_path,
        "remix",
        make_rows({0: 0.2, 2: 0.5, 4: 0.65}, steps=5),
        algorithm="remix-grpo",
        done=False,
    )
    run = load_run(live)
    assert run.running and run.summary is None and run.status == "running"
    s = summarize(run, 0.55)
    assert s["status"] == "running"
    assert s["total_rollouts"] == 5 * ROLLOUTS_PER_STEP and s["steps"] == 5
    assert s["wall_time_s"] == 51.0

    assert compare.run(parse(["compare", str(base), str(live), "--target", "0.55"])) == 0
    out = capsys.readouterr().out
    assert "remix *" in out and "running" in out and "still running" in out


def test_missing_metrics_is_an_error_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunLoadError, match="metrics.jsonl"):
        load_run(tmp_path / "empty")
    with pytest.raises(RunLoadError, match="nope"):
        load_run(tmp_path / "nope")


# ----------------------------------------------------------------------------- CLI


def test_cli_table_default_target_and_never_reached(tmp_path, capsys):
    base = write_run(tmp_path, "grpo", make_rows({0: 0.2, 4: 0.4, 8: 0.6, 12: 0.6}, steps=12))
    fast = write_run(
        tmp_path, "remix", make_rows({0: 0.2, 2: 0.6, 4: 0.7}, steps=4), algorithm="remix-grpo"
    )
    never = write_run(tmp_path, "bad", make_rows({0: 0.2, 4: 0.25}, steps=4), algorithm="ppo")
    args = parse(["compare", str(base), str(fast), str(never)])
    assert args.func is compare.run
    assert args.func(args) == 0
    out = capsys.readouterr().out
    # default target: plateau of the first run, announced
    assert "target T = 0.533" in out and "plateau accuracy of grpo" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("run "))
    table = lines[lines.index(header) :]
    assert len({len(line) for line in table[:2]}) == 1  # header and rule aligned
    bad_line = next(line for line in table if line.startswith("bad "))
    assert MISSING in bad_line
    remix_line = next(line for line in table if line.startswith("remix "))
    assert "0.33x" in remix_line  # 256 rollouts vs the baseline's 768


def test_reflection_column_only_where_the_task_can_produce_it(tmp_path):
    """The embedded arithmetic task never reflects: its column would be a column of zeros."""
    rows = make_rows({0: 0.2, 4: 0.5}, steps=4)
    math_run = load_run(write_run(tmp_path, "math", rows))
    arith = load_run(write_run(tmp_path, "arith", rows, task="arithmetic"))
    assert summarize(arith, None)["reflection_rate"] is None
    assert summarize(math_run, None)["reflection_rate"] == pytest.approx(0.1)

    def header(runs):
        return compare.format_table([summarize(r, 0.4) for r in runs]).splitlines()[0].split()

    assert "reflect" not in header([arith])
    assert "reflect" in header([arith, math_run]) and "last" in header([arith])
    mixed = compare.format_table([summarize(r, 0.4) for r in (arith, math_run)]).splitlines()
    assert mixed[2].split()[-1] == MISSING and mixed[3].split()[-1] == "0.100"


def test_cli_json(tmp_path, capsys):
    base = write_run(tmp_path, "grpo", make_rows({0: 0.2, 4: 0.4, 8: 0.6}, steps=8))
    never = write_run(tmp_path, "bad", make_rows({0: 0.2, 4: 0.25}, steps=4), done=False)
    assert compare.run(parse(["compare", str(base), str(never), "--json", "--target", "0.5"])) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert [d["run"] for d in data] == ["grpo", "bad"]
    assert data[0]["rollouts_to_target"] == 8 * ROLLOUTS_PER_STEP
    assert data[0]["target"] == 0.5
    assert data[1]["rollouts_to_target"] is None and data[1]["status"] == "running"
    assert "target T = 0.500" in captured.err


def test_cli_same_directory_names_disambiguated(tmp_path, capsys):
    a = write_run(tmp_path / "seed0", "run", make_rows({0: 0.2, 4: 0.4}, steps=4))
    b = write_run(tmp_path / "seed1", "run", make_rows({0: 0.2, 4: 0.5}, steps=4))
    assert compare.run(parse(["compare", str(a), str(b), "--json"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["run"] for d in data] == [str(a), str(b)]


def test_cli_bad_run_dir_exit_2(tmp_path, capsys):
    good = write_run(tmp_path, "grpo", make_rows({0: 0.2, 4: 0.4}, steps=4))
    missing = tmp_path / "does-not-exist"
    assert compare.run(parse(["compare", str(good), str(missing)])) == 2
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "nometrics").mkdir()
    assert compare.run(parse(["compare", str(tmp_path / "nometrics")])) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_cli_rejects_bad_target(tmp_path):
    with pytest.raises(SystemExit) as exc:
        parse(["compare", str(tmp_path), "--target", "1.5"])
    assert exc.value.code == 2


def test_plot_written(tmp_path, capsys):
    base = write_run(tmp_path, "grpo", make_rows({0: 0.2, 4: 0.4, 8: 0.6}, steps=8))
    live = write_run(
        tmp_path, "remix", make_rows({0: 0.2, 2: 0.6}, steps=3), "remix-grpo", done=False
    )
    out_png = tmp_path / "plots" / "cmp.png"
    assert compare.run(parse(["compare", str(base), str(live), "--plot", str(out_png)])) == 0
    assert out_png.is_file() and out_png.stat().st_size > 1000
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out_png) in capsys.readouterr().out


def test_plot_runs_direct(tmp_path):
    from remix_rft.apps.plots import plot_runs

    run = load_run(write_run(tmp_path, "grpo", make_rows({0: 0.2, 4: 0.4}, steps=4)))
    empty = load_run(write_run(tmp_path, "noeval", make_rows({}, steps=2), done=False))
    path = plot_runs([run, empty], tmp_path / "p.png", target=0.3)
    assert path == tmp_path / "p.png" and path.stat().st_size > 0


def test_both_panels_are_on_rollouts_and_reincarnation_is_marked(tmp_path):
    """The length panel shares the accuracy panel's x-axis (rollouts, not steps: a ReMix
    run's iterations are smaller than GRPO's), and a dotted line marks reincarnation."""
    from remix_rft.apps.plots import reincarnation_rollouts, runs_figure

    grpo = load_run(write_run(tmp_path, "grpo", make_rows({0: 0.2, 4: 0.4}, steps=4)))
    rows = make_rows({0: 0.2, 2: 0.5, 4: 0.6}, steps=4)
    rows[3]["reincarnated"] = True  # at step 3: 192 rollouts
    remix = load_run(write_run(tmp_path, "remix", rows, "remix-grpo"))
    assert reincarnation_rollouts(remix) == 3 * ROLLOUTS_PER_STEP
    assert reincarnation_rollouts(grpo) is None
    ax_acc, ax_len = runs_figure([grpo, remix], target=0.5).axes
    assert "rollouts" in ax_len.get_xlabel() and "vs rollouts" in ax_len.get_title()
    length_lines = [ln for ln in ax_len.lines if ln.get_linestyle() == "-"]
    assert list(length_lines[1].get_xdata()) == [r["rollouts"] for r in rows]
    for ax in (ax_acc, ax_len):
        marks = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [192, 192]
        assert marks[0].get_color() == length_lines[1].get_color()  # the run's own colour
    assert "remix reincarnation" in ax_acc.get_legend_handles_labels()[1]
