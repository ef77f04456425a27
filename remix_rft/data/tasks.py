"""The task interface the trainer sees: problems with answers, and a reward."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Answer = str | int | list[str]


@dataclass(frozen=True)
class Problem:
    """One prompt (the user message, before the chat template) and its ground truth."""

    id: str
    prompt: str
    answer: Answer
    # The other fields of its dataset row (JSON values), for a user's reward function.
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """What a reward function receives: the row's fields plus ``id``, ``prompt`` and
        the normalised ``answer``."""
        return {**self.meta, "id": self.id, "prompt": self.prompt, "answer": self.answer}


class Task(Protocol):
    """Prompts plus a verifier. Implementations: embedded arithmetic, math datasets."""

    name: str

    def train_problems(self) -> Sequence[Problem]: ...

    def eval_problems(self) -> Sequence[Problem]: ...

    def reward(self, response: str, problem: Problem) -> float: ...
