"""Building a trainer's parts from its configuration: the run directory, the models,
optimizers and streams of :class:`TrainerState`, and the options of the rollout engine.

Functions of the configuration and what the trainer has loaded (tokenizer, problems), so
``loop.py`` holds only the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from remix_rft.data.buffer import ReplayBuffer
from remix_rft.data.sampler import PromptSampler
from remix_rft.engines import factory
from remix_rft.engines.distributed import DistEnv
from remix_rft.engines.models import resolve_model_path
from remix_rft.engines.rollout import EngineOptions
from remix_rft.trainer.config import TrainConfig, dump_config
from remix_rft.trainer.io import make_run_dir
from remix_rft.trainer.optim import UpdateSchedule, adamw, lr_scheduler
from remix_rft.trainer.state import Counters, TrainerState


def build_state(
    cfg: TrainConfig, dist: DistEnv, num_train_problems: int, tokenizer: Any
) -> tuple[TrainerState, UpdateSchedule]:
    """Fresh models, optimizers, replay buffer and sampling streams, and the lr schedule
    (its length is recounted at reincarnation and on resume)."""
    policy, reference = factory.build_models(cfg, dist)
    optimizer = adamw(policy.parameters(), cfg.lr, cfg)
    schedule = UpdateSchedule(cfg.lr_schedule, cfg.warmup_updates, cfg.planned_updates())
    critic = critic_optimizer = None
    if cfg.uses_critic:
        critic = factory.build_critic(cfg, dist)
        critic_optimizer = adamw(critic.parameters(), cfg.critic_lr, cfg)
    state = TrainerState(
        policy=policy, reference=reference, critic=critic, optimizer=optimizer,
        critic_optimizer=critic_optimizer, scheduler=lr_scheduler(optimizer, schedule),
        buffer=ReplayBuffer(cfg.window, seed=cfg.seed + 1 + 7919 * dist.rank),
        sampler=PromptSampler(num_train_problems, cfg.seed),
        shuffle_rng=torch.Generator().manual_seed(cfg.seed + 2),
        counters=Counters(), tokenizer=tokenizer, lora=bool(cfg.lora_rank),
    )  # fmt: skip
    return state, schedule


def engine_options(
    cfg: TrainConfig,
    rank: int,
    prompt_lengths: Callable[[], Sequence[int]],
) -> EngineOptions:
    """The rollout engine's options; ``prompt_lengths`` (token counts of every train and
    eval prompt) is only called to size vLLM's KV cache when ``vllm_max_model_len`` is 0."""
    max_len = cfg.vllm_max_model_len
    if cfg.rollout_engine == "vllm" and not max_len:
        max_len = max(prompt_lengths()) + max(cfg.max_new_tokens, cfg.eval_max_new_tokens or 0)
    return EngineOptions(
        model_path=resolve_model_path(cfg.model),
        dtype=cfg.dtype,
        seed=cfg.seed + 7919 * rank,
        max_model_len=max_len,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        sleep_between_rollouts=cfg.vllm_sleep,
        sleep_level=cfg.vllm_sleep_level,
        weight_sync_bucket_mb=cfg.weight_sync_bucket_mb,
        enforce_eager=cfg.vllm_enforce_eager,
        batch_size=0,
    )


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """A new run directory holding the run's config; one that already holds a run is refused."""
    run_dir = cfg.resolved_out_dir()
    if (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(
            f"run directory {run_dir} already holds a run; resume it with "
            f"`remix train --resume {run_dir}` or choose another out_dir="
        )
    make_run_dir(run_dir, dump_config(cfg))  # RunDirError: one line, exit 2 in the CLI
    return run_dir
