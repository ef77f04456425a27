"""What the benchmark scripts share: printing a finished table and writing it to a file."""

from __future__ import annotations

from pathlib import Path


def publish(table: str, out: Path) -> None:
    """Print ``table`` and write it to ``out`` (its folder made if missing)."""
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
