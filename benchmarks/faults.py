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

This file holds the command line and the sync soak's order of faults; what both soaks share
about a run is in ``faults_runs.py``, the sync faults in ``faults_inject.py``, the table and
the results file in ``faults_report.py``.
"""

from __future__ import annotations

import argparse
import logging
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # its sibling modules, however it is started

from faults_inject import inject, run_corruption  # noqa: E402
from faults_report import ASYNC_HEADING, publish, table  # noqa: E402
from faults_runs import (  # noqa: E402
    ENV,
    Outcome,
    overrides,
    policy_hash,
    reference_run,
    resume_cmd,
    row_count,
    rows,
)


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


def parse_args() -> argparse.Namespace:
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
    return p.parse_args()


def main() -> int:
    args = parse_args()
    logging.getLogger("remix_rft").setLevel(logging.ERROR)  # our checks' own warnings
    if args.mode == "async":
        return main_async(args)
    return main_sync(args)


def main_sync(args: argparse.Namespace) -> int:
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

    run_dir = work / "faulted"
    outcomes, processes = soak(args, run_dir, rng, timing, schedule(args, rng))
    final = final_check(args, work / "reference", run_dir, processes)
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


def schedule(args: argparse.Namespace, rng: random.Random) -> list[str]:
    """The faults' kinds in the order they are injected, drawn from ``rng``."""
    kinds = [rng.choice(["kill-random", "kill-step"]) for _ in range(args.sigkills)] + [
        rng.choice(["term-random", "term-step"]) for _ in range(args.sigterms)
    ]
    rng.shuffle(kinds)
    corruptions = ["corrupt-truncate", "corrupt-bitflip"] * args.corruptions
    for i in range(args.corruptions):  # between signal faults, never first
        kinds.insert(rng.randrange(1, len(kinds) + 1), corruptions[i])
    return kinds


def soak(
    args: argparse.Namespace, run_dir: Path, rng: random.Random, timing: tuple, kinds: list[str]
) -> tuple[list[Outcome], int]:
    """Inject ``kinds`` one after the other into the run in ``run_dir``; the outcomes and the
    number of processes started (the reference's included). A corruption that finds fewer
    than 2 checkpoints is moved after the next signal fault."""
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
    return outcomes, processes


def final_check(args: argparse.Namespace, reference: Path, run_dir: Path, processes: int) -> dict:
    """Resume the faulted run to its end, uninterrupted, and compare it with the reference:
    the final weights and every ``metrics.jsonl`` row."""
    print("final resume, uninterrupted", flush=True)
    done = subprocess.run(resume_cmd(run_dir), cwd=REPO, env=ENV, capture_output=True, text=True)
    processes += 1
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
    expected, got = rows(reference), rows(run_dir)
    final_hash = policy_hash(run_dir, args.iterations) if done.returncode == 0 else ""
    return {
        "hash": final_hash,
        "hash_equal": done.returncode == 0
        and final_hash == policy_hash(reference, args.iterations),
        "rows_equal": got == expected,
        "rows": len(got),
        "contiguous": [r["step"] for r in got] == list(range(args.iterations + 1)),
        "processes": processes,
    }


if __name__ == "__main__":
    sys.exit(main())
