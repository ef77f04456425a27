"""Issue #36: the asynchronous producer under signals and deaths, one writer per run,
resumes that keep their promise. One regression test (at least) per numbered defect; the
name of each says which (``_d3_`` = defect 3). Defect 1 (transport locks) is elsewhere.

End-to-end runs start ``remix train`` in its own session, so that a signal can go to its
whole process group (as Slurm, Kubernetes and a terminal send it) and so that the test can
check that no process of the group is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from remix_rft import cli
from remix_rft.trainer import checkpoint as ckpt
from remix_rft.trainer.loop import resume, train
from remix_rft.trainer.preemption import PREEMPTED_EXIT_CODE, PreemptionHandler

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "tiny-grpo.yaml")


# ---- helpers ---------------------------------------------------------------------------
def untimed_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def soak_module(name: str):
    """``benchmarks/<name>.py`` (the fault soak), imported as the soak imports it."""
    import importlib

    benchmarks = str(ROOT / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    return importlib.import_module(name)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    return soak_module("faults_async").group_members(pgid)


def assert_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """The process tree of a finished run is empty: nothing of its group is alive."""
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_members(pgid)
    for pid in left:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def short_tmpdir():
    """A TMPDIR of a short path: socket paths inside it must stay under 108 bytes."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="fa", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_run(args: list[str], tmpdir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmpdir)}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def train_args(run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable, "-m", "remix_rft", "train", CONFIG, "prompts_per_step=4", "group_size=4",
        "minibatch_size=16", "eval_every=3", "eval_problems=16", "threads=1", "save_every=10",
        "rollout_mode=async", "max_staleness=1", f"out_dir={run_dir}", *overrides,
    ]  # fmt: skip


def resume_args(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "remix_rft", "train", "--resume", str(run_dir), *extra]


def wait_for_rows(run_dir: Path, proc: subprocess.Popen, rows: int, timeout: float = 240) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        if metrics.is_file() and metrics.read_text().count("\n") >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"{metrics} did not reach {rows} rows in {timeout} s")


# ---- defect 3 (+5, +8): a signal to the whole group is a preemption ------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_d3_d8_group_signal_during_an_async_run_exits_75_and_resume_finishes(
    tmp_path, short_tmpdir, sig
):
    """SIGTERM (Slurm, Kubernetes) or SIGINT (Ctrl-C in a terminal) to the process group of an
    async run: the producer ignores it and serves the step in progress, the learner saves it
    and exits 75, the resume finishes; no process and no pymp-* folder is left behind (d5)."""
    run_dir, tmpdir = tmp_path / "run", short_tmpdir
    proc = start_run(train_args(run_dir, "steps=6"), tmpdir)
    wait_for_rows(run_dir, proc, 3)  # base eval + 2 iterations: the producer is serving
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    stopped = untimed_rows(run_dir)[-1]["step"]
    assert 2 <= stopped < 6
    latest = ckpt.resolve_resume_checkpoint(run_dir).path
    assert latest is not None and ckpt.checkpoint_step(latest) == stopped
    assert "ProducerError" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert not list(ckpt.checkpoint_root(run_dir).glob("*.tmp"))
    assert_group_gone(proc.pid)

    again = start_run(resume_args(run_dir), tmpdir)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    rows = untimed_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(7))
    assert [r["rollouts"] for r in rows[1:]] == [16 * k for k in range(1, 7)]
    assert_group_gone(again.pid)
    assert not [p.name for p in tmpdir.iterdir() if p.name.startswith(("pymp-", "rmx-"))]


# ---- defect 4: an async resume reproduces the uninterrupted async run ---------------------
def test_d4_async_eta0_stopped_by_sigterm_and_resumed_equals_the_uninterrupted_run(tiny_config):
    """The producer's random state travels with each result and is what the checkpoint
    stores: at η = 0 the resumed run samples exactly what the uninterrupted one sampled."""
    settings = ("rollout_mode=async", "max_staleness=0", "save_every=10", "eval_every=10")
    straight = tiny_config(*settings, "steps=5", out="straight")
    train(straight)

    cut = tiny_config(*settings, "steps=5", out="cut")

    def preempt_at_2(row: dict) -> None:
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler: stop after this step

    summary = train(cut, on_step=preempt_at_2)
    assert summary.get("preempted") and summary["steps"] == 2
    resume(cut.resolved_out_dir(), cut)
    import multiprocessing

    assert not multiprocessing.active_children()  # each producer stopped by its learner
    expected = untimed_rows(straight.resolved_out_dir())
    assert [r["step"] for r in expected] == list(range(6))
    assert untimed_rows(cut.resolved_out_dir()) == expected


# ---- defect 8: Ctrl-C ------------------------------------------------------------------------
def test_d8_sigint_is_a_preemption_a_second_is_recorded_a_third_aborts():
    with PreemptionHandler(["SIGTERM"]) as handler:
        signal.raise_signal(signal.SIGINT)  # the first: a preemption request
        assert handler.requested and handler.signal_name == "SIGINT"
        signal.raise_signal(signal.SIGINT)  # the second, during the save: recorded only
        assert handler.received == ["SIGINT", "SIGINT"]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the third: abort


def test_d8_a_third_ctrl_c_during_the_save_leaves_no_tmp_and_exits_130(tiny_config, monkeypatch,
                                                                        capsys):  # fmt: skip
    from remix_rft.trainer import checkpoint

    real = checkpoint.save_state

    def impatient_save(state, path):
        for _ in range(3):  # the step's save: Ctrl-C, Ctrl-C, Ctrl-C
            signal.raise_signal(signal.SIGINT)
        real(state, path)

    monkeypatch.setattr(checkpoint, "save_state", impatient_save)
    cfg = tiny_config("steps=2")
    code = cli.main(["train", CONFIG, *_tiny_overrides(cfg)])
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    root = ckpt.checkpoint_root(cfg.resolved_out_dir())
    assert not list(root.glob("*.tmp")) and not ckpt.list_checkpoints(root)


def _tiny_overrides(cfg) -> list[str]:
    return [
        f"out_dir={cfg.out_dir}", f"steps={cfg.steps}", "prompts_per_step=4", "group_size=4",
        "minibatch_size=16", "max_new_tokens=40", "eval_problems=16", "eval_batch_size=16",
        "eval_every=2", "save_every=1", "threads=1",
    ]  # fmt: skip


# ---- defect 2: a producer death is one line ----------------------------------------------------
def _put_then_die(results) -> None:
    results.put(("rollout", 0, {"logprobs": torch.zeros(8)}))
    time.sleep(1.0)  # the queue's feeder thread has sent it
    os.kill(os.getpid(), signal.SIGKILL)


def test_d2_a_producer_dying_with_a_result_in_the_queue_is_a_producer_error():
    """The result's tensor crosses by descriptor passing, which needs its sender: reading it
    after the sender died raised ConnectionRefusedError, not ProducerError."""
    import multiprocessing as mp

    from remix_rft.trainer.rollouts import AsyncRollouts, ProducerError

    context = mp.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_put_then_die, args=(results,), name="remix-producer-rank0")
    process.start()
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL
    source = object.__new__(AsyncRollouts)
    source.results, source.process, source.epoch = results, process, 0
    with pytest.raises(ProducerError, match=r"remix-producer-rank0 \(pid \d+\) died .*-9"):
        source.receive(1)


def test_d2_a_producer_error_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    from remix_rft.trainer import loop
    from remix_rft.trainer.rollouts import ProducerError

    def dies(cfg, on_step=None, **kwargs):
        raise ProducerError("rollout producer remix-producer-rank0 (pid 1) died with exit code -9")

    monkeypatch.setattr(loop, "train", dies)
    code = cli.main(["train", CONFIG, f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert [
        line for line in err.splitlines() if line.strip() and not line.startswith("tiny-grpo:")
    ] == [
        "remix train: error: rollout producer remix-producer-rank0 (pid 1) died with exit code -9"
    ]


# ---- defect 5: no multiprocessing folders left in TMPDIR --------------------------------------
def test_d5_the_folder_of_a_killed_process_is_removed_by_the_next_one(short_tmpdir, monkeypatch):
    from multiprocessing import process

    from remix_rft.trainer import mp_tempdir

    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that is gone
    gone.wait()
    stale = short_tmpdir / f"{mp_tempdir.PREFIX}{gone.pid}.{mp_tempdir._host()}"
    stale.mkdir()
    (stale / "listener-x").write_text("")
    alive = short_tmpdir / f"{mp_tempdir.PREFIX}{os.getppid()}.{mp_tempdir._host()}"
    alive.mkdir()
    other_host = short_tmpdir / f"{mp_tempdir.PREFIX}{gone.pid}.zzzz"
    other_host.mkdir()
    monkeypatch.setenv("TMPDIR", str(short_tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.setitem(process.current_process()._config, "tempdir", None)
    mine = mp_tempdir.use_private_tempdir()
    assert mine.parent == short_tmpdir and mine.is_dir()
    assert not stale.exists() and alive.is_dir() and other_host.is_dir()


# ---- defect 6: one writer per run directory ---------------------------------------------------
def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another remix process holding the run's lock, as ``runlock.RunLock`` takes it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    code = (
        "import fcntl, os, socket, sys, time\n"
        f"fd = os.open({str(run_dir / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "os.write(fd, f'pid {os.getpid()} on host {socket.gethostname()}\\n'.encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(300)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_d6_a_second_train_on_a_locked_run_is_refused_naming_the_holder(tiny_config, capsys):
    cfg = tiny_config("steps=1", out="new")
    holder = _hold_lock(cfg.resolved_out_dir())
    done = tiny_config("steps=1", out="done")
    train(done)
    holder_of_done = _hold_lock(done.resolved_out_dir())
    metrics = (done.resolved_out_dir() / "metrics.jsonl").read_text()
    try:
        code = cli.main(["train", CONFIG, *_tiny_overrides(cfg)])
        err = capsys.readouterr().err
        assert code == 2
        assert f"in use by pid {holder.pid} on host " in err, err
        assert not (cfg.resolved_out_dir() / "metrics.jsonl").exists()  # it wrote nothing
        code = cli.main(["train", "--resume", str(done.resolved_out_dir()), "steps=2"])
        assert code == 2 and f"pid {holder_of_done.pid}" in capsys.readouterr().err
        assert (done.resolved_out_dir() / "metrics.jsonl").read_text() == metrics
    finally:
        for process in (holder, holder_of_done):
            process.kill()
            process.wait()
    assert train(cfg)["steps"] == 1  # the kernel released the dead holder's lock


# ---- defect 7: resume compares settings -------------------------------------------------------
def test_d7_resume_refuses_a_changed_seed_lists_other_changes_and_keeps_every_config(
    tiny_config, capsys
):
    cfg = tiny_config("steps=1")
    run_dir = cfg.resolved_out_dir()
    train(cfg)
    before = (run_dir / "config.yaml").read_text()
    code = cli.main(["train", "--resume", str(run_dir), "seed=1", "steps=2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "seed: 0 -> 1" in err and "--allow-config-change seed" in err, err
    assert (run_dir / "config.yaml").read_text() == before
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            ] == [0, 1]  # fmt: skip

    code = cli.main(["train", "--resume", str(run_dir), "steps=2", "lr=1e-4"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "resumed with a changed setting: steps: 1 -> 2" in err
    assert "resumed with a changed setting: lr: 3e-05 -> 0.0001" in err
    history = sorted((run_dir / "config.history").iterdir())
    assert [p.name for p in history] == ["001-until-step_000001.yaml"]
    assert history[0].read_text() == before
    assert "lr: 0.0001" in (run_dir / "config.yaml").read_text()

    code = cli.main(["train", "--resume", str(run_dir), "steps=3", "seed=5",
                     "--allow-config-change", "seed"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert len(list((run_dir / "config.history").iterdir())) == 2


# ---- defect 9: linear normalisation of answers --------------------------------------------------
def test_d9_a_long_whitespace_run_in_an_answer_is_normalised_in_linear_time():
    """10⁶ characters: quadratic before (hours), milliseconds now. The subprocess timeout
    only keeps a regression from hanging the suite; it is ~1000× the time needed."""
    code = (
        "from remix_rft.rewards.answers import normalize_answer as n\n"
        "s = '5' + ' ' * 1_000_000 + 'x'\n"
        "assert n(s).startswith('5') and n('5 \\\\text{ cm}') == '5'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


# ---- defect 10: rewards must stay finite in float32 ---------------------------------------------
def test_d10_a_reward_that_overflows_float32_is_an_error_naming_function_and_value(tmp_path):
    from remix_rft.reward_fns import RewardError
    from remix_rft.reward_pool import RewardPool

    fn = tmp_path / "huge.py"
    fn.write_text("def reward(response, problem):\n    return 1e37\n")
    with RewardPool(f"{fn}:reward", workers=0) as pool:
        with pytest.raises(RewardError, match=r"huge\.py:reward .*returned 1e\+37 .*float32"):
            pool.score([("a", {"id": "p1", "answer": "1"})])


# ---- defect 11: processes of a reward function die with its worker ------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_d11_processes_started_by_a_reward_function_end_with_the_pool(tmp_path):
    from remix_rft.reward_pool import RewardPool

    pids = tmp_path / "pids"
    fn = tmp_path / "spawns.py"
    fn.write_text(
        "import subprocess, sys\n"
        "def reward(response, problem):\n"
        "    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"    open({str(pids)!r}, 'a').write(f'{{p.pid}}\\n')\n"
        "    return 1.0\n"
    )
    pool = RewardPool(f"{fn}:reward", workers=2)
    assert pool.score([("a", {"id": 1}), ("b", {"id": 2})]) == [1.0, 1.0]
    started = [int(x) for x in pids.read_text().split()]
    assert len(started) == 2 and all(_alive(p) for p in started)
    pool.close()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in started if _alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left


# ---- defect 12: the four smaller ones ----------------------------------------------------------
def test_d12a_a_foreign_trainer_state_is_one_clear_error_without_weights_only_advice(tmp_path):
    import argparse

    legacy = tmp_path / "step_000001"  # no manifest: loaded unverified
    legacy.mkdir()
    torch.save({"counters": argparse.Namespace(step=1)}, legacy / ckpt.STATE_FILE)
    with pytest.raises(ValueError, match="is not a remix-rft trainer state") as caught:
        ckpt.load_state(legacy)
    assert "weights_only" not in str(caught.value)
    assert "argparse.Namespace" in str(caught.value)


def test_d12b_a_memory_error_in_a_reward_worker_costs_one_item(tmp_path, caplog):
    from remix_rft.reward_pool import RewardPool

    fn = tmp_path / "greedy.py"
    fn.write_text(
        "def reward(response, problem):\n"
        "    if response == 'big':\n"
        "        raise MemoryError\n"
        "    return 1.0\n"
    )
    with RewardPool(f"{fn}:reward", workers=1) as pool:
        assert pool.score([("ok", {"id": 1}), ("big", {"id": 2}), ("ok", {"id": 3})]) == [
            1.0, 0.0, 1.0,
        ]  # fmt: skip
    assert "MemoryError" in caplog.text


def test_d12c_resuming_with_fewer_checkpoints_frees_space_before_training(tiny_config):
    cfg = tiny_config("steps=3", "keep_checkpoints=3")
    train(cfg)
    root = ckpt.checkpoint_root(cfg.resolved_out_dir())
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(root)] == [1, 2, 3]
    fewer = tiny_config("steps=3", "keep_checkpoints=1")
    resume(fewer.resolved_out_dir(), fewer)  # nothing left to train: no save, still pruned
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(root)] == [3]


def test_d12d_the_soak_counts_an_exit_75_during_a_fresh_start_as_survived():
    soak = soak_module("faults_runs")
    hint = "remix train: preempted before a checkpoint: resume with remix train --resume RUN\n"
    assert soak.judge_exit75(hint, resumed_from=None, choice=None, last=0) == (True, None)
    assert (
        soak.judge_exit75(hint, resumed_from=None, choice=Path("step_000001"), last=1)[0] is False
    )
    step2 = "remix train: preempted at step 2: resume with remix train --resume RUN\n"
    found = Path("x/step_000002")
    assert soak.judge_exit75(step2, resumed_from=None, choice=found, last=2) == (True, 2)
