"""Checkpoints: model weights as safetensors, trainer state via ``torch.save``, and a manifest.

A checkpoint directory is written under a temporary name (``step_NNNNNN.tmp``); when every
file is in it, ``manifest.json`` (relative path, size and sha256 of each file) is written
last, the directory is renamed to ``step_NNNNNN`` and ``latest`` is switched atomically. So a
run killed at any moment resumes from the last whole checkpoint, and a checkpoint damaged
later (a truncated copy, a flipped bit, a file lost on a shared filesystem) is detected on
resume, which then falls back to the newest checkpoint that still verifies.

The manifest (written, read, verified) is in ``manifest.py``. Checkpoints written before
manifests existed (``trainer_state.pt`` but no ``manifest.json``)
still load, unverified, with a warning.

A write that fails (ENOSPC, EIO) raises :class:`CheckpointWriteError`, removes the partial
directory and leaves the previous checkpoint and ``latest`` as they were.

The single-process trainer calls :func:`save_checkpoint`. The sharded (DCP) path, where each
rank writes its own files into the temporary directory, uses the pieces: every rank writes into
:func:`begin_checkpoint`'s directory, then rank 0 alone calls :func:`commit_checkpoint` (or, on
failure, :func:`abort_checkpoint`).
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import logging
import math
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from remix_rft.trainer import io as rio  # module attribute: tests replace rio.write_all
from remix_rft.trainer.manifest import (
    MANIFEST,
    STATE_FILE,
    TMP_SUFFIX,
    checkpoint_score,
    verify_checkpoint,
    write_manifest,
)

log = logging.getLogger(__name__)

LATEST = "latest"
OLD_SUFFIX = ".old"  # a same-step checkpoint moved aside while its replacement is renamed in
_STEP_DIR = re.compile(r"step_(\d+)")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous checkpoint and ``latest`` are intact."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code  # still an OSError a caller can switch on (ENOSPC: free space)

    def __reduce__(self) -> tuple[type, tuple[str, int | None]]:
        # keeps errno across pickling (env.on_main sends rank 0's exception to every rank)
        return type(self), (str(self.args[0]), self.errno)


class NoValidCheckpointError(FileNotFoundError):
    """Checkpoints exist but none verifies; the message lists each one and why."""


@dataclass(frozen=True)
class CheckpointChoice:
    """The checkpoint a resume uses, and the newer ones it skipped (with the reason)."""

    path: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    legacy: bool = False  # no manifest: written before manifests existed, loaded unverified

    def summary(self) -> str | None:
        """One line naming the checkpoint used and each one skipped; None if none was skipped."""
        if not self.skipped:
            return None
        used = self.path.name if self.path is not None else "nothing"
        skipped = "; ".join(f"{p.name} ({reason})" for p, reason in self.skipped)
        return f"resuming from {used}: skipped newer invalid checkpoint(s) {skipped}"


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``step_NNNNNN`` directory name; None for anything else (``.tmp``, ``.old``)."""
    match = _STEP_DIR.fullmatch(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: Path) -> list[Path]:
    """Renamed (finished) checkpoint directories, oldest step first; nothing is verified."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if checkpoint_step(p) is not None and p.is_dir()]
    return sorted(dirs, key=lambda p: checkpoint_step(p) or 0)


# ---- writing ------------------------------------------------------------------------
def _tmp_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_root(run_dir) / (step_dir_name(step) + TMP_SUFFIX)


def latest_pointer(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names (else the newest renamed one), without verifying it:
    cheap, for messages; resume uses :func:`resolve_resume_checkpoint`."""
    root = checkpoint_root(run_dir)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        name = (root / LATEST).read_text().strip()
        if name and checkpoint_step(root / name) is not None and (root / name).is_dir():
            return root / name
    done = list_checkpoints(root)
    return done[-1] if done else None


def _io_failure(exc: BaseException) -> OSError | None:
    """The OSError behind an I/O failure, else None. safetensors (Rust) reports a full disk as
    its own exception type whose message carries the errno ("... (os error 28)"); torch.save,
    when a write fails inside it, raises a RuntimeError of its zip writer ("unexpected pos")
    while closing the archive, with the OSError as its context: the chain is searched."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError):
            return cause
        match = re.search(r"os error (\d+)", str(cause))
        if match is not None:
            code = int(match.group(1))
            return OSError(code, os.strerror(code))
        cause = cause.__cause__ or cause.__context__
    return None


def _write_error(tmp: Path, failure: OSError, previous: Path | None) -> CheckpointWriteError:
    code = failure.errno
    name = errno_mod.errorcode.get(code, f"errno {code}") if code is not None else "I/O error"
    intact = (
        f"the previous checkpoint {previous.name} is intact and '{LATEST}' still names it"
        if previous is not None
        else "there is no previous checkpoint"
    )
    return CheckpointWriteError(
        f"checkpoint write to {tmp} failed: {name} ({failure.strerror or failure}); "
        f"the partial directory was removed; {intact}",
        code,
    )


def abort_checkpoint(tmp: Path, error: BaseException) -> BaseException:
    """Remove the partial directory ``tmp`` and return the exception to raise: a
    :class:`CheckpointWriteError` for an I/O failure (ENOSPC, EIO), else ``error`` itself.

    Sharded (DCP) path: when any rank's write failed, rank 0 calls this (the others must not
    touch ``tmp``); ``latest`` and the previous checkpoint are left as they are."""
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(error, CheckpointWriteError):
        return error
    failure = _io_failure(error)
    if failure is None:
        return error
    wrapped = _write_error(tmp, failure, latest_pointer(tmp.parent.parent))
    wrapped.__cause__ = error
    return wrapped


def _fail(tmp: Path, exc: BaseException) -> NoReturn:
    error = abort_checkpoint(tmp, exc)
    if error is exc:
        raise exc
    raise error from exc


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """A fresh, empty ``step_NNNNNN.tmp`` to write a checkpoint into (a stale one is removed).
    Sharded path: rank 0 calls it, then a barrier, then every rank writes its files."""
    tmp = _tmp_dir(run_dir, step)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def save_state(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through :func:`remix_rft.trainer.io.write_all`, fsynced."""
    with rio.open_for_write(path) as fh:
        torch.save(state, fh)


def _rename_into_place(tmp: Path, final: Path) -> Path | None:
    """Rename ``tmp`` to ``final``; a same-step checkpoint already there is moved aside (and
    returned) rather than deleted, so it survives until its replacement is published."""
    old = None
    if final.exists():
        old = final.with_name(final.name + OLD_SUFFIX)
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    try:
        tmp.rename(final)
    except BaseException:
        if old is not None:
            old.rename(final)
        raise
    return old


def _roll_back(final: Path, old: Path | None) -> None:
    shutil.rmtree(final, ignore_errors=True)
    if old is not None:
        with contextlib.suppress(OSError):
            old.rename(final)


def commit_checkpoint(
    tmp: Path, *, keep: int, keep_best: bool = False, score: float | None = None
) -> Path:
    """Publish the finished directory ``tmp``: manifest (last), rename, switch ``latest``; only
    then prune to the newest ``keep`` (plus, with ``keep_best``, the best ``score``).

    On an I/O failure: :class:`CheckpointWriteError`, nothing of the new checkpoint is left and
    the previous checkpoint and ``latest`` are untouched. Sharded path: rank 0 only, after the
    barrier that follows every rank's writes (wrap it in ``env.on_main`` so an error reaches
    every rank instead of leaving them waiting)."""
    root = tmp.parent
    final = root / tmp.name.removesuffix(TMP_SUFFIX)
    try:
        write_manifest(tmp, score=score)
        old = _rename_into_place(tmp, final)
    except BaseException as exc:
        _fail(tmp, exc)
    try:
        rio.atomic_write_text(root / LATEST, final.name + "\n")
        rio.fsync_dir(root)  # the rename and the pointer survive a power loss together
    except BaseException as exc:
        _roll_back(final, old)  # first, so the message names the checkpoint `latest` names
        _fail(tmp, exc)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    prune_checkpoints(root, keep, keep_best=keep_best)
    return final


def save_checkpoint(
    run_dir: Path,
    step: int,
    models: dict[str, Any],
    state: dict[str, Any],
    *,
    keep: int,
    keep_best: bool = False,
    score: float | None = None,
) -> Path:
    """Write ``models`` (each via ``save_pretrained``) and ``state``, publish, prune.

    ``score``: this step's eval accuracy (higher is better), None if it was not evaluated; with
    ``keep_best`` the best-scoring checkpoint is kept besides the newest ``keep``. Raises
    :class:`CheckpointWriteError` (previous checkpoint intact, no ``.tmp`` left) if a write fails.
    """
    tmp = _tmp_dir(run_dir, step)
    try:
        begin_checkpoint(run_dir, step)
        for name, model in models.items():
            model.save_pretrained(tmp / name)
        save_state(state, tmp / STATE_FILE)
    except BaseException as exc:
        _fail(tmp, exc)
    return commit_checkpoint(tmp, keep=keep, keep_best=keep_best, score=score)


# ---- retention ----------------------------------------------------------------------
def _best(directories: list[Path]) -> Path | None:
    """The highest-scoring checkpoint; the earliest on ties (as the trainer's best-so-far)."""
    best, best_score = None, -math.inf
    for directory in directories:
        score = checkpoint_score(directory)
        if score is not None and math.isfinite(score) and score > best_score:
            best, best_score = directory, score
    return best


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint saved with the highest score; None if none has one."""
    return _best(list_checkpoints(checkpoint_root(run_dir)))


def prune_checkpoints(
    root: Path, keep: int, *, keep_best: bool = False, protect: Path | None = None
) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and, with ``keep_best``, the best-scoring
    one, and ``protect``) and leftovers of interrupted writes; returns what was deleted. Call it
    after a new checkpoint is published (:func:`commit_checkpoint` does), or on resume with the
    checkpoint resumed from as ``protect`` (the run directory locked: no write in progress)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the checkpoint just written), got {keep}")
    for stale in [*root.glob(f"step_*{TMP_SUFFIX}"), *root.glob(f"step_*{OLD_SUFFIX}")]:
        shutil.rmtree(stale, ignore_errors=True)
    done = list_checkpoints(root)
    kept = set(done[-keep:])
    best = _best(done) if keep_best else None
    if best is not None:
        kept.add(best)
    if protect is not None:
        kept.add(protect)
    removed = [d for d in done if d not in kept]
    for directory in removed:
        shutil.rmtree(directory, ignore_errors=True)
    return removed


def _prune(root: Path, keep: int) -> None:
    """Kept for callers of the old name (ranks.py); use :func:`prune_checkpoints`."""
    prune_checkpoints(root, keep)


# ---- choosing a checkpoint to resume from ------------------------------------------
def resolve_resume_checkpoint(run_dir: Path) -> CheckpointChoice:
    """The newest checkpoint that verifies, and the newer ones skipped (each logged).

    Newest by step, not by ``latest``: the manifest is written before the rename, so a renamed
    directory that verifies is whole even if the run was killed before ``latest`` named it.
    ``path`` is None when there are no checkpoints; :class:`NoValidCheckpointError` when there
    are some but none verifies. Hashes the files: under torchrun resolve on rank 0 only."""
    root = checkpoint_root(run_dir)
    skipped: list[tuple[Path, str]] = []
    for directory in reversed(list_checkpoints(root)):
        reason = verify_checkpoint(directory)
        if reason is None:
            legacy = not (directory / MANIFEST).is_file()
            choice = CheckpointChoice(directory, skipped, legacy)
            if skipped:
                log.warning("%s", choice.summary())
            return choice
        log.warning("checkpoint %s is invalid: %s", directory, reason)
        skipped.append((directory, reason))
    if skipped:
        listing = "; ".join(f"{p.name}: {reason}" for p, reason in skipped)
        raise NoValidCheckpointError(
            f"no valid checkpoint in {root} ({listing}); restore one from a copy, or move them "
            "away to restart the run from step 0"
        )
    return CheckpointChoice(None)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest valid checkpoint (see :func:`resolve_resume_checkpoint`); None if none exists."""
    return resolve_resume_checkpoint(run_dir).path


def load_state(checkpoint: Path) -> dict[str, Any]:
    return load_torch_file(checkpoint / STATE_FILE)


def load_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a file that is not a trainer state (a foreign
    pickle, another format) is a ValueError naming it. torch's own message would suggest
    ``weights_only=False``, i.e. running the file's code, which remix never does (#36.12)."""
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        found = re.search(r"Unsupported (?:global: GLOBAL \S+|operand \S+)", str(err))
        what = found.group(0) if found else str(err).splitlines()[0][:200]
        raise ValueError(
            f"{path} is not a remix-rft trainer state ({what}); checkpoints hold only tensors "
            "and plain data, and remix loads nothing else from them"
        ) from None
