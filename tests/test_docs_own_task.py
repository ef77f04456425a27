"""docs/your-own-task.md: the walkthrough works copied as written (its first bash block,
run in an empty directory; only the training is shortened, by key=value overrides)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from remix_rft.engines.models import EMBEDDED_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "your-own-task.md"
SHORT = "steps=1 prompts_per_step=4 group_size=4 minibatch_size=16 eval_problems=8 threads=1"


def walkthrough() -> str:
    """The first ```bash block of the page."""
    match = re.search(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"{DOC} has no bash block"
    return match.group(1)


@pytest.mark.skipif(
    not (EMBEDDED_MODEL_DIR / "config.json").is_file(), reason="embedded tiny model not built"
)
def test_the_walkthrough_runs_as_written(tmp_path):
    script = walkthrough()
    assert script.count("remix ") == 3  # dry run, train, eval
    # `remix` is this checkout's CLI; the training run is kept short
    script = script.replace("remix train mytask.yaml  ", f"remix train mytask.yaml {SHORT}  ")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "remix").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m remix_rft "$@"\n')
    (bin_dir / "remix").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    done = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "40 of 400 train_path rows are held out" in done.stderr  # dry run and start
    assert "dry run: config and data are valid" in done.stdout
    rows = [json.loads(x) for x in (work / "runs/mytask/metrics.jsonl").read_text().splitlines()]
    assert f"held-out accuracy {rows[-1]['eval/accuracy']:.4f} " in done.stdout  # remix eval
    samples = (work / "runs/mytask/samples.jsonl").read_text().splitlines()
    assert {json.loads(x)["kind"] for x in samples} == {"train", "eval"}
