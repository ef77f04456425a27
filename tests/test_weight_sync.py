"""Streamed weight publication (issue #38 item 1) and a transport no dead process can hang
(issue #36 defect 1): the stream equals the state dict it replaces, a bucket at a time, in the
engine's dtype; 2 FSDP2 ranks gather it without a full state dict; the consolidated HF copy
is streamed to a file safetensors and transformers load; a dead reader never blocks the
writer and a dead writer never hangs the reader."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from remix_rft.engines.policy import load_policy, load_tokenizer
from remix_rft.engines.transport import SharedMemoryTransport, TransportError, policy_weights
from remix_rft.engines.weight_stream import (
    WeightStream,
    save_hf_policy_streamed,
    write_safetensors,
)
from tests.test_distributed import free_port

HANG_S = 20.0  # a publish or receive that has not returned by then is hung


def _reference_state(model) -> dict[str, torch.Tensor]:
    """What the old path published: the full state dict plus a tied lm_head."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    return state


def test_stream_equals_the_state_dict_in_the_engine_dtype(model_dir):
    model = load_policy(str(model_dir))
    expected = _reference_state(model)
    fp32 = dict(policy_weights(model))
    assert fp32.keys() == expected.keys()
    for name, tensor in fp32.items():
        assert torch.equal(tensor, expected[name]), name
    bf16 = dict(policy_weights(model, dtype="bfloat16"))
    assert all(t.dtype == torch.bfloat16 for t in bf16.values())
    assert torch.equal(bf16["model.norm.weight"], expected["model.norm.weight"].bfloat16())


def test_buckets_hold_at_most_bucket_mb_unless_one_tensor_is_larger(model_dir):
    model = load_policy(str(model_dir))
    limit_mb = 0.05
    stream = WeightStream(model, bucket_mb=limit_mb)
    buckets = list(stream.buckets())
    assert len(buckets) > 3
    for bucket in buckets:
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert size <= limit_mb * 2**20 or len(bucket) == 1
    names = [n for bucket in buckets for n, _ in bucket]
    assert names == [s.name for s in stream.specs()]
    assert len(list(WeightStream(model, bucket_mb=0).buckets())) == len(names)


def test_lora_stream_merges_each_module(model_dir, tiny_config):
    pytest.importorskip("peft")
    from remix_rft.engines import lora

    cfg = tiny_config(f"model={model_dir}", "lora_rank=4")
    model = lora.wrap(load_policy(str(model_dir)), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a non-zero adapter: the merge must show
    merged = lora.merged_state_dict(model)
    streamed = dict(policy_weights(model))
    assert set(merged) <= set(streamed)
    changed = 0
    for name, tensor in merged.items():
        assert torch.allclose(streamed[name], tensor), name
        base = model.get_base_model().state_dict().get(name.replace(".weight", ".base_layer.weight"))
        changed += base is not None and not torch.equal(base, tensor)
    assert changed > 0


def test_streamed_safetensors_equal_save_file_and_load_as_a_hf_model(model_dir, tmp_path):
    model = load_policy(str(model_dir))
    write_safetensors(WeightStream(model, tied_head=False), tmp_path / "streamed.safetensors")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp_path / "plain.safetensors"))
    streamed, plain = load_file(tmp_path / "streamed.safetensors"), load_file(tmp_path / "plain.safetensors")
    assert streamed.keys() == plain.keys()
    assert all(torch.equal(streamed[k], plain[k]) for k in plain)
    save_hf_policy_streamed(model, load_tokenizer(str(model_dir)), tmp_path / "hf", write=True)
    again = load_policy(str(tmp_path / "hf"))
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# ---- 2 FSDP2 ranks ------------------------------------------------------------------------
def _fsdp_worker(rank: int, port: int, model: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
        LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
    )  # fmt: skip
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from remix_rft.engines import distributed, weight_stream

    weight_stream.GATHER_BLOCK_BYTES = 64  # many blocks per tensor
    env = distributed.setup("cpu")
    try:
        mesh = init_device_mesh("cpu", (2,))
        for rows in (7, 1):  # uneven shards; a rank with none
            full = torch.arange(rows * 3, dtype=torch.float32).view(rows, 3)
            gathered = weight_stream._gather(distribute_tensor(full, mesh, [Shard(0)]), torch.bfloat16)
            assert torch.equal(gathered, full.bfloat16()), rows
        sharded = distributed.shard_model(load_policy(model), env)
        streamed = {n: t.clone() for n, t in WeightStream(sharded, dtype=torch.bfloat16,
                                                          bucket_mb=0.05)}  # fmt: skip
        tokenizer = load_tokenizer(model)
        save_hf_policy_streamed(sharded, tokenizer, Path(out) / "hf", write=env.is_main)
        env.barrier()
        if env.is_main:
            torch.save(streamed, Path(out) / "streamed.pt")
    finally:
        distributed.shutdown()


def test_two_fsdp_ranks_stream_the_full_weights(model_dir, tmp_path, monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    mp.start_processes(
        _fsdp_worker, args=(free_port(), str(model_dir), str(tmp_path)), nprocs=2,
        start_method="fork",
    )  # fmt: skip
    model = load_policy(str(model_dir))
    expected = _reference_state(model)
    streamed = torch.load(tmp_path / "streamed.pt", weights_only=True)
    assert streamed.keys() == expected.keys()
    for name, tensor in streamed.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, expected[name].bfloat16()), name
    again = load_policy(str(tmp_path / "hf"))
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# ---- the shared-memory transport ----------------------------------------------------------
def _transport(model) -> SharedMemoryTransport:
    transport = SharedMemoryTransport(multiprocessing.get_context("fork"))
    transport.share(policy_weights(model, dtype="bfloat16"))
    return transport


def test_transport_holds_the_engine_dtype_and_delivers_versions(model_dir):
    learner, producer = load_policy(str(model_dir)), load_policy(str(model_dir), dtype="bfloat16")
    transport = _transport(learner)
    assert set(transport.buffers) == {torch.bfloat16}  # bf16 run: no fp32 copy in between
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.5)
    transport.publish(policy_weights(learner, dtype="bfloat16"), version=3)
    assert transport.receive(producer, have=-1) == 3
    assert transport.receive(producer, have=3) is None
    expected = learner.state_dict()["model.norm.weight"].bfloat16()
    assert torch.equal(producer.state_dict()["model.norm.weight"], expected)


class _StuckModel:
    """A producer's model whose weight load never ends: it is killed inside ``receive``."""

    def __init__(self, loading) -> None:
        self.loading = loading

    def load_state_dict(self, state, strict=False):
        self.loading.set()
        time.sleep(600)


def _finishes(fn, timeout: float = HANG_S) -> tuple[bool, BaseException | None]:
    box: list[BaseException | None] = [None]

    def run() -> None:
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - reported to the test
            box[0] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), box[0]


def test_a_producer_killed_mid_receive_does_not_block_the_next_publish(model_dir):
    learner = load_policy(str(model_dir))
    transport = _transport(learner)
    transport.publish(None, version=0)
    context = multiprocessing.get_context("fork")
    loading = context.Event()
    producer = context.Process(target=transport.receive, args=(_StuckModel(loading), -1))
    producer.start()
    try:
        assert loading.wait(HANG_S), "the producer never started loading"
    finally:
        os.kill(producer.pid, signal.SIGKILL)
        producer.join()
    done, error = _finishes(lambda: transport.publish(policy_weights(learner), version=1))
    assert done, "publish hung on a lock its dead reader held"
    assert error is None and transport.newest() == 1


def _stuck_publish(transport: SharedMemoryTransport, model_dir: str, writing) -> None:
    weights = policy_weights(load_policy(model_dir))

    def stalls():
        for i, item in enumerate(weights):
            if i == 2:
                writing.set()
                time.sleep(600)
            yield item

    transport.publish(stalls(), version=2)


def test_a_learner_killed_mid_publish_does_not_hang_the_producer(model_dir):
    learner = load_policy(str(model_dir))
    transport = _transport(learner)
    transport.publish(policy_weights(learner), version=1)
    context = multiprocessing.get_context("fork")
    writing = context.Event()
    writer = context.Process(target=_stuck_publish, args=(transport, str(model_dir), writing))
    writer.start()
    try:
        assert writing.wait(HANG_S), "the learner never started writing"
    finally:
        os.kill(writer.pid, signal.SIGKILL)  # not reaped yet: a zombie must count as dead too
    producer = load_policy(str(model_dir))
    done, error = _finishes(lambda: transport.receive(producer, have=0))
    writer.join()
    assert done, "receive hung on a lock (or a write) its dead learner left behind"
    assert isinstance(error, TransportError) and str(writer.pid) in str(error)


# ---- vLLM: the colocated life cycle and the tested API, with a fake vllm module -----------
class _FakeLLM:
    """Records what the engine asks of vLLM (vLLM's CPU build has no sleep mode)."""

    calls: list[tuple] = []

    def __init__(self, **kwargs) -> None:
        from types import SimpleNamespace as NS

        self.calls = _FakeLLM.calls
        self.llm_engine = NS(
            model_config=NS(max_model_len=64),
            vllm_config=NS(scheduler_config=NS(max_num_batched_tokens=64)),
        )

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tuple(tags) if tags else None))

    def collective_rpc(self, method: str, kwargs: dict) -> None:
        names = [name for name, _ in kwargs["weights_iterator"]]  # consumes the stream
        self.calls.append((method, len(names)))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))

    def generate(self, prompts, params, use_tqdm=False) -> list:
        self.calls.append(("generate",))
        return []


class _UntaggedLLM(_FakeLLM):
    def wake_up(self) -> None:  # an older vLLM: no tags
        self.calls.append(("wake_up", None))


def _fake_vllm(monkeypatch, *, version="0.32.0", llm=_FakeLLM, logprobs_mode=True, iterator=True):
    import dataclasses
    import types

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(__import__("sys").modules, name, mod)
        return mod

    fields = [("logprobs_mode", str, "raw_logprobs")] if logprobs_mode else []
    engine_args = dataclasses.make_dataclass("EngineArgs", [("model", str, ""), *fields])

    class GPUModelRunner:
        if iterator:
            def reload_weights(self, weights_iterator=None, weights_path=None) -> None: ...
        else:
            def reload_weights(self) -> None: ...

    module("vllm", __version__=version, LLM=llm, SamplingParams=lambda **kw: kw)
    module("vllm.engine")
    module("vllm.engine.arg_utils", EngineArgs=engine_args)
    module("vllm.v1")
    module("vllm.v1.worker")
    module("vllm.v1.worker.gpu_model_runner", GPUModelRunner=GPUModelRunner)


def _fake_engine(monkeypatch, model_dir, *, level: int = 2, llm=_FakeLLM):
    from remix_rft.engines import vllm_engine
    from remix_rft.engines.rollout import EngineOptions

    _fake_vllm(monkeypatch, llm=llm)
    _FakeLLM.calls = []
    monkeypatch.setattr(vllm_engine, "release_cached_memory",
                        lambda: _FakeLLM.calls.append(("empty_cache",)))  # fmt: skip
    policy, tokenizer = load_policy(str(model_dir)), load_tokenizer(str(model_dir))
    options = EngineOptions(model_path=str(model_dir), sleep_level=level)
    engine = vllm_engine.VLLMEngine(policy=policy, tokenizer=tokenizer, options=options)
    engine.sleep_enabled = True  # as on CUDA
    return engine, policy, _FakeLLM.calls


def _generate(engine) -> None:
    from remix_rft.engines.rollout import SamplingSettings

    engine.generate([], SamplingSettings(max_new_tokens=4))


def test_vllm_push_wakes_weights_then_kv_cache_and_sleeps_at_level_2(model_dir, monkeypatch):
    engine, policy, calls = _fake_engine(monkeypatch, model_dir)
    n = len(WeightStream(policy).specs())
    engine.sleep()
    with engine.awake():
        engine.sync_weights(policy)
        _generate(engine)
    assert calls == [
        ("sleep", 2), ("empty_cache",), ("wake_up", ("weights",)), ("reload_weights", n),
        ("wake_up", ("kv_cache",)), ("reset_prefix_cache",), ("generate",), ("sleep", 2),
    ]  # fmt: skip
    calls.clear()  # level 2 discarded the weights: generating without a push re-pushes
    with engine.awake():
        _generate(engine)
    assert [c[0] for c in calls] == [
        "empty_cache", "wake_up", "reload_weights", "wake_up", "reset_prefix_cache", "generate",
        "sleep",
    ]  # fmt: skip


def test_vllm_sleep_level_1_keeps_the_weights_and_untagged_wake_is_the_fallback(
    model_dir, monkeypatch
):
    engine, policy, calls = _fake_engine(monkeypatch, model_dir, level=1)
    engine.sleep()
    with engine.awake():
        _generate(engine)  # level 1: weights kept, nothing to push
    assert calls == [
        ("sleep", 1), ("empty_cache",), ("wake_up", ("weights",)), ("wake_up", ("kv_cache",)),
        ("generate",), ("sleep", 1),
    ]  # fmt: skip
    engine, policy, calls = _fake_engine(monkeypatch, model_dir, llm=_UntaggedLLM)
    engine.sleep()
    with engine.awake():
        engine.sync_weights(policy)
    assert [c[:2] for c in calls][:3] == [("sleep", 2), ("empty_cache",), ("wake_up", None)]
    assert calls.count(("wake_up", None)) == 1  # weights and KV cache together, once


@pytest.mark.parametrize(
    ("logprobs_mode", "iterator", "missing"),
    [(False, True, "logprobs_mode"), (True, False, "reload_weights(weights_iterator=...)")],
)
def test_a_vllm_without_the_api_stops_with_one_line(monkeypatch, logprobs_mode, iterator, missing):
    from remix_rft.engines.rollout import EngineError
    from remix_rft.engines.vllm_engine import TESTED_VLLM, require_vllm

    _fake_vllm(monkeypatch, version="0.9.2", logprobs_mode=logprobs_mode, iterator=iterator)
    with pytest.raises(EngineError) as err:
        require_vllm()
    message = str(err.value)
    assert "\n" not in message
    assert "0.9.2" in message and missing in message and TESTED_VLLM in message
    _fake_vllm(monkeypatch)  # the tested API: no error
    require_vllm()


def test_new_config_keys_are_validated(tiny_config):
    from remix_rft.trainer.config import ConfigError

    cfg = tiny_config("vllm_sleep_level=1", "weight_sync_bucket_mb=64", "dist_timeout_minutes=5")
    assert (cfg.vllm_sleep_level, cfg.weight_sync_bucket_mb, cfg.dist_timeout_minutes) == (1, 64, 5)
    for bad in ("vllm_sleep_level=3", "weight_sync_bucket_mb=-1", "dist_timeout_minutes=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            tiny_config(bad)


def test_dist_timeout_reaches_init_process_group(monkeypatch):
    from datetime import timedelta

    from remix_rft.engines import distributed

    seen = {}
    monkeypatch.setattr(distributed, "_ENV", None)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kw: seen.update(backend=backend, **kw))  # fmt: skip
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    distributed.setup("cpu", timeout_minutes=7)
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=7)}
