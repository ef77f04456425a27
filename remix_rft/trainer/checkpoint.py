"""Checkpoints: model weights as safetensors, trainer state via ``torch.save``.

A checkpoint directory is written under a temporary name and renamed when
complete, then ``latest`` is switched atomically, so a run killed at any moment
resumes from the last whole checkpoint.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from remix_rft.trainer.io import atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
LATEST = "latest"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    models: dict[str, Any],
    state: dict[str, Any],
    *,
    keep: int,
) -> Path:
    """Write ``models`` (each via ``save_pretrained``) and ``state``; prune old checkpoints."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, model in models.items():
        model.save_pretrained(tmp / name)
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    atomic_write_text(root / LATEST, final.name + "\n")
    _prune(root, keep)
    return final


def _complete_checkpoints(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.glob("step_*")
        if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_FILE).is_file()
    )


def _prune(root: Path, keep: int) -> None:
    for stale in root.glob("step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in _complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    complete = _complete_checkpoints(root) if root.is_dir() else []
    return complete[-1] if complete else None


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, weights_only=True)
