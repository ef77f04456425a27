"""`remix demo` end to end with very few steps: both runs, the table and the plot."""

import re
from pathlib import Path

from remix_rft.apps.demo import (
    SHIPPED_ROWS,
    SHIPPED_TABLE,
    SHIPPED_TARGET,
    claim_lines,
    control_lines,
    demo_config,
)
from remix_rft.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_demo_trains_both_algorithms_and_writes_table_and_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--rollouts", "64", "--target", "0.2"]
    code = main([*argv, "--report-to", "tensorboard", "--control"])
    printed = capsys.readouterr().out
    assert code == 0
    assert (out / "grpo" / "summary.json").is_file()
    assert (out / "remix-grpo" / "summary.json").is_file()
    assert (out / "grpo-4x8" / "summary.json").is_file()  # --control: the third run
    assert (out / "demo.png").stat().st_size > 1000
    assert "grpo" in printed and "remix-grpo" in printed and "target accuracy T = 0.200" in printed
    # --report-to: both runs' metrics and the plot went to TensorBoard as well
    assert list((out / "grpo" / "tensorboard").glob("events.*"))
    assert list((out / "remix-grpo" / "tensorboard" / "by_rollouts").glob("events.*"))
    assert any(b"plot" in f.read_bytes() for f in (out / "tensorboard").glob("events.*"))
    header = next(line for line in printed.splitlines() if line.startswith("run "))
    assert "last 3" in header and "rollouts→T" in header and "wall→T" in header
    assert "reflect" not in header  # always 0 on the embedded task
    assert "early speed:" in printed and "final accuracy (mean of the last 3" in printed
    assert "fresh-only control: grpo-4x8" in printed and "shipped benchmark, 5 seeds" in printed
    # the printed `remix compare` command shows the same table, at the demo's target, and
    # writes its own plot (demo.png stays the demo's)
    command = next(ln for ln in printed.splitlines() if ln.startswith("compare again: "))
    argv = command.removeprefix("compare again: remix ").split()
    assert argv[-4:] == ["--target", "0.2", "--plot", str(out / "compare.png")]
    before = (out / "demo.png").read_bytes()
    assert main(argv) == 0
    again = capsys.readouterr().out
    demo_table = [ln for ln in printed.splitlines() if ln.startswith(("grpo ", "remix-grpo "))]
    assert demo_table and all(line in again for line in demo_table)
    assert (out / "compare.png").is_file() and (out / "demo.png").read_bytes() == before


def test_the_compare_command_keeps_the_demos_target_and_plot(tmp_path):
    from remix_rft.apps.demo import compare_command

    dirs = [tmp_path / "grpo", tmp_path / "remix grpo"]
    command = compare_command(dirs, 0.9, tmp_path)
    assert command == (
        f"remix compare {dirs[0]} '{dirs[1]}' --target 0.9 --plot {tmp_path / 'compare.png'}"
    )


def test_demo_budget_sets_each_runs_steps(tmp_path):
    """ReMix samples 32 responses per iteration until reincarnation at 20, 128 after."""
    grpo = demo_config("tiny-grpo", "grpo", tmp_path, seed=0, budget=3840)
    remix = demo_config("tiny-remix-grpo", "remix-grpo", tmp_path, seed=0, budget=3840)
    assert grpo.steps == 30 and grpo.rollouts_for_steps(grpo.steps) == 3840
    assert remix.rollouts_for_steps(remix.steps) <= 3840
    assert remix.rollouts_for_steps(remix.steps + 1) > 3840


def test_claim_lines_tell_both_halves():
    table = [
        {"run": "grpo", "rollouts_to_target": 1920, "wall_s_to_target": 40.0,
         "last3_accuracy": 0.965, "total_rollouts": 3840},
        {"run": "remix-grpo", "rollouts_to_target": 480, "wall_s_to_target": 20.0,
         "last3_accuracy": 0.96, "total_rollouts": 3808},
    ]  # fmt: skip
    speed, final = claim_lines(table, 0.9)
    assert "480 rollouts, 0.25x grpo's 1,920" in speed and "20 s vs 40 s" in speed
    assert "3,840 vs 3,808 rollouts: grpo 0.965, remix-grpo 0.960" in final
    table[1]["rollouts_to_target"] = None
    assert "reached by grpo" in claim_lines(table, 0.9)[0]


def test_demo_refuses_a_non_empty_output_directory(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "x").read_text() == "keep me"


def test_a_failing_parallel_run_is_reported_with_its_traceback(tmp_path, capsys):
    """A run that fails in its own process is named, with the error, and not waited on."""
    import dataclasses

    from remix_rft.apps.demo import train_parallel

    cfg = demo_config("tiny-grpo", "broken", tmp_path, seed=0, budget=128, threads=1)
    cfg = dataclasses.replace(cfg, model=str(tmp_path / "no-such-model"))
    assert train_parallel([("broken", cfg)]) == ["broken"]
    err = capsys.readouterr().err
    assert "broken failed" in err and "no-such-model" in err


def test_the_shipped_control_numbers_match_the_benchmark_table():
    """The demo quotes the 5-seed table; the quote must be the table's T = 0.9 rows."""
    text = (REPO / SHIPPED_TABLE).read_text()
    section = text.split(f"### Rollouts to T = {SHIPPED_TARGET:.3f}")[1].split("###")[0]
    for row in SHIPPED_ROWS:
        line = next(ln for ln in section.splitlines() if ln.startswith(f"| {row.variant} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "5/5", row.variant
        mean, std = (int(x.replace(",", "")) for x in re.findall(r"[\d,]+", cells[3]))
        assert (mean, std) == (row.rollouts, row.std), row.variant
        assert float(cells[4].split("±")[0]) == row.ratio_to_grpo, row.variant


def test_control_lines_give_the_live_control_and_the_shipped_table():
    live = {"run": "grpo-4x8", "rollouts_to_target": 640}
    first, shipped = control_lines(live, 0.9)
    assert "grpo-4x8" in first and "640 rollouts to T = 0.900" in first
    assert "grpo-4x8 717 ± 70 (0.41x)" in shipped and "remix-grpo 742 ± 229 (0.43x)" in shipped
    assert "reproduce: python benchmarks/efficiency.py" in shipped
    live["rollouts_to_target"] = None
    assert "did not reach T" in control_lines(live, 0.9)[0]
    assert len(control_lines(None, 0.9)) == 1
