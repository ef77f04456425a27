"""The asynchronous producer's process: its own model copy, engine and task.

Spawned by :class:`~remix_rft.trainer.rollouts.ProducerProcess` as the trainer starts,
it imports and loads its model while the learner loads its own, then waits for its
:class:`ProducerStart` (the learner's random state, engine options and the weight
layout, known only once the learner holds its weights). Then it loops: take the next
request, make sure its weights are at least the request's oldest allowed version
(waiting for the learner to publish one if not), pick up any newer published weights
— only here, between generation calls — generate, score, send the packed rollout
back, with the random state it left (what the learner's checkpoint stores, so a resumed run
continues the producer's stream: docs/design.md §1.6). Any exception goes back to the learner
with its traceback; the process also ends when the learner's process is gone, so a killed run
leaves no producer behind. It ignores the preemption signals (a signal to the process group
reaches it too): the learner finishes its step with it, saves, then stops it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from remix_rft.data.buffer import Sample
from remix_rft.engines.catalog import build_engine
from remix_rft.engines.distributed import DistEnv
from remix_rft.engines.policy import load_policy, load_tokenizer
from remix_rft.engines.rollout import EngineOptions, RolloutEngine
from remix_rft.engines.transport import WeightTransport
from remix_rft.trainer.config import ConfigError, TrainConfig
from remix_rft.trainer.mp_tempdir import use_private_tempdir
from remix_rft.trainer.preemption import ignore_in_this_process
from remix_rft.trainer.producer import Producer, PromptFormatter, Rollout
from remix_rft.trainer.tasks import build_task

log = logging.getLogger(__name__)

# A torchrun rank's environment: the producer is one process, not a rank of the job.
TORCHRUN_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
)  # fmt: skip
POLL_S = 0.005  # waiting for a newer policy version


@dataclass
class ProducerSpec:
    """What the producer process is spawned with (picklable)."""

    cfg: TrainConfig
    device: str  # "cpu" or "cuda:N"
    threads: int  # torch CPU threads (0: torch's default)


def producer_device(cfg: TrainConfig, learner: torch.device, distributed: bool) -> str:
    """Where the async producer generates: ``rollout_device``, or the learner's device.
    Samples cross to the learner on the CPU (the engines return CPU tensors), so the two
    devices need not match."""
    wanted = cfg.rollout_device
    if not wanted:
        return str(learner)
    if distributed:
        raise ConfigError(
            "config key 'rollout_device': only for a one-process run; under torchrun each "
            f"rank's producer uses its rank's device (got {wanted!r})"
        )
    if wanted.startswith("cuda"):
        index = int(wanted.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"config key 'rollout_device': {wanted!r}, but this machine has {count} "
                "CUDA device(s)"
            )
    return wanted


@dataclass
class ProducerStart:
    """The producer's first message, once the learner holds its weights (a resumed run's
    too) and has evaluated its base."""

    rng_state: torch.Tensor  # the learner's generator state: sampling continues its stream
    engine_options: EngineOptions
    layout: Any  # WeightTransport.layout()


def rng_bytes() -> bytes:
    """torch's CPU generator state as plain bytes: it crosses the queue inside the pickle
    rather than as one more shared-memory segment."""
    return torch.get_rng_state().numpy().tobytes()


def rng_tensor(state: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(state), dtype=torch.uint8).clone()


def producer_main(
    spec: ProducerSpec, transport: WeightTransport, requests: Any, results: Any
) -> None:
    ignore_in_this_process(spec.cfg.preempt_signals)  # the learner stops it (after saving)
    use_private_tempdir()
    try:
        _serve(spec, transport, requests, results)
    except BaseException:  # noqa: BLE001 - the learner must see every failure
        results.put(("error", -1, traceback.format_exc()))
        raise SystemExit(1) from None


def _serve(spec: ProducerSpec, transport: WeightTransport, requests: Any, results: Any) -> None:
    for name in TORCHRUN_VARIABLES:
        os.environ.pop(name, None)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    cfg = spec.cfg
    task = build_task(cfg.task, cfg.model)  # the slow part of starting, done while the learner starts
    tokenizer = load_tokenizer(cfg.model)
    model = load_policy(cfg.model, dtype=cfg.dtype).to(spec.device)
    model.eval().requires_grad_(False)
    start: ProducerStart | None = _next_request(requests)
    if start is None:  # the learner stopped before it needed rollouts
        return
    torch.set_rng_state(start.rng_state)
    transport.attach(start.layout)
    env = DistEnv(device=torch.device(spec.device))
    engine = build_engine(
        cfg.rollout_engine, policy=model, tokenizer=tokenizer, options=start.engine_options,
        env=env,
    )  # fmt: skip
    producer = Producer(
        cfg, task, list(task.train_problems()), PromptFormatter(tokenizer, cfg.task.instruction)
    )
    have = -1
    try:
        while (message := _next_request(requests)) is not None:
            epoch, request, rng_state = message
            if rng_state is not None:  # after a restart: the stream of the last rollout used
                torch.set_rng_state(rng_tensor(rng_state))
            have = _weights_at_least(transport, model, engine, have, request.oldest_version)
            with engine.awake():
                rollout = producer.produce(engine, request, have, record_logprobs=True)
            packed = {**packed_rollout(rollout), "rng_state": rng_bytes()}
            results.put(("rollout", epoch, packed))
    finally:
        engine.close()


def _parent_alive() -> bool:
    parent = mp.parent_process()
    return parent is None or parent.is_alive()


def _next_request(requests: Any) -> Any:
    while _parent_alive():
        try:
            return requests.get(timeout=1.0)
        except queue.Empty:
            continue
    return None


def _weights_at_least(
    transport: WeightTransport, model: Any, engine: RolloutEngine, have: int, oldest: int
) -> int:
    """The newest published weights in ``model`` (and the engine), waiting until they are
    at least version ``oldest``: the producer pauses rather than run too far ahead."""
    while True:
        received = transport.receive(model, have)
        if received is not None:
            have = received
            with engine.awake():
                engine.sync_weights(model)  # vLLM: push into the engine; hf samples ``model``
        if have >= oldest:
            return have
        if not _parent_alive():
            raise SystemExit(0)
        time.sleep(POLL_S)


# ---- rollouts across the process boundary ------------------------------------------
def packed_rollout(rollout: Rollout) -> dict[str, Any]:
    """Three flat tensors instead of three per sample: each tensor crosses the queue as
    one shared-memory segment, and thousands of small ones would exhaust descriptors."""
    samples = rollout.samples
    return {
        "step": rollout.step,
        "policy_version": rollout.policy_version,
        "generated": rollout.generated,
        "metrics": rollout.metrics,
        "num_tokens": rollout.num_tokens,
        "gen_seconds": rollout.gen_seconds,
        "tokens_per_s": rollout.tokens_per_s,
        "reflection_rate": rollout.reflection_rate,
        "prompt_ids": _cat([s.prompt_ids for s in samples], torch.long),
        "response_ids": _cat([s.response_ids for s in samples], torch.long),
        "logprobs": _cat([s.behavior_logprobs for s in samples], torch.float32),
        "prompt_lens": [int(s.prompt_ids.numel()) for s in samples],
        "response_lens": [int(s.response_ids.numel()) for s in samples],
        "scalars": [
            (s.reward, s.advantage, s.version, s.group, s.finished, s.policy_version)
            for s in samples
        ],
    }


def _cat(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(tensors).to(dtype) if tensors else torch.zeros(0, dtype=dtype)


def unpacked_rollout(packed: dict[str, Any]) -> Rollout:
    prompts = torch.split(packed["prompt_ids"].clone(), packed["prompt_lens"])
    responses = torch.split(packed["response_ids"].clone(), packed["response_lens"])
    logprobs = torch.split(packed["logprobs"].clone(), packed["response_lens"])
    samples = [
        Sample(
            prompt_ids=p.clone(),
            response_ids=r.clone(),
            behavior_logprobs=lp.clone(),
            reward=reward,
            advantage=advantage,
            version=version,
            group=group,
            finished=finished,
            policy_version=policy_version,
        )  # fmt: skip
        for p, r, lp, (reward, advantage, version, group, finished, policy_version) in zip(
            prompts, responses, logprobs, packed["scalars"], strict=True
        )
    ]
    return Rollout(
        rng_state=packed.get("rng_state"),
        step=packed["step"],
        samples=samples,
        policy_version=packed["policy_version"],
        generated=packed["generated"],
        num_tokens=packed["num_tokens"],
        gen_seconds=packed["gen_seconds"],
        tokens_per_s=packed["tokens_per_s"],
        reflection_rate=packed["reflection_rate"],
        metrics=packed["metrics"],
    )
