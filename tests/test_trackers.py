"""Experiment trackers: what TensorBoard and W&B (offline) receive equals metrics.jsonl."""

from __future__ import annotations

import argparse
import importlib.util
import json
import struct
import time
from pathlib import Path

import pytest

from remix_rft.apps import compare
from remix_rft.cli import main
from remix_rft.trainer.config import ConfigError, load_config
from remix_rft.trainer.loop import train
from remix_rft.trainer.trackers import TensorBoardTracker

pytest.importorskip("tensorboard")  # the test extra installs both trackers
pytest.importorskip("wandb")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_tensorboard(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def tb_scalars(folder: Path) -> dict[str, dict[int, float]]:
    acc = read_tensorboard(folder)
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def read_wandb_history(run_dir: Path) -> list[dict]:
    """History rows of an offline W&B run, from its ``.wandb`` file (W&B's record log:
    a 7-byte header, then 32 KiB blocks of records with a crc/length/type header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, parts, rows = 32 * 1024, 7, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block padding
            pos += left
            continue
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last part of one
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


def numeric(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, bool | int | float)}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    """Three iterations of the shipped tiny ReMix-GRPO with both trackers, W&B offline."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        cfg = load_config(
            "tiny-remix-grpo",
            [
                f"out_dir={out}", "steps=3", "eval_every=2", "eval_problems=16",
                "save_every=3", "threads=1", "report_to=[tensorboard, wandb]",
            ],
        )  # fmt: skip
        train(cfg)
    return out


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_scalars_equal_metrics_jsonl(tracked_run):
    rows = metrics_rows(tracked_run)
    by_step = tb_scalars(tracked_run / "tensorboard")
    by_rollouts = tb_scalars(tracked_run / "tensorboard" / "by_rollouts")
    checked = 0
    for row in rows:
        for key, value in numeric(row).items():
            if key != "step":
                assert by_step[key][row["step"]] == pytest.approx(value, rel=1e-6), key
                checked += 1
            if key not in ("step", "rollouts"):
                assert by_rollouts[f"by_rollouts/{key}"][row["rollouts"]] == pytest.approx(
                    value, rel=1e-6
                )
    assert checked > 3 * 20  # every metric of every row, not a sample
    assert sorted(by_step["eval/accuracy"]) == [0, 2, 3]
    tags = read_tensorboard(tracked_run / "tensorboard").Tags()
    assert "config/text_summary" in tags["tensors"]  # the config as text
    hparams = (tracked_run / "tensorboard").glob("events.*")
    assert any(b"_hparams_/session_start_info" in f.read_bytes() for f in hparams)


def test_wandb_offline_history_equals_metrics_jsonl(tracked_run):
    rows = metrics_rows(tracked_run)
    history = read_wandb_history(tracked_run)
    assert [h["step"] for h in history] == [r["step"] for r in rows]
    for row, logged in zip(rows, history, strict=True):
        for key, value in numeric(row).items():
            assert logged[key] == pytest.approx(value, rel=1e-9), key
    assert (tracked_run / "wandb_run_id").is_file()  # a resume continues the same W&B run


def test_compare_logs_its_plot_as_an_image(tracked_run, tmp_path):
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    png = tmp_path / "cmp.png"
    args = parser.parse_args(
        ["compare", str(tracked_run), "--plot", str(png), "--report-to", "tensorboard"]
    )
    assert compare.run(args) == 0
    images = read_tensorboard(tmp_path / "tensorboard").Images("plot")
    assert len(images) == 1 and images[0].width > 100 and images[0].height > 100


def test_tensorboard_resume_drops_events_past_the_checkpoint(tmp_path, monkeypatch):
    rows = [{"step": s, "rollouts": 10 * s, "reward/mean": float(s)} for s in range(4)]
    tracker = TensorBoardTracker(tmp_path, "r", {"lr": 1e-4})
    for row in rows:
        tracker.log_metrics(row)
    tracker.close()
    # The resume happens later (event files are read in the order of their names, which
    # start with the time in seconds): a minute on, as a restarted job would be.
    clock = time.time
    monkeypatch.setattr(time, "time", lambda: clock() + 60)
    resumed = TensorBoardTracker(tmp_path, "r", {"lr": 1e-4})
    resumed.resume_after(rows[1])  # killed after step 3, resumed from step 1's checkpoint
    for row in rows[2:]:
        resumed.log_metrics({**row, "reward/mean": row["reward/mean"] + 0.5})
    resumed.close()
    assert tb_scalars(tmp_path / "tensorboard")["reward/mean"] == {0: 0, 1: 1, 2: 2.5, 3: 3.5}
    by_rollouts = tb_scalars(tmp_path / "tensorboard" / "by_rollouts")
    assert by_rollouts["by_rollouts/reward/mean"] == {0: 0, 10: 1, 20: 2.5, 30: 3.5}


def test_report_to_is_validated_and_a_missing_package_names_the_extra(monkeypatch, capsys):
    assert load_config(None, ["report_to=[tensorboard, wandb]"]).report_to == [
        "tensorboard",
        "wandb",
    ]
    assert load_config(None, ["report_to=tensorboard"]).report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="report_to"):
        load_config(None, ["report_to=[mlflow]"])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a),
    )
    assert main(["train", "tiny-grpo", "report_to=[wandb]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'remix-rft[wandb]'" in err
