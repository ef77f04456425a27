"""remix-rft: rollout-efficient RL finetuning (PPO, GRPO, ReMix).

``from remix_rft import Trainer, TrainConfig`` is the Python API (``remix_rft/api``); the
names load on first use, so ``import remix_rft`` (and ``remix --help``) stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RunSummary", "StepMetrics", "TrainConfig", "TrainResult", "Trainer", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from remix_rft import api

        return getattr(api, name)
    raise AttributeError(f"module 'remix_rft' has no attribute {name!r}")
