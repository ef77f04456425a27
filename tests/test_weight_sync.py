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
    from remix_rft.engines import distributed

    env = distributed.setup("cpu")
    try:
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
