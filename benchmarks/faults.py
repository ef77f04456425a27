"""Fault-injection soak: one tiny-grpo run killed over and over must end as if nothing happened.

First the reference: ``remix train configs/tiny-grpo.yaml`` (small batch, a checkpoint every
iteration) runs to completion, uninterrupted. Then the same seed again, in the same kind of
run directory, with faults injected at random moments (a seeded RNG), each followed by
``remix train --resume``:

* SIGKILL at a random moment of a process's life (model loading, generation, update, save);
* SIGKILL right after a step's ``metrics.jsonl`` line appears, i.e. while that step's
  checkpoint is being written (counted as "mid-write" when a ``step_N.tmp`` / ``.old`` is
  left behind);
* SIGTERM (preemption) at a random moment or right after a step line, twice in a row (a
  scheduler repeating its notice): the run must exit 75 with a checkpoint of the step it
  stopped at, or, if the signal came before the training loop, die having lost nothing;
* a corrupted newest checkpoint (truncated file or one flipped bit) between two processes:
  the resume must fall back to the previous checkpoint and name both.

At the end the final policy weights (sha256 of the safetensors) and every ``metrics.jsonl``
row (all keys but ``time/*``) must equal the reference's. A table of faults injected vs
survived goes to stdout and to ``benchmarks/results/faults.md``.

    python benchmarks/faults.py                      # 40 iterations, 20 SIGKILL, 5 SIGTERM
    python benchmarks/faults.py --sigkills 30 --sigterms 10 --corruptions 4 --seed 1

Takes about 10 minutes on 2 CPU cores (each fault costs a process start).

``--mode async`` runs the soak with asynchronous rollouts (a producer process; faults to the
whole process group and to the producer alone): ``benchmarks/faults_async.py``. Each mode
rewrites its own section of ``benchmarks/results/faults.md`` and keeps the other's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # faults_async imports this module as `faults`

from remix_rft.trainer import checkpoint as ckpt  # noqa: E402
from remix_rft.trainer.preemption import PREEMPTED_EXIT_CODE  # noqa: E402

CONFIG = "configs/tiny-grpo.yaml"
KINDS = {
    "kill-random": "SIGKILL at a random moment",
    "kill-step": "SIGKILL right after a step line (its checkpoint being written)",
    "term-random": "SIGTERM ×2 at a random moment",
    "term-step": "SIGTERM ×2 right after a step line",
    "corrupt-truncate": "newest checkpoint truncated (a file cut in half)",
    "corrupt-bitflip": "newest checkpoint bit-flipped (one bit of the weights)",
}


@dataclass
class Outcome:
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
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))  # fmt: skip


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
        # a new step line (the resumed run first rewrites the file up to its checkpoint)
        target = max(before, (ckpt.checkpoint_step(resumed_from) or 0) + 1 if resumed_from else 0)
        if not wait_rows(proc, run_dir, target + 1 + rng.randrange(2)):
            out.notes.append("not injected: the run finished first")
            return finish(out, proc, log, run_dir)
        # the save follows the line at once: catch it while its step_N.tmp is being filled
        step = rows(run_dir, strict=False)[-1]["step"]
        tmp = ckpt.checkpoint_root(run_dir) / (ckpt.step_dir_name(step) + ckpt.TMP_SUFFIX)
        deadline = time.monotonic() + 2.0
        while not tmp.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.04))
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


def run_corruption(
    kind: str, args: argparse.Namespace, run_dir: Path, rng: random.Random, timing: tuple,
    index: int,
) -> Outcome:  # fmt: skip
    """Damage the newest checkpoint, then resume until one more step is logged (killed there):
    the resume must name the damaged checkpoint and the one it used instead."""
    out = Outcome(kind)
    damaged = corrupt_newest(run_dir, kind, rng)
    if damaged is None:
        out.notes.append("not injected: fewer than 2 checkpoints")
        return out
    name, rel = damaged
    log = run_dir.parent / f"fault{index:02d}-{kind}.log"
    proc = start(resume_cmd(run_dir), log)
    done = ckpt.list_checkpoints(ckpt.checkpoint_root(run_dir))
    previous = done[-2].name
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (
            "resuming from" in log.read_text()
            and row_count(run_dir) > ckpt.checkpoint_step(done[-2]) + 1
        ):
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


DETAILS = {  # a note an outcome carries -> how the table counts it
    "mid-write": "{} left a half-written checkpoint behind",
    "exit75": "{} exited 75 with a checkpoint of the stopped step",
    "before-loop": "{} came before the loop (killed, nothing to save)",
    "named-both": "{} resumes named both checkpoints",
    "one-line": "{} stopped with one line (exit 1)",
}


def fault_rows(kinds: dict[str, str], outcomes: list[Outcome]) -> tuple[list[str], int, int]:
    """The faults table's rows (header included) and the totals injected, survived."""
    injected, survived = Counter(), Counter()
    extra: dict[str, Counter] = {k: Counter() for k in kinds}
    for o in outcomes:
        if o.kind not in kinds or any(n.startswith("not injected") for n in o.notes):
            continue
        injected[o.kind] += 1
        survived[o.kind] += o.survived
        for n in o.notes:
            if n.startswith("killed by SIGTERM before the loop"):
                n = "before-loop"
            extra[o.kind][n] += n in DETAILS
    lines = ["| fault | injected | survived | details |", "|---|---:|---:|---|"]
    for kind, label in kinds.items():
        if injected[kind]:
            details = "; ".join(DETAILS[n].format(c) for n, c in extra[kind].items() if c)
            lines.append(f"| {label} | {injected[kind]} | {survived[kind]} | {details} |")
    return lines, sum(injected.values()), sum(survived.values())


def table(args: argparse.Namespace, outcomes: list[Outcome], final: dict, wall: float) -> str:
    lines, total_in, total_ok = fault_rows(KINDS, outcomes)
    lines.append(f"| **all faults** | **{total_in}** | **{total_ok}** | |")
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines += [
        "",
        "| check | result |",
        "|---|---|",
        f"| final weights (sha256 of the policy safetensors) equal to the uninterrupted run's | {yes(final['hash_equal'])} (`{final['hash'][:16]}…`) |",
        f"| `metrics.jsonl` rows equal (every key but `time/*`) | {yes(final['rows_equal'])} ({final['rows']} rows, steps 0–{args.iterations}, contiguous: {yes(final['contiguous'])}) |",
        f"| processes started (reference + faulted + final resume) | {final['processes']} |",
        f"| soak wall time | {wall / 60:.1f} min |",
    ]
    return "\n".join(lines)


ASYNC_HEADING = "## Asynchronous rollouts"


def write_section(out: Path, text: str) -> None:
    """This soak's section of the results file (the sync one first, then one per async η);
    the other sections are kept."""
    old = out.read_text() if out.is_file() else ""
    parts = old.split(f"\n{ASYNC_HEADING}")
    sections = {"sync": parts[0].strip()} if parts[0].strip() else {}
    sections.update({ASYNC_HEADING + p.split("\n", 1)[0]: ASYNC_HEADING + p.rstrip()
                     for p in parts[1:]})  # fmt: skip
    key = text.split("\n", 1)[0] if text.startswith(ASYNC_HEADING) else "sync"
    sections[key] = text.strip()
    ordered = sorted(sections, key=lambda k: (k != "sync", k))
    out.write_text("\n\n".join(sections[k] for k in ordered) + "\n")


def main_async(args: argparse.Namespace) -> int:
    import faults_async

    work = args.workdir or Path(tempfile.mkdtemp(prefix="remix-faults-async-"))
    for name in ("reference", "faulted"):
        shutil.rmtree(work / name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    report, ok = faults_async.run(args, work)
    command = (
        f"python benchmarks/faults.py --mode async --max-staleness {args.max_staleness} "
        f"--iterations {args.iterations} --sigkills {args.sigkills} --sigterms {args.sigterms} "
        f"--producer-kills {args.producer_kills} --seed {args.seed}"
    )
    shown = shlex.join(faults_async.overrides(args, Path("RUN"))[:-1])
    heading = f"{ASYNC_HEADING} (η = {args.max_staleness})"
    publish(args, work, heading, command, shown, report)
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["sync", "async"], default="sync")
    p.add_argument("--max-staleness", type=int, default=1, help="async: η")
    p.add_argument("--producer-kills", type=int, default=4, help="async: SIGKILLs of the producer")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--sigkills", type=int, default=20)
    p.add_argument("--sigterms", type=int, default=5)
    p.add_argument("--corruptions", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="the run's seed and the faults' RNG")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    p.add_argument("--keep", action="store_true", help="keep the run directories and logs")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "faults.md")
    args = p.parse_args()
    logging.getLogger("remix_rft").setLevel(logging.ERROR)  # our checks' own warnings
    if args.mode == "async":
        return main_async(args)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="remix-faults-"))
    shutil.rmtree(work / "reference", ignore_errors=True)
    shutil.rmtree(work / "faulted", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    began = time.monotonic()

    print(
        f"reference: {args.iterations} iterations uninterrupted ({work / 'reference'})", flush=True
    )
    timing = reference_run(args, work / "reference")
    print(f"  first row after {timing[0]:.1f} s, {timing[1]:.2f} s per iteration", flush=True)

    kinds = [rng.choice(["kill-random", "kill-step"]) for _ in range(args.sigkills)] + [
        rng.choice(["term-random", "term-step"]) for _ in range(args.sigterms)
    ]
    rng.shuffle(kinds)
    corruptions = ["corrupt-truncate", "corrupt-bitflip"] * args.corruptions
    for i in range(args.corruptions):  # between signal faults, never first
        kinds.insert(rng.randrange(1, len(kinds) + 1), corruptions[i])
    run_dir = work / "faulted"
    outcomes: list[Outcome] = []
    processes = 1
    index = 0
    while index < len(kinds):
        kind = kinds[index]
        index += 1
        runner = run_corruption if kind.startswith("corrupt") else inject
        outcome = runner(kind, args, run_dir, rng, timing, index)
        processes += 0 if outcome.notes[:1] == ["not injected: fewer than 2 checkpoints"] else 1
        steps = row_count(run_dir) - 1
        if outcome.notes[:1] == ["not injected: fewer than 2 checkpoints"]:
            later = [i for i in range(index, len(kinds)) if not kinds[i].startswith("corrupt")]
            if later:  # after the next signal fault, which makes progress
                kinds.insert(later[0] + 1, kind)
                kinds.pop(index - 1)
                index -= 1
                print(f"  {kind}: fewer than 2 checkpoints yet, moved later", flush=True)
                continue
        outcomes.append(outcome)
        mark = "ok" if outcome.survived else "FAILED"
        print(f"[{index:2d}/{len(kinds)}] {kind:16s} {mark:6s} at step {steps:3d}  "
              f"{'; '.join(outcome.notes)}", flush=True)  # fmt: skip
        if row_count(run_dir) > args.iterations and (run_dir / "summary.json").is_file():
            print("  the run finished before every fault was injected", flush=True)
            break

    print("final resume, uninterrupted", flush=True)
    done = subprocess.run(resume_cmd(run_dir), cwd=REPO, env=ENV, capture_output=True, text=True)
    processes += 1
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
    expected, got = rows(work / "reference"), rows(run_dir)
    final_hash = policy_hash(run_dir, args.iterations) if done.returncode == 0 else ""
    final = {
        "hash": final_hash,
        "hash_equal": done.returncode == 0
        and final_hash == policy_hash(work / "reference", args.iterations),
        "rows_equal": got == expected,
        "rows": len(got),
        "contiguous": [r["step"] for r in got] == list(range(args.iterations + 1)),
        "processes": processes,
    }
    wall = time.monotonic() - began
    report = table(args, outcomes, final, wall)
    command = (
        f"python benchmarks/faults.py --iterations {args.iterations} --sigkills {args.sigkills} "
        f"--sigterms {args.sigterms} --corruptions {args.corruptions} --seed {args.seed}"
    )
    shown = shlex.join(overrides(args, Path("RUN"))[:-1])
    publish(args, work, "# Fault-injection soak", command, shown, report)
    ok = final["hash_equal"] and final["rows_equal"] and all(o.survived for o in outcomes)
    return 0 if ok else 1


def publish(
    args: argparse.Namespace, work: Path, heading: str, command: str, shown: str, report: str
) -> None:
    """Print the report and write it as this mode's section of ``args.out``."""
    text = (
        f"{heading}\n\n`{command}` on {platform.machine()} ({os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}); `{shown}`.\n\n{report}\n"
    )
    print("\n" + report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_section(args.out, text)
    print(f"\nwritten to {args.out}")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
