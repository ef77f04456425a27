"""Finished benchmark runs kept in the repository, so that a later session adds seeds
instead of training every seed again (run directories live and die with their machine).

One gzip'd JSON file per run, ``benchmarks/results/runs/SETTING/VARIANT/seedK.json.gz``:
the run's resolved configuration (its identity), its ``summary.json``, the commit it ran
at, and its ``metrics.jsonl`` cut to the keys the efficiency reports read (a few kB a
run). An archived run stands in for a missing run directory only when the variant still
resolves to the same configuration; a changed config file, default or override makes it
run again. A change of code alone does not: ``--no-archive`` ignores the archive.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

from remix_rft.apps.runs import RunRecord

ARCHIVE = Path(__file__).resolve().parent / "results" / "runs"
KEPT = {
    "step", "rollouts", "eval/accuracy", "time/step_s", "time/total_s", "reincarnated",
    "groups/uniform_frac", "groups/all_wrong_frac", "groups/all_correct_frac",
    "clip/frac", "kl/lambda",
    # the replay strategies' diagnostics (remix_rft/data/replay.py)
    "batch/informative_frac", "fresh/informative_frac", "replay/informative_frac",
    "replay/reuse_mean", "replay/reuse_max", "replay/samples", "offpolicy/fraction",
    "dynamic/rounds",
}  # fmt: skip
KEPT_AGE_SUFFIXES = ("/log_ratio_abs", "/clip_frac")
KEPT_PREFIXES = ("replay/age_",)
# where a run lives and how fast it ran: not part of what it computes
UNCOMPARED = ("out_dir", "threads", "device", "eval_threads")


def archive_path(setting: str, variant: str, seed: int, root: Path = ARCHIVE) -> Path:
    return root / setting / variant / f"seed{seed}.json.gz"


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration without where the run lived and its thread counts, in JSON
    types (a YAML tuple and a list compare equal)."""
    kept = {k: v for k, v in config.items() if k not in UNCOMPARED}
    return json.loads(json.dumps(kept, default=str, sort_keys=True))


def _kept(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in row.items()
        if k in KEPT
        or (k.startswith("age") and k.endswith(KEPT_AGE_SUFFIXES))
        or k.startswith(KEPT_PREFIXES)
    }


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent)  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def _read(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def save(run: RunRecord, path: Path) -> None:
    """Archive a finished run (its summary present) at ``path``; an archive that already
    holds the same run is left as it is (its commit too), so a report rewrites nothing."""
    if run.summary is None:
        raise ValueError(f"{run.path}: not finished (no summary.json); nothing archived")
    record = {
        "config": identity(run.config),
        "summary": run.summary,
        "rows": [_kept(r) for r in run.rows],
    }
    if path.is_file():
        old = _read(path)
        if all(old.get(k) == v for k, v in record.items()):
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({**record, "commit": _commit()}, separators=(",", ":"))
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(text.encode("utf-8"))


def _with_defaults(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the keys it predates filled in from ``defaults`` (one level into
    sections such as ``task``): a key added later with a default that keeps the old
    behaviour does not make an archived run different."""
    merged = {**defaults, **config}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            merged[key] = {**value, **config[key]}
    return merged


def load(path: Path, expected_config: dict[str, Any], defaults: dict[str, Any]) -> RunRecord | None:
    """The archived run at ``path`` if it ran ``expected_config`` (keys it predates taken
    at their ``defaults``); None if absent or if the variant is no longer defined that way."""
    if not path.is_file():
        return None
    record = _read(path)
    archived = _with_defaults(record.get("config", {}), identity(defaults))
    if archived != identity(expected_config):
        return None
    summary = record["summary"]
    return RunRecord(
        name=str(summary.get("name", path.parent.name)),
        path=path,
        algorithm=str(summary.get("algorithm", "")),
        rows=record["rows"],
        summary=summary,
        config=record["config"],
    )
