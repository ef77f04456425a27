"""Data parallelism on CPU (gloo, 2 processes): the distributed update equals the one-process one.

The equivalence test runs the Trainer's own ``precompute`` + ``update`` on a fixed
global batch — in this process with one rank, and with FSDP2 on 2 spawned ranks that
each hold half of it — and compares parameters, gradients and statistics.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from remix_rft.data.batch import collate
from remix_rft.data.buffer import Sample
from remix_rft.trainer.config import ConfigError, load_config
from tests.test_practitioner import SOME_UNIFORM

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_RANK = 4  # 3 fresh + 1 reused per rank
WORLD = 2

CASES = {
    # Mix-PPG with reused rows and their own ε, KL-Convex, gradient accumulation (micro 2).
    "remix-grpo": [
        "algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5", "offpolicy_clip_eps_low=0.1",
        "offpolicy_clip_eps_high=0.1", "kl_coef=0.1", "kl_lambda=0.5", "loss_agg=token-mean",
        "micro_batch_size=2",
    ],
    # Token-budget micro-batches (ranks cut theirs differently but run as many) and an
    # entropy bonus through the chunked output head of the sharded root.
    "remix-grpo-tokens": [
        "algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5", "kl_coef=0.1",
        "micro_batch_tokens=24", "entropy_coef=0.01", "logprob_chunk_tokens=5",
    ],
    # Critic, GAE with globally whitened advantages, sequence-mean aggregation.
    "remix-ppo": [
        "algorithm=remix-ppo", "window=2", "offpolicy_fraction=0.5", "loss_agg=seq-mean-token-mean",
    ],
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def case_config(model: Path, out: Path, case: str):
    return load_config(
        None,
        [
            f"model={model}", f"out_dir={out}", "prompts_per_step=4", "group_size=2",
            f"minibatch_size={WORLD * ROWS_PER_RANK}", "max_new_tokens=16", "threads=1",
            "lr=1e-4", "task.n_train=200", "task.n_eval=10", *CASES[case],
        ],
    )  # fmt: skip


def rank_samples(rank: int) -> list[Sample]:
    """The fixed rows of one rank: 3 fresh (version 1) and 1 reused (version 0)."""
    gen = torch.Generator().manual_seed(1234 + rank)
    rows = []
    for i in range(ROWS_PER_RANK):
        p = int(torch.randint(3, 9, (1,), generator=gen))
        r = int(torch.randint(2, 12, (1,), generator=gen))
        rows.append(
            Sample(
                prompt_ids=torch.randint(5, 100, (p,), generator=gen),
                response_ids=torch.randint(5, 100, (r,), generator=gen),
                behavior_logprobs=-4.6 + 0.3 * torch.randn(r, generator=gen),
                reward=float(torch.randint(0, 2, (1,), generator=gen)),
                advantage=float(torch.randn(1, generator=gen)),
                version=1 if i < ROWS_PER_RANK - 1 else 0,
                group=rank * 10 + i // 2,
                finished=True,
            )
        )
    return rows


def run_update(cfg, run_dir: Path, ranks: list[int]) -> dict:
    """Trainer.precompute + Trainer.update on the rows of ``ranks``; full params and grads."""
    from remix_rft.trainer import update
    from remix_rft.trainer.loop import Trainer

    trainer = Trainer(cfg, run_dir)
    per_rank = [rank_samples(r) for r in ranks]
    fresh = [s for rows in per_rank for s in rows if s.version == 1]
    old = [s for rows in per_rank for s in rows if s.version == 0]
    batch = collate(fresh + old, trainer.pad_id)
    pre = trainer.precompute(batch, step=1)
    # the update frees its gradients after the step; these tests compare them
    free, update.free_gradients = update.free_gradients, lambda optimizer: None
    try:
        stats = trainer.dist.merge_stats(trainer.update(batch, pre, step=1))
    finally:
        update.free_gradients = free
    out: dict = {"stats": stats.means(), "params": {}, "grads": {}}
    models = {"policy": trainer.policy}
    if trainer.state.critic is not None:
        models["critic"] = trainer.state.critic
    for name, model in models.items():
        for key, p in model.named_parameters():
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out["params"][f"{name}.{key}"] = full.detach().cpu().clone()
            out["grads"][f"{name}.{key}"] = grad.detach().cpu().clone()
    return out


def _worker(rank: int, port: int, model: str, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
        RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
    )  # fmt: skip
    from remix_rft.engines import distributed

    try:
        for case in CASES:
            cfg = case_config(Path(model), Path(out_dir) / f"{case}-run", case)
            result = run_update(cfg, Path(out_dir) / f"{case}-run", [rank])
            if rank == 0:
                torch.save(result, Path(out_dir) / f"{case}.pt")
    finally:
        distributed.shutdown()


def test_two_ranks_make_the_one_rank_update(model_dir, tmp_path, monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    # fork: the children inherit the imported modules (spawn re-imports transformers, ~15 s)
    mp.start_processes(
        _worker,
        args=(free_port(), str(model_dir), str(tmp_path)),
        nprocs=WORLD,
        start_method="fork",
    )
    for case in CASES:
        cfg = case_config(model_dir, tmp_path / f"{case}-single", case)
        single = run_update(cfg, tmp_path / f"{case}-single", list(range(WORLD)))
        multi = torch.load(tmp_path / f"{case}.pt", weights_only=False)
        assert single["params"].keys() == multi["params"].keys()
        param_diff = max(
            (single["params"][k] - multi["params"][k]).abs().max().item() for k in single["params"]
        )
        grad_diff = max(
            (single["grads"][k] - multi["grads"][k]).abs().max().item() for k in single["grads"]
        )
        worst = max(
            single["params"],
            key=lambda k: (single["params"][k] - multi["params"][k]).abs().max().item(),
        )
        print(
            f"{case}: max |param diff| {param_diff:.2e} ({worst}), max |grad diff| {grad_diff:.2e}"
        )
        # Adam divides by sqrt(v) + eps: float noise in near-zero gradients moves a
        # parameter by up to ~lr, so parameters get a looser bound than gradients.
        assert param_diff < 5e-5, (case, param_diff)
        assert grad_diff < 1e-5, (case, grad_diff)  # Adam hides a gradient scale; grads do not
        for key in (
            "grad_norm", "ratio/mean", "clip/frac", "kl/base", "age1/ratio_mean", "entropy/mean",
        ):  # fmt: skip
            if key in single["stats"]:
                assert multi["stats"][key] == pytest.approx(
                    single["stats"][key], rel=1e-4, abs=1e-6
                ), key
        if case == "remix-ppo":
            assert multi["stats"]["critic/loss"] == pytest.approx(
                single["stats"]["critic/loss"], rel=1e-4
            )


# A small ReMix-GRPO run on the embedded model: 2 ranks x 2 prompts x 4 responses.
SMALL_RUN = (
    "prompts_per_step=4", "group_size=4", "minibatch_size=16", "max_new_tokens=16",
    "eval_problems=10", "threads=1", "task.n_train=200", "task.n_eval=10",
)  # fmt: skip


def _torchrun(*args: str, nproc: int = WORLD) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", "-m", "remix_rft", "train", *args]  # fmt: skip
    return run_process_group(cmd, env, timeout=240)


def run_process_group(
    cmd: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a session of its own: on a timeout the whole group goes (ranks
    stuck in a collective and their reward workers would otherwise outlive the test)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[-4:])} timed out after {timeout:.0f} s; stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_two_rank_cli_run_writes_a_normal_run_directory(model_dir, tmp_path):
    run_dir = tmp_path / "run"
    done = _torchrun(
        "tiny-remix-grpo", f"model={model_dir}", f"out_dir={run_dir}", "steps=2", *SMALL_RUN,
        "eval_every=1", "save_every=2", "window=2", "offpolicy_fraction=0.5",
        "reincarnation_step=2",  # copies sharded policy weights into the sharded reference
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[2].get("reincarnated") is True
    assert [r["rollouts"] for r in rows[1:]] == [16, 32]  # global responses, not per rank
    assert rows[2]["offpolicy/samples"] == 16 and isinstance(rows[2]["offpolicy/samples"], int)
    assert all("eval/accuracy" in r for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["rollouts"] == 32
    assert (run_dir / "config.yaml").is_file()
    step = run_dir / "checkpoints" / "step_000002"
    assert (step / "policy" / "model.safetensors").is_file()  # loadable by `remix eval`
    assert (step / "dcp").is_dir() and (step / "rank_00001.pt").is_file()
    # One process cannot continue a 2-rank run: refused with both sizes named.
    single = subprocess.run(
        [sys.executable, "-m", "remix_rft", "train", "--resume", str(run_dir), "steps=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert single.returncode == 2
    assert "written by 2 rank(s)" in single.stderr and "has 1 rank(s)" in single.stderr


def test_checkpoint_from_two_ranks_loads_as_a_hf_model(model_dir, tmp_path):
    """Covered by the CLI run above; here the world-size rules of the config."""
    from remix_rft.trainer.ranks import check_config

    cfg = load_config(None, [f"model={model_dir}", "prompts_per_step=6", "minibatch_size=64"])
    with pytest.raises(ConfigError, match="prompts_per_step.*divisible by the world size 4"):
        check_config(cfg, 4)
    check_config(cfg, 2)
    lora = load_config(None, [f"model={model_dir}", "lora_rank=4"])
    with pytest.raises(ConfigError, match="lora_rank"):
        check_config(lora, 2)


def test_single_process_default_needs_no_process_group(model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    from remix_rft.engines.distributed import DistEnv, setup

    env = setup("auto")
    assert isinstance(env, DistEnv) and not env.enabled and env.world_size == 1
    assert not torch.distributed.is_initialized()
    assert env.sum(3.5) == 3.5 and env.shard([1, 2, 3]) == [1, 2, 3]


def test_gradient_checkpointing_gives_the_same_update(model_dir, tmp_path):
    base = case_config(model_dir, tmp_path / "a", "remix-grpo")
    ckpt = case_config(model_dir, tmp_path / "b", "remix-grpo")
    ckpt.gradient_checkpointing = True
    a = run_update(base, tmp_path / "a", [0, 1])
    b = run_update(ckpt, tmp_path / "b", [0, 1])
    diff = max((a["grads"][k] - b["grads"][k]).abs().max().item() for k in a["grads"])
    assert diff < 1e-6


def test_bfloat16_single_process_keeps_fp32_master_weights(model_dir, tmp_path):
    cfg = case_config(model_dir, tmp_path / "bf16", "remix-grpo")
    cfg.dtype = "bfloat16"
    fp32 = run_update(
        case_config(model_dir, tmp_path / "fp32", "remix-grpo"), tmp_path / "fp32", [0]
    )
    out = run_update(cfg, tmp_path / "bf16", [0])
    assert all(p.dtype == torch.float32 for p in out["params"].values())
    diff = max((fp32["params"][k] - out["params"][k]).abs().max().item() for k in out["params"])
    assert 0 < diff < 1e-2  # bf16 compute: close to, not equal to, the fp32 update


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["hf", "hf-static"])
def test_tiny_model_trains_end_to_end_on_gpu(model_dir, tmp_path, backend):
    from remix_rft.trainer.loop import train

    cfg = load_config(
        None,
        [f"model={model_dir}", f"out_dir={tmp_path / backend}", "steps=2", "prompts_per_step=4",
         "group_size=4", "minibatch_size=16", "eval_problems=16", "dtype=bfloat16", "task.n_train=200",
         f"rollout_engine={backend}", "device=cuda"],
    )  # fmt: skip
    summary = train(cfg)
    rows = [
        json.loads(x) for x in (cfg.resolved_out_dir() / "metrics.jsonl").read_text().splitlines()
    ]
    assert summary["steps"] == 2 and rows[-1]["time/gen_tokens_per_s"] > 0


def test_two_rank_async_rollouts_each_rank_with_its_producer(model_dir, tmp_path):
    """`rollout_mode: async` under torchrun: every rank runs its own producer process on its
    shard of the prompts; the staleness bound holds on every rank (max over ranks logged)."""
    run_dir = tmp_path / "run"
    done = _torchrun(
        "tiny-remix-grpo", f"model={model_dir}", f"out_dir={run_dir}", "steps=3", *SMALL_RUN,
        "eval_every=3", "save_every=3", "rollout_mode=async", "max_staleness=1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["rollouts"] for r in rows[1:]] == [16, 32, 48]
    assert all(r["async/staleness_max"] <= 1 for r in rows[1:])


def test_two_rank_dynamic_sampling_keeps_the_same_groups_on_every_rank(model_dir, tmp_path):
    """Each rank filters its own groups; the ranks keep the global minimum (FSDP needs equal
    minibatches), and every generated response still counts in `rollouts`."""
    reward = tmp_path / "reward.py"
    reward.write_text(SOME_UNIFORM)
    run_dir = tmp_path / "run"
    done = _torchrun(
        "tiny-remix-grpo", f"model={model_dir}", f"out_dir={run_dir}", "steps=3", *SMALL_RUN,
        "eval_every=3", "save_every=3", "window=2", "offpolicy_fraction=0.5",
        "dynamic_sampling=true", "max_generation_rounds=2", f"task.reward_fn={reward}:score",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    previous = 0
    for r in rows[1:]:
        generated = r["rollouts"] - previous
        previous = r["rollouts"]
        assert 16 <= generated <= 32  # one or two rounds of 4 prompts x 4 responses
        assert (r["dynamic/kept_groups"] + r["dynamic/dropped_groups"]) * 4 == generated
        assert r["dynamic/kept_groups"] % 2 == 0  # the same count on both ranks
        assert r["dynamic/balanced_groups"] <= r["dynamic/dropped_groups"]


def _loading_worker(rank: int, port: int, model: str, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
        RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
    )  # fmt: skip
    from remix_rft.engines import distributed, factory
    from remix_rft.engines.policy import ValueModel

    reads: list[str] = []
    load_policy, from_pretrained = factory.load_policy, ValueModel.from_pretrained
    factory.load_policy = lambda *a, **k: reads.append("policy") or load_policy(*a, **k)
    ValueModel.from_pretrained = classmethod(
        lambda cls, *a, **k: reads.append("critic") or from_pretrained.__func__(cls, *a, **k)
    )
    try:
        env = distributed.setup("cpu")
        cfg = case_config(Path(model), Path(out_dir) / "run", "remix-ppo")
        cfg.kl_coef = 0.1  # the reference is built too
        policy, reference = factory.build_models(cfg, env)
        critic = factory.build_critic(cfg, env)
        full = {}
        for name, m in (("policy", policy), ("reference", reference), ("critic", critic)):
            for key, t in [*m.named_parameters(), *m.named_buffers()]:
                t = t.full_tensor() if hasattr(t, "full_tensor") else t
                full[f"{name}.{key}"] = t.detach().clone()
        if rank == 0:
            torch.save(full, Path(out_dir) / "loaded.pt")
        torch.save(reads, Path(out_dir) / f"reads{rank}.pt")
    finally:
        distributed.shutdown()


def test_only_rank_0_reads_the_checkpoint_and_every_rank_gets_its_weights(
    model_dir, tmp_path, monkeypatch
):
    """Loading once (issue #38): rank 1 builds on the meta device and receives its shards
    (policy, reference, critic, and the rotary buffers) from rank 0."""
    from remix_rft.engines.policy import ValueModel, load_policy

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    mp.start_processes(
        _loading_worker, args=(free_port(), str(model_dir), str(tmp_path)), nprocs=WORLD,
        start_method="fork",
    )  # fmt: skip
    assert torch.load(tmp_path / "reads0.pt") == ["policy", "critic"]
    assert torch.load(tmp_path / "reads1.pt") == []
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    policy = load_policy(str(model_dir))
    torch.manual_seed(0)
    critic = ValueModel.from_pretrained(str(model_dir))
    expected = {}
    for name, m in (("policy", policy), ("reference", policy), ("critic", critic)):
        for key, t in [*m.named_parameters(), *m.named_buffers()]:
            expected[f"{name}.{key}"] = t.detach()
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        if key.startswith("critic.head."):
            continue  # a fresh head: rank 0 draws it and sends it to every rank
        assert torch.equal(loaded[key], tensor), key
