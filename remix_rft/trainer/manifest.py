"""Checkpoint manifests: ``manifest.json`` lists every file of a checkpoint with its size
and sha256, written last, so a directory with a valid manifest is by definition complete
and a file damaged later (truncated, a flipped bit, lost) is found before a resume loads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from remix_rft.trainer import io as rio  # module attribute: tests replace rio.write_all

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
TMP_SUFFIX = ".tmp"
_CHUNK = 8 << 20
# Hashing is I/O- and hashlib-bound (hashlib releases the GIL), so a few threads help on
# multi-GB checkpoints without taking every core from the training job.
_HASH_THREADS = max(1, min(4, os.cpu_count() or 1))


# ---- manifest -----------------------------------------------------------------------
def _payload_files(directory: Path) -> list[str]:
    """Relative paths of the files a manifest covers: all of them but the manifest itself and
    leftovers of an interrupted atomic write (``*.tmp``)."""
    files = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel != MANIFEST and not rel.endswith(TMP_SUFFIX):
            files.append(rel)
    return sorted(files)


def _sha256(path: Path, *, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
        if sync:  # files written by save_pretrained are not fsynced; make them durable
            os.fsync(fh.fileno())
    return digest.hexdigest()


def write_manifest(directory: Path, *, score: float | None = None) -> Path:
    """Record size and sha256 of every file under ``directory`` in ``manifest.json``.

    Call it LAST, when every file of the checkpoint is written and before the directory is
    renamed into place: a directory with a valid manifest is by definition complete. Files are
    fsynced as they are hashed, so the checkpoint is durable before it is published.

    Sharded (DCP) checkpoints: every rank writes its files into the same temporary directory;
    after a barrier (all ranks done), rank 0 alone calls this (a shared filesystem, which the
    DCP checkpoint needs anyway, lets it see the other ranks' files), then renames. ``score``
    (e.g. the eval accuracy at this step, higher is better) is kept for ``keep_best`` retention.
    """
    rels = _payload_files(directory)
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        sums = list(pool.map(lambda rel: _sha256(directory / rel, sync=True), rels))
    files = {
        rel: {"size": (directory / rel).stat().st_size, "sha256": digest}
        for rel, digest in zip(rels, sums, strict=True)
    }
    if score is not None and not math.isfinite(score):
        score = None  # NaN/inf is not JSON and cannot rank checkpoints
    manifest = {"format": MANIFEST_FORMAT, "score": score, "files": files}
    path = directory / MANIFEST
    rio.atomic_write_json(path, manifest)
    return path


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The parsed manifest; None if there is none; ValueError if it is unreadable."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{MANIFEST}: unreadable ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{MANIFEST}: not a checkpoint manifest (no 'files' table)")
    return manifest


def _check_files(directory: Path, files: dict[str, Any]) -> str | None:
    """The first missing or damaged file, sizes first (cheap) then checksums."""
    for rel, entry in files.items():
        path = directory / rel
        if not path.is_file():
            return f"{rel}: missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{rel}: size mismatch ({size} bytes, manifest says {entry.get('size')})"
    rels = list(files)
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        sums = list(pool.map(lambda rel: _sha256(directory / rel), rels))
    for rel, digest in zip(rels, sums, strict=True):
        if digest != files[rel].get("sha256"):
            return f"{rel}: checksum mismatch (sha256 {digest[:12]}..., manifest says {str(files[rel].get('sha256'))[:12]}...)"
    return None


def verify_checkpoint(directory: Path, *, allow_legacy: bool = True) -> str | None:
    """None if ``directory`` is a whole checkpoint, else why not, naming the file.

    A directory without a manifest but with ``trainer_state.pt`` was written before manifests
    existed: with ``allow_legacy`` it counts as valid (a warning is logged), so old runs still
    resume; otherwise the reason is the missing manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory}: not a directory"
    try:
        manifest = read_manifest(directory)
    except ValueError as err:
        return str(err)
    if manifest is None:
        if allow_legacy and (directory / STATE_FILE).is_file():
            log.warning(
                "checkpoint %s has no %s (written before manifests existed); loading it unverified",
                directory, MANIFEST,
            )  # fmt: skip
            return None
        return f"no {MANIFEST}"
    return _check_files(directory, manifest["files"])


def checkpoint_score(directory: Path) -> float | None:
    """The score stored in the manifest at save time; None if none (or no readable manifest)."""
    try:
        manifest = read_manifest(directory)
    except ValueError:
        return None
    score = manifest.get("score") if manifest else None
    return float(score) if isinstance(score, int | float) else None
