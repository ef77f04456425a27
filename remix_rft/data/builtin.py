"""Datasets that ship inside the package: the paper's five benchmarks and the MATH train split.

A config or loader names one as ``builtin:NAME`` (``builtin:math_train``,
``builtin:math500``); anything else is a file path or a Hugging Face dataset id.
Provenance and licences: ``remix_rft/assets/data/PROVENANCE.md``.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_PREFIX = "builtin:"
BUILTIN_DATA_DIR = Path(__file__).resolve().parents[1] / "assets" / "data"
BUILTIN_BENCHMARK_DIR = BUILTIN_DATA_DIR / "benchmarks"

# name -> file under BUILTIN_DATA_DIR
BUILTIN_DATASETS: dict[str, str] = {
    "math_train": "train/math_train.json",
    "aime24": "benchmarks/aime24.json",
    "amc23": "benchmarks/amc23.json",
    "math500": "benchmarks/math500.json",
    "minerva": "benchmarks/minerva.json",
    "olympiadbench": "benchmarks/olympiadbench.json",
}


def is_builtin(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(BUILTIN_PREFIX)


def builtin_path(source: str) -> Path:
    """The shipped file behind ``builtin:NAME``; an unknown name is an error listing the known."""
    name = source[len(BUILTIN_PREFIX) :] if is_builtin(source) else source
    if name not in BUILTIN_DATASETS:
        known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_DATASETS)
        raise ValueError(f"unknown shipped dataset {source!r}; shipped: {known}")
    return BUILTIN_DATA_DIR / BUILTIN_DATASETS[name]
