"""The Python API's inputs as the trainer reads them: datasets as JSONL files in the run
directory, a loaded model as an HF model directory, reward callables as import specs.

The trainer (``trainer/loop.py``) and its asynchronous producer and reward workers are
configured by a :class:`TrainConfig` alone, which is what makes ``remix train --resume``
and the CLI run the same code: so everything a script passes as an object becomes
something a config can name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remix_rft.data.math_dataset import _is_json as is_json
from remix_rft.reward_protocol import callable_spec, check_signature

PROMPT_KEY = "prompt"  # TRL's name for the prompt column

DatasetLike = Any  # datasets.Dataset, a list of dicts, or a path / hub id (str or Path)


class DatasetInputError(ValueError):
    """A dataset row the trainer cannot use; the message names the dataset, row and key."""


@dataclass(frozen=True)
class PreparedDataset:
    """Where a dataset's rows are (or will be written) and which columns they have."""

    path: str  # file or hub id that the task loads
    rows: list[dict[str, Any]] | None  # rows still to write (None: ``path`` already holds them)
    columns: tuple[str, ...]  # the columns besides ``prompt`` (None known for a path)

    def write(self) -> None:
        if self.rows is None:
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as fh:
            for row in self.rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare_dataset(data: DatasetLike, target: Path, what: str) -> PreparedDataset:
    """``data`` as rows bound for ``target`` (JSONL), checked; a path passes through."""
    if isinstance(data, str | Path):
        return PreparedDataset(str(data), None, ())
    rows = _rows(data, what)
    if not rows:
        raise DatasetInputError(f"{what} is empty")
    columns: dict[str, None] = {}
    for index, row in enumerate(rows):
        _check_row(row, index, what)
        columns.update(dict.fromkeys(k for k in row if k != PROMPT_KEY))
    return PreparedDataset(str(target), rows, tuple(columns))


def _rows(data: Any, what: str) -> list[dict[str, Any]]:
    if hasattr(data, "to_list") and hasattr(data, "column_names"):  # datasets.Dataset
        return list(data.to_list())
    if isinstance(data, Mapping) or not isinstance(data, Iterable):
        raise DatasetInputError(
            f"{what} must be a datasets.Dataset, a list of dicts or a path, "
            f"got {type(data).__name__}"
        )
    return list(data)


def _check_row(row: Any, index: int, what: str) -> None:
    if not isinstance(row, Mapping):
        raise DatasetInputError(f"{what}: row {index} is a {type(row).__name__}, not a dict")
    prompt = row.get(PROMPT_KEY)
    if not isinstance(prompt, str) or not prompt.strip():
        kind = "missing" if prompt is None else f"a {type(prompt).__name__}"
        hint = " (conversational prompts, lists of messages, are not supported yet: give the " \
               "user message as a string; the model's chat template is applied)"  # fmt: skip
        raise DatasetInputError(
            f"{what}: row {index} key 'prompt' is {kind}, not a non-empty string"
            + (hint if isinstance(prompt, list) else "")
        )
    for key, value in row.items():
        if not is_json(value):  # what a reward worker receives unchanged
            raise DatasetInputError(
                f"{what}: row {index} key {key!r} holds a {type(value).__name__}; reward "
                "functions receive JSON values (str, number, bool, None, lists, dicts)"
            )


def reward_specs(
    funcs: Sequence[Callable[..., Any] | str] | Callable[..., Any] | str,
    columns: Sequence[str],
) -> list[str]:
    """Import specs of TRL-protocol reward functions, their signatures checked against the
    columns they will receive (RewardError names the function and the fix)."""
    if callable(funcs) or isinstance(funcs, str):
        funcs = [funcs]
    specs = []
    for fn in funcs:
        spec = callable_spec(fn)
        if not isinstance(fn, str):
            check_signature(fn, spec, columns)
        specs.append(spec)
    return specs


def save_loaded_model(model: Any, tokenizer: Any, target: Path) -> str:
    """A model object (and its tokenizer) as an HF directory the trainer loads from: the
    trainer, its reference copy and an asynchronous producer or vLLM all load by path."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        source = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
        if not source:
            raise ValueError("a loaded model needs its tokenizer: pass processing_class=tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(source)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)
