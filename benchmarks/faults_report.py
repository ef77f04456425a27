"""The report of the fault soaks: the table of faults injected vs survived (the async soak
counts its own kinds with ``fault_rows``), the final checks, and ``faults.md``, one section per
mode."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
from collections import Counter
from pathlib import Path

from faults_runs import Outcome

KINDS = {
    "kill-random": "SIGKILL at a random moment",
    "kill-step": "SIGKILL right after a step line (its checkpoint being written)",
    "term-random": "SIGTERM ×2 at a random moment",
    "term-step": "SIGTERM ×2 right after a step line",
    "corrupt-truncate": "newest checkpoint truncated (a file cut in half)",
    "corrupt-bitflip": "newest checkpoint bit-flipped (one bit of the weights)",
}

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
