"""Fault injection, end to end: preemption signals, corrupt checkpoints, failed writes, retention.

The unit-level behaviour of the pieces (manifests, verification, fallback choice, ENOSPC at
every write, the signal handler) is in ``test_checkpoint_integrity.py``; here each fault hits
a real ``remix train`` run and the run must end as an uninterrupted run of the same seed would
(same ``metrics.jsonl`` rows but for ``time/*``, same final weights), or fail with the
documented message and nothing lost. The long soak (dozens of random kills) is
``benchmarks/faults.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remix_rft import cli
from remix_rft.trainer import checkpoint as ckpt
from remix_rft.trainer import io as rio
from remix_rft.trainer import loop
from remix_rft.trainer.loop import resume, train
from remix_rft.trainer.preemption import PREEMPTED_EXIT_CODE
from remix_rft.trainer.tasks import HeldOut

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny-grpo.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ---- helpers ---------------------------------------------------------------------------
def rows_without_time(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def policy_hash(run_dir: Path, step: int) -> str:
    """sha256 over the safetensors of the policy saved at ``step``."""
    policy = ckpt.checkpoint_root(run_dir) / ckpt.step_dir_name(step) / "policy"
    digest = hashlib.sha256()
    files = sorted(policy.glob("*.safetensors"))
    assert files, f"no safetensors in {policy}"
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def step_dirs(run_dir: Path) -> list[int]:
    return [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(ckpt.checkpoint_root(run_dir))]


def wait_for_rows(run_dir: Path, proc: subprocess.Popen, rows: int, timeout: float = 120) -> int:
    """Wait until ``metrics.jsonl`` holds ``rows`` lines; the last step logged."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before the fault could be injected"
        if metrics.is_file():
            lines = metrics.read_text().splitlines()
            if len(lines) >= rows:
                return int(json.loads(lines[-1])["step"])
        time.sleep(0.05)
    raise AssertionError(f"{metrics} did not reach {rows} rows in {timeout} s")


def train_args(run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "remix_rft", "train", CONFIG, "prompts_per_step=4", "group_size=4",
        "minibatch_size=16", "eval_every=3", "eval_problems=16", "threads=1",
        f"out_dir={run_dir}", *overrides,
    ]  # fmt: skip


def resume_args(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "remix_rft", "train", "--resume", str(run_dir)]


# ---- preemption ------------------------------------------------------------------------
def test_sigterm_checkpoints_the_step_exits_75_and_resume_matches_an_uninterrupted_run(tmp_path):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    # save_every=4: the signalled step is (usually) not a scheduled save, so the preemption
    # writes the checkpoint itself. The reference run shares the 2 cores meanwhile.
    overrides = ("steps=6", "save_every=4")
    reference = subprocess.Popen(train_args(straight, *overrides), cwd=ROOT, env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    proc = subprocess.Popen(train_args(cut, *overrides), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    logged = wait_for_rows(cut, proc, 3)  # base eval + 2 iterations logged
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # a scheduler repeating its notice: recorded, not obeyed
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - signalled
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]

    stopped = rows_without_time(cut)[-1]["step"]
    assert logged <= stopped <= logged + 1  # the iteration in progress, not one more
    assert stopped < 6
    per_step = max(json.loads(line).get("time/step_s", 0.0)
                   for line in (cut / "metrics.jsonl").read_text().splitlines())  # fmt: skip
    assert took < 15 + 4 * per_step, f"exit took {took:.1f} s"  # an update + a checkpoint
    assert step_dirs(cut)[-1] == stopped
    assert ckpt.verify_checkpoint(ckpt.checkpoint_root(cut) / ckpt.step_dir_name(stopped)) is None
    hint = f"preempted at step {stopped}: resume with remix train --resume {cut}"
    assert hint in stderr
    assert not (cut / "summary.json").exists()  # the run is not finished

    done = subprocess.run(resume_args(cut), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert reference.wait(timeout=240) == 0
    expected = rows_without_time(straight)
    assert [r["step"] for r in expected] == list(range(7))
    assert rows_without_time(cut) == expected
    assert policy_hash(cut, 6) == policy_hash(straight, 6)


def test_a_second_signal_during_the_preemption_save_is_only_recorded(tiny_config, monkeypatch):
    """In process, deterministic: the second SIGTERM lands inside ``Trainer.save``."""
    cfg = tiny_config("steps=4", "save_every=10", "eval_every=10")
    saves: list[int] = []
    original_save = loop.Trainer.save

    def save_under_fire(self, step, score=None):
        saves.append(step)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered while the checkpoint is written
        original_save(self, step, score)

    def first_signal(row: dict) -> None:
        if row["step"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.Trainer, "save", save_under_fire)
    before = signal.getsignal(signal.SIGTERM)
    summary = train(cfg, on_step=first_signal)
    assert summary["preempted"] is True and summary["signal"] == "SIGTERM"
    assert summary["steps"] == 1 and saves == [1]
    run_dir = cfg.resolved_out_dir()
    assert ckpt.verify_checkpoint(ckpt.checkpoint_root(run_dir) / "step_000001") is None
    assert (ckpt.checkpoint_root(run_dir) / ckpt.LATEST).read_text().strip() == "step_000001"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler was restored


def test_a_signal_during_startup_stops_before_the_first_iteration(tiny_config, monkeypatch):
    """While the resumed run loads its checkpoint: nothing new is trained or written."""
    cfg = tiny_config("steps=2", "save_every=1", "eval_every=10")
    train(cfg)
    run_dir = cfg.resolved_out_dir()
    rows, dirs = rows_without_time(run_dir), step_dirs(run_dir)
    original_load = loop.Trainer.load

    def load_then_signal(self, checkpoint):
        original_load(self, checkpoint)
        os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(loop.Trainer, "load", load_then_signal)
    longer = tiny_config("steps=4", "save_every=1", "eval_every=10")
    summary = resume(run_dir, longer)
    assert summary["preempted"] is True and summary["signal"] == "SIGUSR1"
    assert summary["steps"] == 2
    assert rows_without_time(run_dir) == rows and step_dirs(run_dir) == dirs


def test_an_engine_failure_mid_run_stops_it_and_the_resume_loses_nothing(tiny_config, monkeypatch):
    """The rollout engine raises during step 3's generation: the run stops with that error,
    steps 1-2 are checkpointed and logged, and a resume ends as the uninterrupted run."""
    from remix_rft.engines.generation import HFEngine

    overrides = ("steps=4", "save_every=1", "eval_every=10")
    straight = tiny_config(*overrides, out="straight")
    train(straight)
    original, calls = HFEngine.generate, []

    def fails_at_step_3(self, prompts, settings):
        calls.append(len(prompts))
        if len(calls) == 4:  # the base evaluation, steps 1 and 2, then step 3
            raise RuntimeError("engine lost: device error")
        return original(self, prompts, settings)

    monkeypatch.setattr(HFEngine, "generate", fails_at_step_3)
    cut = tiny_config(*overrides, out="cut")
    with pytest.raises(RuntimeError, match="engine lost"):
        train(cut)
    run_dir = cut.resolved_out_dir()
    assert step_dirs(run_dir) == [1, 2] and rows_without_time(run_dir)[-1]["step"] == 2
    monkeypatch.setattr(HFEngine, "generate", original)
    resume(run_dir, cut)
    assert rows_without_time(run_dir) == rows_without_time(straight.resolved_out_dir())
    assert policy_hash(run_dir, 4) == policy_hash(straight.resolved_out_dir(), 4)


# ---- integrity -------------------------------------------------------------------------
def test_corrupt_newest_checkpoints_fall_back_to_the_previous_naming_them(tiny_config, capsys):
    cfg = tiny_config("steps=3", "save_every=1", "keep_checkpoints=3", "eval_every=2")
    train(cfg)
    run_dir = cfg.resolved_out_dir()
    expected, final = rows_without_time(run_dir), policy_hash(run_dir, 3)
    root = ckpt.checkpoint_root(run_dir)
    weights = next((root / "step_000003" / "policy").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the newest weights
    weights.write_bytes(bytes(data))
    state = root / "step_000002" / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a truncated copy
    capsys.readouterr()

    summary = resume(run_dir, cfg)
    err = capsys.readouterr().err
    note = next(line for line in err.splitlines() if "resuming from" in line)
    assert "resuming from step_000001" in note
    assert "step_000003 (policy/model.safetensors: checksum mismatch" in note
    assert "step_000002 (trainer_state.pt: size mismatch" in note
    assert summary["steps"] == 3
    assert rows_without_time(run_dir) == expected  # steps 2 and 3 redone, identically
    assert policy_hash(run_dir, 3) == final
    assert all(ckpt.verify_checkpoint(d) is None for d in ckpt.list_checkpoints(root))


# ---- failed writes ---------------------------------------------------------------------
def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd")
@pytest.mark.parametrize("target", ["checkpoint", "metrics"])
def test_full_disk_stops_the_run_with_one_clear_line_and_loses_nothing(
    tmp_path, monkeypatch, capsys, target
):
    """ENOSPC from the write hook at step 2: while its checkpoint is written, or while its
    metrics row is appended. Exit 1, one error line, step 1's checkpoint and the metrics
    file valid, and the resumed run ends as an uninterrupted one."""
    run_dir = tmp_path / "run"
    real_write = rio.write_all
    metrics_writes = []

    def full_disk(fd: int, data) -> None:
        path = _fd_path(fd)
        if path.endswith("metrics.jsonl"):
            metrics_writes.append(path)
        fail = (target == "checkpoint" and "step_000002.tmp" in path) or (
            target == "metrics" and path.endswith("metrics.jsonl") and len(metrics_writes) == 3
        )  # the metrics rows: step 0 (base eval), 1, then 2
        if fail:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(fd, data)

    monkeypatch.setattr(rio, "write_all", full_disk)
    args = train_args(run_dir, "steps=3", "save_every=1", "eval_problems=8")[
        3:
    ]  # after -m remix_rft
    capsys.readouterr()
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "remix train: error:" in line]
    assert len(errors) == 1 and "Traceback" not in err
    assert "ENOSPC (No space left on device)" in errors[0]
    if target == "checkpoint":
        assert "step_000002.tmp failed" in errors[0]
        assert "the previous checkpoint step_000001 is intact" in errors[0]
    else:
        assert f"could not append to {run_dir / 'metrics.jsonl'}" in errors[0]
    root = ckpt.checkpoint_root(run_dir)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000001"]
    assert (root / ckpt.LATEST).read_text().strip() == "step_000001"
    assert ckpt.verify_checkpoint(root / "step_000001") is None
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == ([0, 1, 2] if target == "checkpoint" else [0, 1])

    monkeypatch.setattr(rio, "write_all", real_write)  # space freed
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    assert [r["step"] for r in rows_without_time(run_dir)] == [0, 1, 2, 3]


# ---- retention -------------------------------------------------------------------------
SCRIPTED_ACCURACY = {0: 0.1, 1: 0.2, 2: 0.9, 3: 0.3, 4: 0.4}  # by step; the best is step 2


@pytest.mark.parametrize(
    ("keep_best", "save_every", "keep", "kept"),
    [
        (False, 1, 2, [3, 4]),  # exactly the last 2
        (True, 1, 2, [2, 3, 4]),  # + the best by eval accuracy
        (True, 10, 1, [2, 4]),  # a new best is checkpointed between save_every steps
    ],
)
def test_retention_keeps_the_last_n_plus_the_best(
    tiny_config, monkeypatch, keep_best, save_every, keep, kept
):
    def scripted(self):
        accuracy = SCRIPTED_ACCURACY[self.counters.step]
        return HeldOut(accuracy=accuracy, reward_mean=accuracy)

    monkeypatch.setattr(loop.Trainer, "evaluate_held_out", scripted)
    cfg = tiny_config("steps=4", "eval_every=1", f"save_every={save_every}",
                      f"keep_checkpoints={keep}", f"keep_best_checkpoint={keep_best}")  # fmt: skip
    train(cfg)
    run_dir = cfg.resolved_out_dir()
    assert step_dirs(run_dir) == kept
    root = ckpt.checkpoint_root(run_dir)
    assert sorted(p.name for p in root.iterdir()) == [
        "latest",
        *(ckpt.step_dir_name(s) for s in kept),
    ]
    assert ckpt.checkpoint_score(root / "step_000004") == SCRIPTED_ACCURACY[4]
    if keep_best:
        assert ckpt.best_checkpoint(run_dir) == root / "step_000002"


# ---- 2 ranks (torchrun, gloo) ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
            f"--master-port={_free_port()}", "-m", "remix_rft", "train", *args]  # fmt: skip


def test_two_ranks_stop_together_on_sigterm_and_resume_after_a_kill(tmp_path):
    """torchrun forwards SIGTERM to both ranks; they agree on the step, checkpoint it (DCP)
    and exit 75 (torchrun itself reports the signal: exit 1). Then a SIGKILL of the whole
    process group mid-run, and a resume: the rows and weights of an uninterrupted run."""
    overrides = ("steps=5", "prompts_per_step=4", "group_size=4", "minibatch_size=16",
                 "eval_problems=10", "eval_every=2", "save_every=10", "threads=1",
                 "task.n_train=200", "task.n_eval=10")  # fmt: skip
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    ref = subprocess.run(_torchrun(CONFIG, f"out_dir={straight}", *overrides), cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]

    proc = subprocess.Popen(_torchrun(CONFIG, f"out_dir={cut}", *overrides), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_rows(cut, proc, 2)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to the ranks
    _, stderr = proc.communicate(timeout=120)
    stopped = rows_without_time(cut)[-1]["step"]
    assert stopped < 5, "the signal came too late to test anything"
    assert stderr.count("stopped at step") == 2  # both ranks, one step
    assert f"stopped at step {stopped} on SIGTERM" in stderr
    assert f"preempted at step {stopped}: resume with" in stderr
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in stderr or "got signal: 15" in stderr
    assert step_dirs(cut) == [stopped]
    assert ckpt.verify_checkpoint(ckpt.checkpoint_root(cut) / ckpt.step_dir_name(stopped)) is None

    # A node lost: SIGKILL to torchrun and both ranks at once, after one more step.
    killed = subprocess.Popen(_torchrun("--resume", str(cut)), cwd=ROOT, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    wait_for_rows(cut, killed, stopped + 2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)

    done = subprocess.run(_torchrun("--resume", str(cut)), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert rows_without_time(cut) == rows_without_time(straight)
    assert policy_hash(cut, 5) == policy_hash(straight, 5)
