"""samples.jsonl: what the model generated, row for row consistent with metrics.jsonl, and
the same table in TensorBoard and W&B."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from remix_rft.trainer.config import load_config
from remix_rft.trainer.loop import train
from remix_rft.trainer.samples import SampleRow, SamplesLog, TruncationWatch
from remix_rft.trainer.trackers import markdown_table

pytest.importorskip("tensorboard")  # the test extra installs both trackers
pytest.importorskip("wandb")
from conftest import TINY  # noqa: E402
from test_trackers import read_tensorboard, read_wandb_history  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory) -> Path:
    """Three iterations logging every response (4 prompts x 4, 16 held-out problems), some
    cut at 24 tokens, with both trackers (W&B offline)."""
    out = tmp_path_factory.mktemp("sampled") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        cfg = load_config(None, [
            *TINY, f"out_dir={out}", "steps=3", "max_new_tokens=24", "log_samples=16",
            "log_eval_problems=16", "report_to=[tensorboard, wandb]",
        ])  # fmt: skip
        train(cfg)
    return out


def by_step(rows: list[dict], kind: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        if row["kind"] == kind:
            out[row["step"]].append(row)
    return out


def test_train_rows_match_the_metrics(sampled_run):
    metrics = read_jsonl(sampled_run / "metrics.jsonl")
    train_rows = by_step(read_jsonl(sampled_run / "samples.jsonl"), "train")
    assert sorted(train_rows) == [1, 2, 3]
    cut_somewhere = False
    for row in metrics[1:]:
        rows = train_rows[row["step"]]
        assert len(rows) == 16  # the whole fresh batch
        rewards = [r["reward"] for r in rows]
        assert sum(rewards) / 16 == pytest.approx(row["reward/mean"], abs=1e-12)
        cut = sum(r["truncated"] for r in rows) / 16
        assert cut == pytest.approx(1.0 - row["finished/frac"], abs=1e-12)
        cut_somewhere |= cut > 0
        assert {r["version"] for r in rows} == {row["step"] - 1}  # on-policy: π of step − 1
        for begin in range(0, 16, 4):  # GRPO: advantages of a group sum to zero
            assert sum(r["advantage"] for r in rows[begin : begin + 4]) == pytest.approx(
                0.0, abs=1e-5
            )
        assert all(r["prompt"].startswith("<|user|>") for r in rows)  # as the model saw it
    assert cut_somewhere  # the truncated flags were exercised


def test_eval_rows_match_the_metrics(sampled_run):
    metrics = read_jsonl(sampled_run / "metrics.jsonl")
    eval_rows = by_step(read_jsonl(sampled_run / "samples.jsonl"), "eval")
    evaluated = [r for r in metrics if "eval/accuracy" in r]
    assert sorted(eval_rows) == [r["step"] for r in evaluated] == [0, 2, 3]
    for row in evaluated:
        rows = eval_rows[row["step"]]
        assert len(rows) == 16 and len({r["problem"] for r in rows}) == 16
        correct = sum(r["reward"] >= 1.0 for r in rows) / 16
        assert correct == pytest.approx(row["eval/accuracy"], abs=1e-12)
        assert sum(r["reward"] for r in rows) / 16 == pytest.approx(row["eval/reward_mean"])
        assert {r["version"] for r in rows} == {row["step"]}
        assert all(r["advantage"] is None for r in rows)


def test_trackers_get_the_same_table(sampled_run):
    tags = read_tensorboard(sampled_run / "tensorboard").Tags()["tensors"]
    assert "samples/train/text_summary" in tags and "samples/eval/text_summary" in tags
    history = read_wandb_history(sampled_run)
    assert [h["step"] for h in history] == [0, 1, 2, 3]  # no extra history rows
    assert all(h["samples/_type"] == "table-file" for h in history)  # a wandb.Table
    assert [h["samples/nrows"] for h in history] == [16, 16, 32, 32]  # train + eval rows


def test_default_sizes_and_the_file_always_exists(tiny_config):
    cfg = tiny_config("steps=1", "eval_every=1")
    train(cfg)
    rows = read_jsonl(cfg.resolved_out_dir() / "samples.jsonl")
    assert [(r["step"], r["kind"]) for r in rows] == [(0, "eval")] * 4 + [(1, "train")] * 4 + [
        (1, "eval")
    ] * 4
    cfg = tiny_config("steps=1", "log_samples=0", "log_eval_problems=0", out="quiet")
    train(cfg)
    assert (cfg.resolved_out_dir() / "samples.jsonl").read_text() == ""


def test_resume_drops_rows_past_the_checkpoint(tmp_path):
    log = SamplesLog(tmp_path / "samples.jsonl")
    for step in (1, 2, 3):
        log.append([SampleRow(step, "train", "p", "r", 1.0, False, 0.0, step - 1)])
    log.truncate_after(2)
    assert [r["step"] for r in log.read()] == [1, 2]


def test_truncation_watch_warns_once_per_streak():
    watch = TruncationWatch(fraction=0.5, steps=2, max_new_tokens=8)
    seen = [watch.observe(s, f) for s, f in enumerate([0.2, 0.1, 0.0, 0.9, 0.3, 0.4], start=1)]
    assert [s is not None for s in seen] == [False, True, False, False, False, True]
    assert seen[1].startswith("steps 1-2: 80% or more of the responses were cut")
    assert TruncationWatch(0.5, 0, 8).observe(1, 0.0) is None  # 0: never


def test_markdown_table_keeps_one_row_per_sample():
    table = markdown_table([{"kind": "train", "response": "a|b\nc", "reward": 0.123456}])
    assert table.splitlines()[2].count("<br>") == 1 and "a\\|b" in table and "0.1235" in table
