"""What a torchrun run needs of the config and of ranks other than 0.

The sharded (DCP) checkpoints of a torchrun run live with the single-process ones in
``state.py``.
"""

from __future__ import annotations

import logging
from typing import Any

from remix_rft.trainer.config import ConfigError

log = logging.getLogger(__name__)


def check_config(cfg: Any, world_size: int) -> None:
    """What data parallelism needs of a config; raises ConfigError naming the key."""
    if world_size <= 1:
        return
    keys = ("prompts_per_step", "minibatch_size")
    for key in (*keys, *(f"post_reincarnation_{k}" for k in keys)):
        value = getattr(cfg, key, None)  # None: a post-reincarnation key that is unset
        if value is not None and value % world_size:
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
