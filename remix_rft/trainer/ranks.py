"""What a torchrun run needs of the trainer: world-size checks and sharded (DCP) checkpoints.

Every rank saves its shard of the policy, reference, critic and optimizer states with
``torch.distributed.checkpoint``, its own replay buffer and RNG state, and rank 0 a
consolidated, Hugging-Face-loadable copy of the policy for ``remix eval``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from remix_rft.engines.distributed import DistEnv, full_state_dict, save_hf_policy
from remix_rft.trainer import checkpoint as ckpt
from remix_rft.trainer.config import ConfigError
from remix_rft.trainer.io import atomic_write_text

log = logging.getLogger(__name__)

DCP_DIR = "dcp"
RANK_STATE = "rank_{rank:05d}.pt"
FORMAT = "dcp"


def check_config(cfg: Any, world_size: int) -> None:
    """What data parallelism needs of a config; raises ConfigError naming the key."""
    if world_size <= 1:
        return
    keys = ("prompts_per_step", "minibatch_size")
    for key in (*keys, *(f"post_reincarnation_{k}" for k in keys)):
        value = getattr(cfg, key, 0)  # 0: a post-reincarnation key that is unset
        if value % world_size:
            raise ConfigError(
                f"config key '{key}': must be divisible by the world size {world_size} "
                f"(each rank takes {key}/{world_size}), got {value}"
            )
    off = cfg.offpolicy_batch_size()
    if off % world_size:
        log.warning(
            "%d off-policy samples per iteration do not split over %d ranks; each rank draws %d",
            off, world_size, off // world_size,
        )  # fmt: skip
    if getattr(cfg, "lora_rank", 0):
        raise ConfigError(
            f"config key 'lora_rank': LoRA runs in one process only for now, got {cfg.lora_rank} "
            f"with {world_size} ranks (launch without torchrun, or set lora_rank=0)"
        )


def _app_state(trainer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    state: dict[str, Any] = {
        "policy": get_model_state_dict(trainer.policy),
        "optimizer": get_optimizer_state_dict(trainer.policy, trainer.optimizer),
    }
    if trainer.reincarnated and trainer.reference is not None:
        state["reference"] = get_model_state_dict(trainer.reference)
    if trainer.critic is not None:
        state["critic"] = get_model_state_dict(trainer.critic)
        state["critic_optimizer"] = get_optimizer_state_dict(
            trainer.critic, trainer.critic_optimizer
        )
    return state


def _rank_state(trainer: Any) -> dict[str, Any]:
    return {
        "buffer": trainer.buffer.state_dict(),
        "sampler": trainer.sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "shuffle_rng": trainer.shuffle_rng.get_state(),
    }


def save_checkpoint(trainer: Any, step: int) -> Path:
    """Sharded DCP checkpoint + per-rank state + (rank 0) consolidated policy and counters."""
    import torch.distributed.checkpoint as dcp

    env: DistEnv = trainer.dist
    root = ckpt.checkpoint_root(trainer.run_dir)
    final = root / ckpt.step_dir_name(step)
    tmp = root / (final.name + ".tmp")
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    env.barrier()
    dcp.save(_app_state(trainer), checkpoint_id=str(tmp / DCP_DIR))
    torch.save(_rank_state(trainer), tmp / RANK_STATE.format(rank=env.rank))
    full = full_state_dict(trainer.policy)  # collective: every rank takes part
    if env.is_main:
        save_hf_policy(trainer.policy, full, trainer.tokenizer, tmp / "policy")
        torch.save(
            {
                "format": FORMAT,
                "world_size": env.world_size,
                "counters": asdict(trainer.counters),
                "scheduler": trainer.scheduler.state_dict(),
            },
            tmp / ckpt.STATE_FILE,
        )
    env.barrier()
    if env.is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(root / ckpt.LATEST, final.name + "\n")
        ckpt._prune(root, trainer.cfg.keep_checkpoints)
    env.barrier()
    return final


def checkpoint_world_size(checkpoint: Path) -> int | None:
    """Ranks that wrote a DCP checkpoint; None for a single-process checkpoint."""
    if not (checkpoint / DCP_DIR).is_dir():
        return None
    state = ckpt.load_state(checkpoint)
    return int(state["world_size"]) if state.get("format") == FORMAT else None


def check_resume(checkpoint: Path, world_size: int, distributed: bool) -> None:
    saved = checkpoint_world_size(checkpoint)
    saved_size = saved if saved is not None else 1
    if (saved is not None) != distributed or saved_size != world_size:
        raise ValueError(
            f"checkpoint {checkpoint} was written by {saved_size} rank(s) "
            f"({'sharded DCP' if saved is not None else 'single process'}) but this run has "
            f"{world_size} rank(s); resume with the same world size "
            f"(torchrun --nproc-per-node {saved_size} ...)"
            + ("" if saved is not None else " or without torchrun")
        )


def load_checkpoint(trainer: Any, checkpoint: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    env: DistEnv = trainer.dist
    check_resume(checkpoint, env.world_size, env.enabled)
    shared = ckpt.load_state(checkpoint)
    counters = type(trainer.counters)(**shared["counters"])
    trainer.counters = counters
    state = _app_state(trainer)  # shapes to load into (reference only when reincarnated)
    dcp.load(state, checkpoint_id=str(checkpoint / DCP_DIR))
    set_model_state_dict(trainer.policy, state["policy"])
    set_optimizer_state_dict(trainer.policy, trainer.optimizer, state["optimizer"])
    if "reference" in state:
        set_model_state_dict(trainer.reference, state["reference"])
    if trainer.critic is not None:
        set_model_state_dict(trainer.critic, state["critic"])
        set_optimizer_state_dict(
            trainer.critic, trainer.critic_optimizer, state["critic_optimizer"]
        )
    trainer.scheduler.load_state_dict(shared["scheduler"])
    mine = torch.load(checkpoint / RANK_STATE.format(rank=env.rank), weights_only=True)
    trainer.buffer.load_state_dict(mine["buffer"])
    trainer.sampler.load_state_dict(mine["sampler"])
    torch.set_rng_state(mine["torch_rng"])
    trainer.shuffle_rng.set_state(mine["shuffle_rng"])


class NullMetrics:
    """What ranks other than 0 hold instead of the metrics file."""

    def append(self, row: dict[str, Any]) -> None:
        pass

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        return []

    def read(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass
