"""The faults of the sync soak (``faults.py``): a signal (SIGKILL, SIGTERM ×2) at a random
moment or right after a step line, and a damaged newest checkpoint; each returns an
``Outcome`` saying whether the run survived it."""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import subprocess
import time
from pathlib import Path

from faults_runs import (
    Outcome,
    finish,
    judge_exit75,
    leftovers,
    resume_cmd,
    row_count,
    rows,
    start,
    train_cmd,
    verify_resumable,
    wait_rows,
)

from remix_rft.trainer import checkpoint as ckpt
from remix_rft.trainer.preemption import PREEMPTED_EXIT_CODE


def corrupt_newest(run_dir: Path, kind: str, rng: random.Random) -> tuple[str, str] | None:
    """Damage the newest checkpoint; (its name, the file) or None if there are < 2."""
    done = ckpt.list_checkpoints(ckpt.checkpoint_root(run_dir))
    if len(done) < 2:
        return None
    newest = done[-1]
    if kind == "corrupt-truncate":
        target = newest / rng.choice([ckpt.STATE_FILE, "policy/model.safetensors"])
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target = newest / "policy" / "model.safetensors"
        data = bytearray(target.read_bytes())
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
    return newest.name, str(target.relative_to(newest))


def inject(
    kind: str, args: argparse.Namespace, run_dir: Path, rng: random.Random, timing: tuple,
    index: int,
) -> Outcome:  # fmt: skip
    """Start the run (or its resume), hit it with one signal fault, check what it left."""
    first_row, per_step = timing
    out = Outcome(kind)
    log = run_dir.parent / f"fault{index:02d}-{kind}.log"
    fresh = not (run_dir / "config.yaml").is_file()
    cmd = train_cmd(args, run_dir) if fresh else resume_cmd(run_dir)
    before = row_count(run_dir)
    resumed_from = ckpt.resolve_resume_checkpoint(run_dir).path
    proc = start(cmd, log)
    sig = signal.SIGKILL if kind.startswith("kill") else signal.SIGTERM
    if kind.endswith("step"):
        if not _wait_for_save(proc, run_dir, rng, before, resumed_from):
            out.notes.append("not injected: the run finished first")
            return finish(out, proc, log, run_dir)
    else:
        time.sleep(rng.uniform(0.0, first_row + 2 * per_step))
    if proc.poll() is not None:
        out.notes.append("not injected: the run finished first")
        return finish(out, proc, log, run_dir)
    signalled = time.monotonic()
    proc.send_signal(sig)
    if sig == signal.SIGTERM:
        time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(sig)  # repeated notice, likely during the checkpoint
    rc = proc.wait()
    took = time.monotonic() - signalled
    logged = rows(run_dir, strict=False)
    last = logged[-1]["step"] if logged else None
    if leftovers(run_dir):
        out.notes.append("mid-write")
    if sig == signal.SIGKILL:
        out.survived = rc == -signal.SIGKILL
        out.notes.append(f"killed after step {last}")
    elif rc == PREEMPTED_EXIT_CODE:
        choice = ckpt.resolve_resume_checkpoint(run_dir).path
        out.survived, at = judge_exit75(log.read_text(), resumed_from, choice, last)
        out.notes.append(f"exit 75 at step {at} in {took:.1f} s")
        out.notes.append("exit75")
    elif rc == -signal.SIGTERM:  # before the loop installed its handler: nothing to lose
        out.survived = ckpt.resolve_resume_checkpoint(run_dir).path == resumed_from
        out.notes.append(f"killed by SIGTERM before the loop (last step {last})")
    else:
        out.notes.append(f"unexpected exit {rc} (last step {last}): see {log}")
    return verify_resumable(out, run_dir)


def _wait_for_save(
    proc: subprocess.Popen, run_dir: Path, rng: random.Random, before: int,
    resumed_from: Path | None,
) -> bool:  # fmt: skip
    """Until a new step line, then into the save of that step; False if the run ended first."""
    # a new step line (the resumed run first rewrites the file up to its checkpoint)
    target = max(before, (ckpt.checkpoint_step(resumed_from) or 0) + 1 if resumed_from else 0)
    if not wait_rows(proc, run_dir, target + 1 + rng.randrange(2)):
        return False
    # the save follows the line at once: catch it while its step_N.tmp is being filled
    step = rows(run_dir, strict=False)[-1]["step"]
    tmp = ckpt.checkpoint_root(run_dir) / (ckpt.step_dir_name(step) + ckpt.TMP_SUFFIX)
    deadline = time.monotonic() + 2.0
    while not tmp.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.001)
    time.sleep(rng.uniform(0.0, 0.04))
    return True


def run_corruption(
    kind: str, args: argparse.Namespace, run_dir: Path, rng: random.Random, timing: tuple,
    index: int,
) -> Outcome:  # fmt: skip
    """Damage the newest checkpoint, then resume until the resumed run has trained that step
    again and replaced the damaged checkpoint (killed there; so the next corruption damages a
    whole one): the resume must name the damaged checkpoint and the one it used instead."""
    out = Outcome(kind)
    damaged = corrupt_newest(run_dir, kind, rng)
    if damaged is None:
        out.notes.append("not injected: fewer than 2 checkpoints")
        return out
    name, rel = damaged
    previous = ckpt.list_checkpoints(ckpt.checkpoint_root(run_dir))[-2].name
    damaged_dir = ckpt.checkpoint_root(run_dir) / name
    inode = damaged_dir.stat().st_ino
    log = run_dir.parent / f"fault{index:02d}-{kind}.log"
    proc = start(resume_cmd(run_dir), log)
    # Not the step count: metrics.jsonl keeps the old rows until the resume has loaded. A
    # same-step checkpoint is renamed into place over the damaged one: a new directory.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(FileNotFoundError):  # between the two renames
            if damaged_dir.stat().st_ino != inode:
                break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    note = next((line for line in log.read_text().splitlines() if "resuming from" in line), "")
    out.survived = f"resuming from {previous}" in note and name in note and rel in note
    out.notes.append(f"{name}/{rel} damaged; resumed from {previous}")
    if out.survived:
        out.notes.append("named-both")
    return verify_resumable(out, run_dir)
