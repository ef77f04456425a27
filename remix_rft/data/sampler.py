"""Deterministic prompt order: shuffled epochs over the train split, resumable."""

from __future__ import annotations

from typing import Any

import torch


class PromptSampler:
    def __init__(self, num_problems: int, seed: int) -> None:
        if num_problems < 1:
            raise ValueError("the task has no training problems")
        self.num_problems = num_problems
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_problems, generator=gen).tolist()

    def next(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if self.position == self.num_problems:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation()
            take = min(n - len(out), self.num_problems - self.position)
            out.extend(self._order[self.position : self.position + take])
            self.position += take
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()
