"""1 rank vs N ranks (torchrun, gloo on CPU) on the tiny ReMix-GRPO config.

Runs the same config for a fixed number of steps as one ordinary process and as
``torchrun --nproc-per-node N`` and prints final accuracy, wall-clock and the peak
resident memory of every rank (``resource.getrusage(...).ru_maxrss``)::

    python benchmarks/distributed.py --steps 30 --ranks 2 [--model DIR] [key=value ...]

On a 2-core machine two ranks share the cores that one rank uses alone, so they are
not faster; the point is that they reach the same accuracy band.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(out: Path, overrides: list[str]) -> None:
    """One rank (or the single process): train, then report this process's peak RSS."""
    from remix_rft.trainer.config import load_config
    from remix_rft.trainer.loop import train

    cfg = load_config("tiny-remix-grpo", overrides)
    summary = train(cfg)
    rank = int(os.environ.get("RANK", "0"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    (out / f"rank{rank}.json").write_text(json.dumps({"peak_rss_mib": peak_mib, **summary}))
    from remix_rft.engines.distributed import shutdown

    shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(ranks: int, out: Path, overrides: list[str], threads: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    script = [str(Path(__file__).resolve()), "--worker", str(out), "--", *overrides]
    if ranks == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}",
               f"--master-port={free_port()}", *script]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--out", default="runs/bench-distributed")
    parser.add_argument(
        "--threads-per-rank", type=int, default=0, help="torch threads (0: cores / ranks)"
    )
    parser.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.overrides)
        return 0
    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        parser.error(f"{args.out} already holds runs: pass --out NEW_DIR or remove it")
    rows = []
    for ranks in (1, args.ranks):
        out = Path(args.out) / f"ranks{ranks}"
        overrides = [
            f"model={args.model}", f"steps={args.steps}", f"out_dir={out / 'run'}",
            f"eval_every={args.steps}", "save_every=1000000", *args.overrides,
        ]  # fmt: skip
        threads = args.threads_per_rank or max(1, (os.cpu_count() or 2) // ranks)
        wall = launch(ranks, out, [*overrides, f"threads={threads}"], threads)
        reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]
        rows.append((ranks, reports[0], wall, [r["peak_rss_mib"] for r in reports]))
    print(f"\ntiny-remix-grpo, {args.steps} steps, {os.cpu_count()} CPU cores (gloo)\n")
    header = "| ranks | base acc | final acc | rollouts | train wall-clock s | process wall-clock s | peak RSS per rank MiB |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for ranks, summary, wall, peaks in rows:
        print(
            f"| {ranks} | {summary['base_eval_accuracy']:.3f} | {summary['final_eval_accuracy']:.3f} "
            f"| {summary['rollouts']} | {summary['wall_time_s']:.1f} | {wall:.1f} "
            f"| {', '.join(f'{p:.0f}' for p in peaks)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
