"""The task interface the trainer sees: problems with answers, and a reward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Answer = str | int | list[str]


@dataclass(frozen=True)
class Problem:
    """One prompt (the user message, before the chat template) and its ground truth."""

    id: str
    prompt: str
    answer: Answer


class Task(Protocol):
    """Prompts plus a verifier. Implementations: embedded arithmetic, math datasets."""

    name: str

    def train_problems(self) -> Sequence[Problem]: ...

    def eval_problems(self) -> Sequence[Problem]: ...

    def reward(self, response: str, problem: Problem) -> float: ...
