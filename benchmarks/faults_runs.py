"""What the fault soaks (``faults.py``, sync, and ``faults_async.py``) share about one run:
its ``remix train`` commands, its process, its ``metrics.jsonl`` rows and checkpoints, and the
checks that a fault left it resumable."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from remix_rft.trainer import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny-grpo.yaml"


@dataclass
class Outcome:
    """One injected fault: its kind, whether the run survived it, and what was seen."""

    kind: str
    survived: bool = False
    notes: list[str] = field(default_factory=list)


def overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    return [
        f"steps={args.iterations}", f"seed={args.seed}", "save_every=1", "prompts_per_step=4",
        "group_size=4", "minibatch_size=16", "eval_every=5", "eval_problems=16", "threads=1",
        "report_to=[]", f"out_dir={run_dir}",
    ]  # fmt: skip


def train_cmd(args: argparse.Namespace, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "remix_rft", "train", CONFIG, *overrides(args, run_dir)]


def resume_cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "remix_rft", "train", "--resume", str(run_dir)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rows(run_dir: Path, *, strict: bool = True) -> list[dict]:
    """The rows without ``time/*``. ``strict``: a torn line raises (the finished run's file
    must be whole); otherwise it is skipped, as a resume drops it."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if strict:
                raise
            continue
        out.append({k: v for k, v in row.items() if not k.startswith("time/")})
    return out


def row_count(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


def policy_hash(run_dir: Path, step: int) -> str:
    policy = ckpt.checkpoint_root(run_dir) / ckpt.step_dir_name(step) / "policy"
    digest = hashlib.sha256()
    for f in sorted(policy.glob("*.safetensors")):
        digest.update(f.read_bytes())
    return digest.hexdigest()


def leftovers(run_dir: Path) -> list[str]:
    root = ckpt.checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name.endswith((".tmp", ".old")))


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """``cmd`` started, its stderr to ``log`` (the child holds its own copy of the file)."""
    with open(log, "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err)


def wait_rows(proc: subprocess.Popen, run_dir: Path, count: int, timeout: float = 300) -> bool:
    """Until ``metrics.jsonl`` holds ``count`` lines; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if row_count(run_dir) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError(f"no progress in {timeout} s")


def reference_run(args: argparse.Namespace, run_dir: Path) -> tuple[float, float]:
    """The uninterrupted run; (seconds to the first metrics row, seconds per iteration)."""
    t0 = time.monotonic()
    proc = start(train_cmd(args, run_dir), run_dir.parent / "reference.log")
    wait_rows(proc, run_dir, 1)
    first = time.monotonic() - t0
    if proc.wait() != 0:
        raise SystemExit(f"the reference run failed: see {run_dir.parent / 'reference.log'}")
    per_step = (time.monotonic() - t0 - first) / args.iterations
    return first, per_step


def judge_exit75(
    stderr: str, resumed_from: Path | None, choice: Path | None, last: int | None
) -> tuple[bool, int | None]:
    """Whether an exit 75 kept its promise, and the step it says it stopped at: the step just
    trained, or during startup the checkpoint it had loaded (a newer one may be damaged,
    `latest` too), or, during a fresh run's startup, nothing (no checkpoint to write)."""
    if "preempted before a checkpoint: resume with" in stderr:
        return resumed_from is None and choice is None, None
    said = re.search(r"preempted at step (\d+): resume with", stderr)
    at = int(said.group(1)) if said else None
    startup = resumed_from is not None and at == ckpt.checkpoint_step(resumed_from)
    ok = at is not None and (at == last or startup) and ckpt.checkpoint_step(choice) == at
    return ok, at


def finish(out: Outcome, proc: subprocess.Popen, log: Path, run_dir: Path) -> Outcome:
    rc = proc.wait()
    out.survived = rc == 0
    if rc != 0:
        out.notes.append(f"exit {rc}: see {log}")
    return out


def verify_resumable(out: Outcome, run_dir: Path) -> Outcome:
    """What a resume would pick must verify (or be nothing, before the first checkpoint)."""
    try:
        choice = ckpt.resolve_resume_checkpoint(run_dir)
    except ckpt.NoValidCheckpointError as err:
        out.survived = False
        out.notes.append(f"no valid checkpoint: {err}")
        return out
    if choice.skipped:
        out.notes.append("fallback: " + (choice.summary() or ""))
    return out
