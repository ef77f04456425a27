"""Build the trainer's models: policy, reference and critic, placed, sharded and cast.

Kept apart from ``distributed`` (process groups, FSDP2) and ``policy`` (model classes and
their log-probs) so that neither has to import the other's consumers.
"""

from __future__ import annotations

import logging
from typing import Any

from remix_rft.engines import lora
from remix_rft.engines.distributed import (
    DistEnv,
    autocast_bf16,
    enable_gradient_checkpointing,
    shard_model,
)
from remix_rft.engines.policy import ValueModel, frozen_copy, load_policy

log = logging.getLogger(__name__)


def build_models(cfg: Any, env: DistEnv) -> tuple[Any, Any | None]:
    """Policy and reference π_base, placed, sharded and cast as the config asks.

    The default (one CPU process, float32, no LoRA) is exactly ``load_policy`` +
    ``frozen_copy``. ``dtype=bfloat16``: FSDP2 mixed precision under torchrun; in one
    process fp32 master weights with bf16 autocast around every forward. No reference
    copy (None) when nothing uses π_base (``cfg.needs_reference``); LoRA's costs nothing.
    """
    master = "float32" if (env.enabled or cfg.dtype == "bfloat16") else cfg.dtype
    policy = load_policy(cfg.model, dtype=master, gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if getattr(cfg, "lora_rank", 0):
        policy = lora.wrap(policy, cfg)
        trainable, total = lora.trainable_parameters(policy)
        log.info("LoRA rank %d: %d of %d parameters trainable", cfg.lora_rank, trainable, total)
        policy.to(env.device)
        reference = lora.AdapterDisabled(policy)
    else:
        reference = frozen_copy(policy) if cfg.needs_reference else None
        for model in (policy, reference):
            if model is None:
                continue
            if env.enabled:
                shard_model(model, env, dtype=cfg.dtype)
            elif env.device.type != "cpu":
                model.to(env.device)
    if cfg.dtype == "bfloat16" and not env.enabled:
        autocast_bf16(policy, env.device)
        if not getattr(cfg, "lora_rank", 0) and reference is not None:
            autocast_bf16(reference, env.device)
    return policy, reference


def build_critic(cfg: Any, env: DistEnv) -> Any:
    master = "float32" if (env.enabled or cfg.dtype == "bfloat16") else cfg.dtype
    critic = ValueModel.from_pretrained(cfg.critic_model or cfg.model, dtype=master)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(critic.backbone)
    if env.enabled:
        shard_model(critic, env, dtype=cfg.dtype)
    else:
        if env.device.type != "cpu":
            critic.to(env.device)
        if cfg.dtype == "bfloat16":
            autocast_bf16(critic, env.device)
    return critic
