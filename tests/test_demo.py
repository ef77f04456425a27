"""`remix demo` end to end with very few steps: both runs, the table and the plot."""

from remix_rft.cli import main


def test_demo_trains_both_algorithms_and_writes_table_and_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--rollouts", "64", "--target", "0.2"]
    code = main([*argv, "--report-to", "tensorboard"])
    printed = capsys.readouterr().out
    assert code == 0
    assert (out / "grpo" / "summary.json").is_file()
    assert (out / "remix-grpo" / "summary.json").is_file()
    assert (out / "demo.png").stat().st_size > 1000
    assert "grpo" in printed and "remix-grpo" in printed and "target accuracy T = 0.200" in printed
    # --report-to: both runs' metrics and the plot went to TensorBoard as well
    assert list((out / "grpo" / "tensorboard").glob("events.*"))
    assert list((out / "remix-grpo" / "tensorboard" / "by_rollouts").glob("events.*"))
    assert any(b"plot" in f.read_bytes() for f in (out / "tensorboard").glob("events.*"))


def test_demo_refuses_a_non_empty_output_directory(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "x").read_text() == "keep me"
