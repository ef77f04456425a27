"""The benchmark run archive: a finished run kept in the repository stands in for its
directory only while its variant resolves to the same configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from remix_rft.apps.runs import load_run
from remix_rft.trainer.config import load_config

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # after site-packages
import run_archive  # noqa: E402


def finished_run(tmp_path: Path, config: dict) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [
        {"step": 0, "rollouts": 0, "eval/accuracy": 0.1, "time/step_s": 1.0, "big/tensor": [1] * 50},
        {"step": 1, "rollouts": 16, "time/step_s": 0.5, "age1/clip_frac": 0.01, "age1/entropy": 2.0},
        {"step": 2, "rollouts": 32, "eval/accuracy": 0.3, "time/step_s": 0.5},
    ]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "summary.json").write_text(json.dumps({"algorithm": "grpo", "name": "v"}))
    return run_dir


def test_an_archived_run_reads_back_with_the_reported_keys_only(tmp_path):
    config = load_config("configs/tiny-grpo.yaml", ["seed=3", f"out_dir={tmp_path}/x"]).to_dict()
    run = load_run(finished_run(tmp_path, config))
    path = run_archive.archive_path("hard", "v", 3, root=tmp_path / "archive")
    run_archive.save(run, path)
    defaults = load_config(None, []).to_dict()
    elsewhere = {**config, "out_dir": "/somewhere/else", "threads": 2}  # where, not what
    back = run_archive.load(path, elsewhere, defaults)
    assert back is not None and back.summary == run.summary
    assert back.rows == [
        {"step": 0, "rollouts": 0, "eval/accuracy": 0.1, "time/step_s": 1.0},
        {"step": 1, "rollouts": 16, "time/step_s": 0.5, "age1/clip_frac": 0.01},
        {"step": 2, "rollouts": 32, "eval/accuracy": 0.3, "time/step_s": 0.5},
    ]
    assert run_archive.load(path, {**config, "lr": 2e-4}, defaults) is None  # redefined
    assert (
        run_archive.load(path, {**config, "task": {**config["task"], "seed": 9}}, defaults) is None
    )
    assert run_archive.load(tmp_path / "absent.json.gz", config, defaults) is None


def test_a_key_added_after_the_run_counts_at_its_default(tmp_path):
    config = load_config("configs/tiny-grpo.yaml", ["seed=3"]).to_dict()
    older = {k: v for k, v in config.items() if k != "rollout_device"}  # the run predates it
    path = tmp_path / "seed3.json.gz"
    run_archive.save(load_run(finished_run(tmp_path, older)), path)
    defaults = load_config(None, []).to_dict()
    assert run_archive.load(path, config, defaults) is not None
    changed = {**config, "rollout_mode": "async", "rollout_device": "cpu"}
    assert run_archive.load(path, changed, defaults) is None
