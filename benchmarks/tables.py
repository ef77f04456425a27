"""What the benchmark scripts share: the command that reproduces a table, and printing a
finished table and writing it to a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def publish(table: str, out: Path) -> None:
    """Print ``table`` and write it to ``out`` (its folder made if missing)."""
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")


def reproduce_args(argv: Sequence[str]) -> list[str]:
    """The command line without what only says where runs live or when to stop launching:
    the printed command is the one a reader runs to get the same table."""
    local = {"--runs-dir", "--deadline-s"}
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in local:
            skip = True
        elif arg != "--report-only" and arg.split("=", 1)[0] not in local:
            kept.append(arg)
    return kept
