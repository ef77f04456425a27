"""Versioned samples and the replay buffer of the last ν iterations (ReMix's reused data).

Each sample carries the iteration it was generated for, the policy version that
generated it and that behaviour policy's per-token log-probs μ, which Mix-PPG needs for its importance
ratio and clip centre long after the generating weights are gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Sample:
    prompt_ids: torch.Tensor  # int64 [P]
    response_ids: torch.Tensor  # int64 [R], EOS included when generated
    behavior_logprobs: torch.Tensor  # float32 [R]: log μ(y_t | ...) of the generating policy
    reward: float
    advantage: float  # GRPO group advantage, kept as computed when generated
    version: int  # iteration the sample was generated for (its first training iteration)
    group: int  # id of the prompt group (all G responses of one prompt)
    finished: bool  # ended with EOS
    # Learner iteration whose weights generated it: version - 1 when generation waits for
    # the learner (sync); up to max_staleness older when it runs ahead (async).
    policy_version: int = -1
    replays: int = 0  # iterations it has been replayed in (data/replay.py's diagnostics)

    _TENSORS = ("prompt_ids", "response_ids", "behavior_logprobs")
    _SCALARS = ("reward", "advantage", "version", "group", "finished", "policy_version", "replays")

    def __post_init__(self) -> None:
        if self.policy_version < 0:
            self.policy_version = self.version - 1

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {k: getattr(self, k).clone() for k in self._TENSORS}
        state.update({k: getattr(self, k) for k in self._SCALARS})
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Sample:
        # Checkpoints from before asynchronous rollouts hold no policy_version (sync: version − 1).
        return cls(**{k: state[k] for k in (*cls._TENSORS, *cls._SCALARS) if k in state})


def draw(pool: Sequence[Sample], n: int, rng: torch.Generator) -> list[Sample]:
    """``n`` of ``pool`` uniformly without replacement, in pool order (all if fewer)."""
    if n <= 0 or not pool:
        return []
    if n >= len(pool):
        return list(pool)
    order = torch.randperm(len(pool), generator=rng)[:n].tolist()
    return [pool[i] for i in sorted(order)]


class ReplayBuffer:
    """Samples of the last ``window`` iterations, the current one included."""

    def __init__(self, window: int, seed: int = 0) -> None:
        if window < 1:
            raise ValueError(f"replay window must be >= 1, got {window}")
        self.window = window
        self._samples: list[Sample] = []
        self._rng = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def rng(self) -> torch.Generator:
        """The draw's generator (in the checkpoint), shared by the replay strategies."""
        return self._rng

    def versions(self) -> list[int]:
        return sorted({s.version for s in self._samples})

    def add(self, samples: Sequence[Sample]) -> None:
        self._samples.extend(samples)

    def evict(self, current_version: int) -> None:
        """Keep exactly the versions ``current_version - window + 1 .. current_version``."""
        oldest = current_version - self.window + 1
        self._samples = [s for s in self._samples if s.version >= oldest]

    def clear(self) -> None:
        self._samples = []

    def past(self, current_version: int) -> list[Sample]:
        """Stored samples generated before ``current_version``."""
        return [s for s in self._samples if s.version < current_version]

    def sample_past(self, n: int, current_version: int) -> list[Sample]:
        """Draw ``n`` past samples uniformly without replacement (all of them if fewer)."""
        return draw(self.past(current_version), n, self._rng)

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "samples": [s.to_state() for s in self._samples],
            "rng": self._rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved buffer; its window must be this one's: a resumed run keeps ν
        (a changed window would silently change which stored iterations count)."""
        saved = int(state["window"])
        if saved != self.window:
            raise ValueError(
                f"config key 'window': the checkpoint was written with window={saved}, this "
                f"run asks for window={self.window}; a resumed run keeps its replay window "
                f"(resume with window={saved}, or start a new run)"
            )
        self._samples = [Sample.from_state(s) for s in state["samples"]]
        self._rng.set_state(state["rng"])
