"""Runs that survive a cluster: checkpoint manifests, fallback on corruption, keep_best,
failed writes (ENOSPC/EIO simulated through io.write_all), and preemption signals."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from remix_rft.trainer import checkpoint as ckpt
from remix_rft.trainer import io as rio
from remix_rft.trainer.metrics import MetricsLog, MetricsWriteError
from remix_rft.trainer.preemption import (
    PREEMPTED_EXIT_CODE,
    PreemptionHandler,
    resume_hint,
    validate_signal_names,
)


class FakeModel:
    """What save_checkpoint needs of a model: ``save_pretrained(directory)``."""

    def __init__(self, payload: bytes = b"weights" * 100, fail: OSError | None = None) -> None:
        self.payload, self.fail = payload, fail

    def save_pretrained(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(self.payload)
        (directory / "config.json").write_text('{"hidden": 8}')
        if self.fail is not None:
            raise self.fail


def save(run_dir: Path, step: int, **kwargs: Any) -> Path:
    models = kwargs.pop("models", {"policy": FakeModel(bytes([step]) * 64)})
    kwargs.setdefault("keep", 5)
    return ckpt.save_checkpoint(run_dir, step, models, {"step": step}, **kwargs)


def pointer(run_dir: Path) -> str:
    return (ckpt.checkpoint_root(run_dir) / ckpt.LATEST).read_text().strip()


def leftovers(run_dir: Path) -> list[str]:
    root = ckpt.checkpoint_root(run_dir)
    return sorted(p.name for p in root.iterdir() if p.name.endswith((".tmp", ".old")))


# ---- manifest -------------------------------------------------------------------------
def test_manifest_lists_every_file_and_verifies(tmp_path):
    path = save(tmp_path, 1, score=0.25)
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    assert sorted(manifest["files"]) == [
        "policy/config.json", "policy/model.safetensors", ckpt.STATE_FILE,
    ]  # fmt: skip
    entry = manifest["files"]["policy/model.safetensors"]
    assert entry["size"] == 64 and len(entry["sha256"]) == 64
    assert manifest["score"] == 0.25
    assert ckpt.verify_checkpoint(path) is None
    assert ckpt.load_state(path) == {"step": 1}
    assert pointer(tmp_path) == "step_000001" and leftovers(tmp_path) == []


def test_write_manifest_covers_files_other_ranks_wrote(tmp_path):
    """The DCP path: several writers fill the .tmp dir, rank 0 writes the manifest after."""
    tmp = ckpt.begin_checkpoint(tmp_path, 3)
    (tmp / "dcp").mkdir()
    for rank in range(2):
        (tmp / "dcp" / f"__{rank}_0.distcp").write_bytes(os.urandom(100))
        torch.save({"rank": rank}, tmp / f"rank_{rank:05d}.pt")
    torch.save({"format": "dcp"}, tmp / ckpt.STATE_FILE)
    final = ckpt.commit_checkpoint(tmp, keep=2)
    assert len(json.loads((final / ckpt.MANIFEST).read_text())["files"]) == 5
    assert ckpt.verify_checkpoint(final) is None and ckpt.latest_checkpoint(tmp_path) == final


def test_truncated_file_is_detected_naming_it(tmp_path):
    path = save(tmp_path, 1)
    weights = path / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:10])
    reason = ckpt.verify_checkpoint(path)
    assert reason is not None and "policy/model.safetensors" in reason and "size" in reason


def test_bit_flip_is_detected_naming_it(tmp_path):
    path = save(tmp_path, 1)
    state = path / ckpt.STATE_FILE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    reason = ckpt.verify_checkpoint(path)
    assert reason is not None and ckpt.STATE_FILE in reason and "checksum" in reason


def test_missing_file_and_missing_manifest_are_named(tmp_path):
    path = save(tmp_path, 1)
    (path / "policy" / "config.json").unlink()
    assert ckpt.verify_checkpoint(path) == "policy/config.json: missing"
    (path / ckpt.MANIFEST).unlink()
    (path / ckpt.STATE_FILE).unlink()
    assert "no manifest.json" in ckpt.verify_checkpoint(path)


# ---- choosing the checkpoint to resume from ------------------------------------------
def test_corrupt_newest_falls_back_to_the_previous_naming_both(tmp_path, caplog):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    (newest / "policy" / "model.safetensors").write_bytes(b"x" * 64)  # same size, other bytes
    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        choice = ckpt.resolve_resume_checkpoint(tmp_path)
    assert choice.path is not None and choice.path.name == "step_000001"
    assert [(p.name, "policy/model.safetensors" in r) for p, r in choice.skipped] == [
        ("step_000002", True)
    ]
    line = choice.summary()
    assert line is not None and "step_000001" in line and "step_000002" in line
    assert "\n" not in line and "step_000002" in caplog.text
    assert ckpt.latest_checkpoint(tmp_path) == choice.path  # the old API, same choice


def test_every_checkpoint_corrupt_is_a_clear_error(tmp_path):
    for step in (1, 2):
        (save(tmp_path, step) / ckpt.STATE_FILE).write_bytes(b"")
    with pytest.raises(ckpt.NoValidCheckpointError) as info:
        ckpt.latest_checkpoint(tmp_path)
    message = str(info.value)
    assert "step_000001" in message and "step_000002" in message
    assert ckpt.STATE_FILE in message and "no valid checkpoint" in message


def test_no_checkpoint_at_all_is_none(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert ckpt.resolve_resume_checkpoint(tmp_path).summary() is None


def test_legacy_checkpoint_without_manifest_still_loads(tmp_path, caplog):
    legacy = ckpt.checkpoint_root(tmp_path) / "step_000004"
    (legacy / "policy").mkdir(parents=True)
    (legacy / "policy" / "model.safetensors").write_bytes(b"old")
    torch.save({"counters": {"step": 4}}, legacy / ckpt.STATE_FILE)
    (legacy.parent / ckpt.LATEST).write_text("step_000004\n")
    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        choice = ckpt.resolve_resume_checkpoint(tmp_path)
    assert choice.path == legacy and choice.legacy and not choice.skipped
    assert "no manifest.json" in caplog.text
    assert ckpt.load_state(legacy)["counters"]["step"] == 4
    assert ckpt.verify_checkpoint(legacy, allow_legacy=False) == "no manifest.json"


def test_a_renamed_checkpoint_is_used_even_if_latest_was_not_switched(tmp_path):
    save(tmp_path, 1)
    save(tmp_path, 2)
    (ckpt.checkpoint_root(tmp_path) / ckpt.LATEST).write_text("step_000001\n")  # killed between
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000002"


# ---- retention ----------------------------------------------------------------------
def test_keep_best_keeps_the_last_n_plus_the_best_scoring(tmp_path):
    scores = {1: 0.2, 2: 0.9, 3: None, 4: 0.5, 5: None, 6: 0.4}
    for step, score in scores.items():
        save(tmp_path, step, keep=2, keep_best=True, score=score)
    names = [p.name for p in ckpt.list_checkpoints(ckpt.checkpoint_root(tmp_path))]
    assert names == ["step_000002", "step_000005", "step_000006"]
    assert ckpt.best_checkpoint(tmp_path).name == "step_000002"
    save(tmp_path, 7, keep=2, keep_best=True, score=0.95)  # a new best: step 2 may go
    names = [p.name for p in ckpt.list_checkpoints(ckpt.checkpoint_root(tmp_path))]
    assert names == ["step_000006", "step_000007"]


def test_without_keep_best_only_the_last_n_stay(tmp_path):
    for step, score in {1: 0.9, 2: 0.1, 3: 0.1}.items():
        save(tmp_path, step, keep=2, score=score)
    names = [p.name for p in ckpt.list_checkpoints(ckpt.checkpoint_root(tmp_path))]
    assert names == ["step_000002", "step_000003"]


def test_resaving_a_step_replaces_it_whole(tmp_path):
    save(tmp_path, 1)
    again = save(tmp_path, 1, models={"policy": FakeModel(b"new" * 10)})
    assert (again / "policy" / "model.safetensors").read_bytes() == b"new" * 10
    assert ckpt.verify_checkpoint(again) is None and leftovers(tmp_path) == []


# ---- failed writes --------------------------------------------------------------------
def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = rio.write_all

    def counting(fd: int, data: Any) -> None:
        calls.append(fd)
        real(fd, data)

    monkeypatch.setattr(rio, "write_all", counting)
    return calls


def _fail_write_number(monkeypatch: pytest.MonkeyPatch, n: int, code: int) -> None:
    """The n-th write_all call (0-based) writes half its bytes, then fails with ``code``."""
    calls = [0]
    real = rio.write_all

    def failing(fd: int, data: Any) -> None:
        calls[0] += 1
        if calls[0] - 1 == n:
            view = memoryview(data)
            real(fd, view[: len(view) // 2])
            raise OSError(code, os.strerror(code))
        real(fd, data)

    monkeypatch.setattr(rio, "write_all", failing)


def test_enospc_at_every_write_of_a_checkpoint_leaves_the_previous_intact(tmp_path, monkeypatch):
    """Fail each write of a save in turn (state, manifest, latest): always the same outcome."""
    with monkeypatch.context() as m:
        calls = _count_writes(m)
        save(tmp_path / "probe", 1)
    assert len(calls) >= 3  # trainer_state.pt, manifest.json, latest
    for n in range(len(calls)):
        run_dir = tmp_path / f"run{n}"
        previous = save(run_dir, 1)
        with monkeypatch.context() as m:
            _fail_write_number(m, n, errno.ENOSPC)
            with pytest.raises(ckpt.CheckpointWriteError) as info:
                save(run_dir, 2)
        message = str(info.value)
        assert "ENOSPC" in message and "step_000002.tmp" in message
        assert "previous checkpoint step_000001 is intact" in message
        assert info.value.errno == errno.ENOSPC
        assert pointer(run_dir) == "step_000001" and leftovers(run_dir) == []
        assert not (ckpt.checkpoint_root(run_dir) / "step_000002").exists()
        assert not (ckpt.checkpoint_root(run_dir) / "latest.tmp").exists()
        assert ckpt.verify_checkpoint(previous) is None
        assert ckpt.latest_checkpoint(run_dir) == previous


def test_eio_while_a_model_is_saved_names_the_errno(tmp_path):
    save(tmp_path, 1)
    broken = FakeModel(fail=OSError(errno.EIO, os.strerror(errno.EIO)))
    with pytest.raises(ckpt.CheckpointWriteError, match="EIO") as info:
        save(tmp_path, 2, models={"policy": broken})
    assert "step_000001 is intact" in str(info.value)
    assert pointer(tmp_path) == "step_000001" and leftovers(tmp_path) == []
    sent = pickle.loads(pickle.dumps(info.value))  # as env.on_main sends it to every rank
    assert sent.errno == errno.EIO and str(sent) == str(info.value)


def test_enospc_inside_torch_save_is_not_masked_by_its_zip_writer(tmp_path, monkeypatch):
    """A write failing while torch.save is still writing (state > the 1 MiB buffer) makes the
    zip writer raise its own RuntimeError ("unexpected pos") on close; the ENOSPC behind it is
    what is reported (found in the exception chain), as for a failure at the final flush."""
    save(tmp_path, 1)
    with monkeypatch.context() as m:
        _fail_write_number(m, 0, errno.ENOSPC)
        with pytest.raises(ckpt.CheckpointWriteError, match="ENOSPC") as info:
            ckpt.save_checkpoint(
                tmp_path, 2, {"policy": FakeModel()}, {"big": torch.zeros(3 << 18)}, keep=5
            )
    assert "step_000001 is intact" in str(info.value) and info.value.errno == errno.ENOSPC
    assert pointer(tmp_path) == "step_000001" and leftovers(tmp_path) == []


def test_safetensors_style_error_counts_as_a_write_failure(tmp_path):
    """safetensors reports a full disk as its own (non-OSError) type, errno in the message."""

    class SafetensorError(Exception):
        pass

    class RustModel(FakeModel):
        def save_pretrained(self, directory: Path) -> None:
            raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    with pytest.raises(ckpt.CheckpointWriteError, match="ENOSPC.*no previous checkpoint"):
        save(tmp_path, 1, models={"policy": RustModel()})
    assert leftovers(tmp_path) == [] and ckpt.latest_checkpoint(tmp_path) is None


def test_a_non_io_error_is_not_disguised_but_the_tmp_dir_is_removed(tmp_path):
    class Buggy(FakeModel):
        def save_pretrained(self, directory: Path) -> None:
            raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        save(tmp_path, 1, models={"policy": Buggy()})
    assert leftovers(tmp_path) == []


def test_metrics_append_failure_leaves_whole_lines(tmp_path, monkeypatch):
    metrics = MetricsLog(tmp_path / "metrics.jsonl")
    metrics.append({"step": 0, "loss": 1.0})
    metrics.append({"step": 1, "loss": 0.5})
    with monkeypatch.context() as m:
        _fail_write_number(m, 0, errno.ENOSPC)  # half the line reaches the file, then ENOSPC
        with pytest.raises(MetricsWriteError, match="ENOSPC") as info:
            metrics.append({"step": 2, "loss": 0.25})
    assert "metrics.jsonl" in str(info.value)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1]
    metrics.append({"step": 2, "loss": 0.25})  # space freed: the run goes on
    assert [r["step"] for r in metrics.read()] == [0, 1, 2]


def test_metrics_append_after_a_torn_line_starts_a_new_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "lo')  # killed mid-write by an older version
    MetricsLog(path).append({"step": 1})
    assert [r["step"] for r in MetricsLog(path).read()] == [0, 1]


# ---- preemption -----------------------------------------------------------------------
def _wait_for(flag: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not flag() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_sigterm_sets_the_flag_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionHandler() as handler:
        assert handler.active and not handler.requested
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for(lambda: handler.requested)
        assert handler.requested and handler.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGUSR1)  # a second signal: recorded, nothing else
        _wait_for(lambda: len(handler.received) == 2)
        assert handler.signal_name == "SIGTERM" and handler.received == ["SIGTERM", "SIGUSR1"]
    assert signal.getsignal(signal.SIGTERM) is before and not handler.active


def test_nested_handlers_share_a_request_both_ways():
    """The trainer holds one over startup and shutdown, the loop its own inside it."""
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionHandler() as outer:
        os.kill(os.getpid(), signal.SIGUSR1)  # during startup
        _wait_for(lambda: outer.requested)
        with PreemptionHandler() as inner:
            assert inner.requested and inner.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGTERM) is before
    with PreemptionHandler() as outer:
        with PreemptionHandler() as inner:
            os.kill(os.getpid(), signal.SIGTERM)  # during the loop
            _wait_for(lambda: inner.requested)
        assert signal.getsignal(signal.SIGTERM) == outer._handle  # the outer one again
        assert outer.requested and outer.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # during shutdown: recorded, nothing else
        _wait_for(lambda: outer.received)
        assert outer.received == ["SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_signal_names_are_validated():
    assert validate_signal_names(["sigusr2", "SIGTERM"]) == (signal.SIGUSR2, signal.SIGTERM)
    with pytest.raises(ValueError, match="unknown signal name 'SIGNOPE'"):
        PreemptionHandler(["SIGNOPE"])
    with pytest.raises(ValueError, match="SIGKILL"):
        PreemptionHandler(["SIGKILL"])


def test_outside_the_main_thread_it_is_a_noop_with_a_warning(caplog):
    before = signal.getsignal(signal.SIGTERM)
    states: list[bool] = []

    def worker() -> None:
        with PreemptionHandler() as handler:
            states.append(handler.active)

    with caplog.at_level(logging.WARNING):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert states == [False] and "main thread" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_hint_names_the_step_and_the_command(tmp_path):
    save(tmp_path, 12)
    assert resume_hint(tmp_path) == (
        f"preempted at step 12: resume with remix train --resume {tmp_path}"
    )
    assert PREEMPTED_EXIT_CODE == 75
