"""The fault soak with asynchronous rollouts: ``python benchmarks/faults.py --mode async``.

One tiny-grpo run with ``rollout_mode: async`` (η = ``--max-staleness``, default 1): a producer
process beside the learner. Each run is started in its own session, so a fault can hit the
whole process group as a scheduler or a terminal would:

* SIGKILL of the whole group (learner and producer) at a random moment or right after a step
  line (its checkpoint being written);
* SIGTERM ×2 to the whole group (a preemption notice, repeated): the producer ignores it and
  serves the step in progress, the learner must exit 75 with a checkpoint of that step;
* SIGKILL of the producer alone, once it is serving: the learner must stop with one line
  (``rollout producer … died …``, exit 1) and the checkpoint must verify.

Each is followed by ``remix train --resume``; after each, no process of the group may be
left (the process tree is empty). At the end, against the uninterrupted run of the same
seed: with η = 0 the final weights and every ``metrics.jsonl`` row must be equal; with η ≥ 1
(the producer uses the newest weights it has, which depends on timing) the documented
equivalent: steps 0…N each logged once, and the same rollout and token counts at every step.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults_runs as sync
from faults_report import fault_rows
from faults_runs import Outcome, leftovers, policy_hash, row_count, rows, verify_resumable

from remix_rft.trainer import checkpoint as ckpt
from remix_rft.trainer.preemption import PREEMPTED_EXIT_CODE

KINDS = {
    "kill-random": "SIGKILL of the whole group at a random moment",
    "kill-step": "SIGKILL of the whole group right after a step line",
    "term-random": "SIGTERM ×2 to the whole group at a random moment",
    "term-step": "SIGTERM ×2 to the whole group right after a step line",
    "kill-producer": "SIGKILL of the producer alone",
}


def overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    return [*sync.overrides(args, run_dir)[:-1], "rollout_mode=async",
            f"max_staleness={args.max_staleness}", f"out_dir={run_dir}"]  # fmt: skip


def start(args: argparse.Namespace, run_dir: Path, log: Path) -> subprocess.Popen:
    fresh = not (run_dir / "config.yaml").is_file()
    cmd = (
        [sys.executable, "-m", "remix_rft", "train", sync.CONFIG, *overrides(args, run_dir)]
        if fresh
        else sync.resume_cmd(run_dir)
    )
    with open(log, "w") as err:  # the child holds its own copy of the file
        return subprocess.Popen(cmd, cwd=sync.REPO, env=sync.ENV, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)  # fmt: skip


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def left_behind(pgid: int, timeout: float = 15.0) -> list[int]:
    """Processes of the run's group still alive ``timeout`` s after its learner ended
    (killed then, so that the next fault starts clean)."""
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_members(pgid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def producer_pid(learner: int) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == learner and b"spawn_main" in cmdline:
            return int(stat.parent.name)
    return None


def wait_for_step(proc: subprocess.Popen, run_dir: Path, rng: random.Random) -> bool:
    """Until a new step line appears (the resumed run first rewrites the file up to its
    checkpoint); False if the run ended first."""
    latest = ckpt.resolve_resume_checkpoint(run_dir).path
    done = ckpt.checkpoint_step(latest) if latest is not None else 0
    target = max(row_count(run_dir), (done or 0) + 1) + 1 + rng.randrange(2)
    return sync.wait_rows(proc, run_dir, target)


def aim(kind: str, proc: subprocess.Popen, run_dir: Path, rng: random.Random,
        timing: tuple) -> int | None:  # fmt: skip
    """Wait for the moment of the fault; the pid to hit (the group's, or the producer's)."""
    first_row, per_step = timing
    if kind == "kill-producer":
        if not wait_for_step(proc, run_dir, rng):  # it is serving requests now
            return None
        time.sleep(rng.uniform(0.0, per_step))
        return producer_pid(proc.pid)
    if kind.endswith("step"):
        if not wait_for_step(proc, run_dir, rng):
            return None
        time.sleep(rng.uniform(0.0, 0.05))
    else:
        time.sleep(rng.uniform(0.0, first_row + 2 * per_step))
    return proc.pid if proc.poll() is None else None


def inject(kind: str, args: argparse.Namespace, run_dir: Path, rng: random.Random,
           timing: tuple, index: int) -> Outcome:  # fmt: skip
    out = Outcome(kind)
    log = run_dir.parent / f"fault{index:02d}-{kind}.log"
    resumed_from = ckpt.resolve_resume_checkpoint(run_dir).path
    proc = start(args, run_dir, log)
    target = aim(kind, proc, run_dir, rng, timing)
    if target is None or proc.poll() is not None:
        rc = proc.wait()
        out.survived = rc == 0 and not left_behind(proc.pid)
        out.notes.append("not injected: the run finished first")
        return out
    signalled = time.monotonic()
    if kind == "kill-producer":
        os.kill(target, signal.SIGKILL)
    elif kind.startswith("kill"):
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # repeated notice, likely during the save
    rc = proc.wait()
    took = time.monotonic() - signalled
    if rc == 0 and (run_dir / "summary.json").is_file():  # it needed no more rollouts
        out.survived = not left_behind(proc.pid)
        out.notes.append("not injected: the run finished first")
        return out
    judge(out, rc, log.read_text(), run_dir, resumed_from, took)
    left = left_behind(proc.pid)
    if left:
        out.survived = False
        out.notes.append(f"processes left behind: {left}")
    if leftovers(run_dir):
        out.notes.append("mid-write")
    return verify_resumable(out, run_dir)


def judge(out: Outcome, rc: int, stderr: str, run_dir: Path, resumed_from: Path | None,
          took: float) -> None:  # fmt: skip
    logged = rows(run_dir, strict=False)
    last = logged[-1]["step"] if logged else None
    if out.kind == "kill-producer":
        lines = [x for x in stderr.splitlines() if x.startswith("remix train: error:")]
        out.survived = (
            rc == 1 and "Traceback" not in stderr and len(lines) == 1 and "died" in lines[0]
        )
        out.notes.append(f"learner exit {rc} in {took:.1f} s after step {last}: "
                         + (lines[0][:90] if lines else "no error line"))  # fmt: skip
        if out.survived:
            out.notes.append("one-line")
    elif out.kind.startswith("kill"):
        out.survived = rc == -signal.SIGKILL
        out.notes.append(f"killed after step {last}")
    elif rc == PREEMPTED_EXIT_CODE:
        choice = ckpt.resolve_resume_checkpoint(run_dir).path
        out.survived, at = sync.judge_exit75(stderr, resumed_from, choice, last)
        out.notes += [f"exit 75 at step {at} in {took:.1f} s", "exit75"]
    elif rc == -signal.SIGTERM:  # before the trainer installed its handler: nothing lost
        out.survived = ckpt.resolve_resume_checkpoint(run_dir).path == resumed_from
        out.notes.append(f"killed by SIGTERM before the loop (last step {last})")
    else:
        out.notes.append(f"unexpected exit {rc} (last step {last})")


def table(args: argparse.Namespace, outcomes: list[Outcome], final: dict, wall: float) -> str:
    lines, total_in, total_ok = fault_rows(KINDS, outcomes)
    orphans = any("processes left behind" in " ".join(o.notes) for o in outcomes)
    behind = "**processes were left behind**" if orphans else "no process left behind after any"
    lines.append(f"| **all faults** | **{total_in}** | **{total_ok}** | {behind} |")
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    equal = "equal to the uninterrupted run's (η = 0: required)"
    if args.max_staleness:
        equal = f"equal to the uninterrupted run's (η = {args.max_staleness}: not required)"
    lines += [
        "", "| check | result |", "|---|---|",
        f"| steps 0–{args.iterations} each logged once | {yes(final['contiguous'])} |",
        f"| rollouts at every step equal to the uninterrupted run's | "
        f"{yes(final['counts_equal'])} |",
        f"| response tokens at every step {equal} | {yes(final['tokens_equal'])} |",
        f"| final weights (sha256) {equal} | {yes(final['hash_equal'])} |",
        f"| `metrics.jsonl` rows (every key but `time/*`) {equal} | {yes(final['rows_equal'])} |",
        f"| processes started (reference + faulted + final resume) | {final['processes']} |",
        f"| soak wall time | {wall / 60:.1f} min |",
    ]  # fmt: skip
    return "\n".join(lines)


def final_checks(args: argparse.Namespace, work: Path, run_dir: Path, rc: int,
                 processes: int) -> dict:  # fmt: skip
    expected, got = rows(work / "reference"), rows(run_dir)
    counts = lambda rs, key: [(r["step"], r.get(key)) for r in rs]  # noqa: E731
    ok = rc == 0
    return {
        "contiguous": [r["step"] for r in got] == list(range(args.iterations + 1)),
        "counts_equal": counts(got, "rollouts") == counts(expected, "rollouts"),
        "tokens_equal": counts(got, "tokens") == counts(expected, "tokens"),
        "hash_equal": ok
        and policy_hash(run_dir, args.iterations)
        == policy_hash(work / "reference", args.iterations),
        "rows_equal": got == expected,
        "processes": processes,
    }


def fault_plan(args: argparse.Namespace, rng: random.Random) -> list[str]:
    kinds = [rng.choice(["kill-random", "kill-step"]) for _ in range(args.sigkills)]
    kinds += [rng.choice(["term-random", "term-step"]) for _ in range(args.sigterms)]
    kinds += ["kill-producer"] * args.producer_kills
    rng.shuffle(kinds)
    return kinds


def run(args: argparse.Namespace, work: Path) -> tuple[str, bool]:
    """The soak; (its report, whether everything held)."""
    rng = random.Random(args.seed)
    began = time.monotonic()
    reference = work / "reference"
    print(f"reference: {args.iterations} async iterations uninterrupted ({reference})", flush=True)
    proc = start(args, reference, work / "reference.log")
    t0 = time.monotonic()
    sync.wait_rows(proc, reference, 1)
    first = time.monotonic() - t0
    if proc.wait() != 0:
        raise SystemExit(f"the reference run failed: see {work / 'reference.log'}")
    timing = (first, (time.monotonic() - t0 - first) / args.iterations)
    print(f"  first row after {timing[0]:.1f} s, {timing[1]:.2f} s per iteration", flush=True)
    run_dir, outcomes, processes = work / "faulted", [], 1
    kinds = fault_plan(args, rng)
    for index, kind in enumerate(kinds, 1):
        outcome = inject(kind, args, run_dir, rng, timing, index)
        outcomes.append(outcome)
        processes += 1
        mark = "ok" if outcome.survived else "FAILED"
        print(f"[{index:2d}/{len(kinds)}] {kind:14s} {mark:6s} at step {row_count(run_dir) - 1:3d}"
              f"  {'; '.join(outcome.notes)}", flush=True)  # fmt: skip
        if (run_dir / "summary.json").is_file():
            print("  the run finished before every fault was injected", flush=True)
            break
    print("final resume, uninterrupted", flush=True)
    proc = start(args, run_dir, work / "final.log")
    rc = proc.wait()
    processes += 1
    if left_behind(proc.pid):
        outcomes.append(Outcome("final", notes=["processes left behind"]))
    final = final_checks(args, work, run_dir, rc, processes)
    report = table(args, outcomes, final, time.monotonic() - began)
    ok = final["contiguous"] and final["counts_equal"] and all(o.survived for o in outcomes)
    if not args.max_staleness:
        ok = ok and final["hash_equal"] and final["rows_equal"]
    return report, ok
