"""Build the trainer's models: policy, reference and critic, placed, sharded and cast.

Kept apart from ``distributed`` (process groups, FSDP2) and ``policy`` (model classes and
their log-probs) so that neither has to import the other's consumers.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from remix_rft.engines import lora
from remix_rft.engines.distributed import (
    DistEnv,
    autocast_bf16,
    enable_gradient_checkpointing,
    shard_model,
)
from remix_rft.engines.policy import (
    ValueModel,
    empty_critic,
    empty_policy,
    frozen_copy,
    load_policy,
)

log = logging.getLogger(__name__)


def build_models(cfg: Any, env: DistEnv) -> tuple[Any, Any | None]:
    """Policy and reference π_base, placed, sharded and cast as the config asks.

    The default (one CPU process, float32, no LoRA) is exactly ``load_policy`` +
    ``frozen_copy``. ``dtype=bfloat16``: FSDP2 mixed precision under torchrun; in one
    process fp32 master weights with bf16 autocast around every forward. No reference
    copy (None) when nothing uses π_base (``cfg.needs_reference``); LoRA's costs nothing.
    """
    master = "float32" if (env.enabled or cfg.dtype == "bfloat16") else cfg.dtype
    if env.enabled and not getattr(cfg, "lora_rank", 0):
        return _sharded_models(cfg, env, master)
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


def _sharded_models(cfg: Any, env: DistEnv, master: str) -> tuple[Any, Any | None]:
    """Loading once (issue #38): rank 0 reads the checkpoint; every rank builds the policy
    (and the reference) on the meta device, shards it and receives its shards from rank 0.
    No rank but rank 0 ever holds the full fp32 model, and rank 0 holds it once."""
    full = load_policy(cfg.model, dtype=master) if env.is_main else None

    def build(source: Any) -> Any:
        model = empty_policy(cfg.model, dtype=master)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return load_from_rank0(shard_model(model, env, dtype=cfg.dtype), source, env)

    policy = build(full)
    reference = frozen_copy(build(full), copy=False) if cfg.needs_reference else None
    return policy, reference


def build_critic(cfg: Any, env: DistEnv) -> Any:
    master = "float32" if (env.enabled or cfg.dtype == "bfloat16") else cfg.dtype
    if env.enabled:  # loading once, as for the policy
        path = cfg.critic_model or cfg.model
        full = ValueModel.from_pretrained(path, dtype=master) if env.is_main else None
        critic = empty_critic(path, dtype=master)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(critic.backbone)
        return load_from_rank0(shard_model(critic, env, dtype=cfg.dtype), full, env)
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


def load_from_rank0(model: nn.Module, full: nn.Module | None, env: DistEnv) -> nn.Module:
    """Fill a sharded (meta-built) ``model`` from rank 0's ``full`` copy (None elsewhere).

    ``set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)`` sends each
    tensor from rank 0 and keeps each rank's shard (as torchtitan loads); buffers outside
    the state dict (rotary ``inv_freq``) are broadcast from rank 0's model too."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = full.state_dict() if full is not None else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state, options=options)
    source = dict(full.named_buffers()) if full is not None else {}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if env.is_main:
                buffer.copy_(source[name])
            dist.broadcast(buffer, src=0)
    return model
