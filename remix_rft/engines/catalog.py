"""Choose a rollout engine by name: the registry of ``engines/rollout.py`` with the
built-in engines loaded (``hf``, ``hf-static`` from ``generation``, ``vllm`` from
``vllm_engine``, which imports vLLM itself only when that engine is built)."""

from __future__ import annotations

from typing import Any

from remix_rft.engines import generation, vllm_engine  # noqa: F401  (they register themselves)
from remix_rft.engines.rollout import ENGINES, EngineOptions, RolloutEngine


def engine_names() -> tuple[str, ...]:
    return tuple(ENGINES)


def build_engine(
    name: str, *, policy: Any, tokenizer: Any, options: EngineOptions, env: Any = None
) -> RolloutEngine:
    """The engine ``name`` for this policy (``env``: the rank's DistEnv under torchrun)."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; one of {', '.join(ENGINES)}")
    return ENGINES[name](policy=policy, tokenizer=tokenizer, options=options, env=env)
