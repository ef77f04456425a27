"""Collate samples into the padded tensors one forward pass needs.

Layout: prompts left-padded to a common length P, responses right-padded to R,
so response token t of every row sits at column P + t and is predicted by the
logits at column P + t - 1. Position ids count only real tokens, which keeps
log-probs identical to those of left-padded generation.

Every per-token quantity the losses use is ``[B, R]`` in that layout. A forward pass
need not pay for it: :func:`compact` lays a (micro-)batch out again with each row's
prompt and response contiguous, right-padded only to its own longest row, and
:class:`MicroBatching` cuts a minibatch into micro-batches by a padded-token budget
(rows sorted by length, as verl's dynamic batch size does), so that a mixed batch of
one 8k-token response and many short ones is not mostly padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from remix_rft.data.buffer import Sample


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R]
    position_ids: torch.Tensor  # [B, P + R]
    response_mask: torch.Tensor  # float [B, R]: 1 on real response tokens
    behavior_logprobs: torch.Tensor  # [B, R]
    advantages: torch.Tensor  # [B, R]: GRPO broadcasts the scalar; PPO fills per token
    rewards: torch.Tensor  # [B]
    versions: torch.Tensor  # int64 [B]: iteration each row was generated for
    policy_versions: torch.Tensor  # int64 [B]: learner iteration whose weights generated it
    finished: torch.Tensor  # bool [B]: ended with EOS (not cut at the token budget)
    prompt_len: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: torch.Tensor) -> TrainBatch:
        """Rows ``index`` of every per-sample tensor."""
        values = {
            f.name: getattr(self, f.name)[index] if f.name != "prompt_len" else self.prompt_len
            for f in fields(self)
        }
        return TrainBatch(**values)


def collate(samples: Sequence[Sample], pad_id: int) -> TrainBatch:
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch = len(samples)
    p_len = max(int(s.prompt_ids.numel()) for s in samples)
    r_len = max(max(int(s.response_ids.numel()) for s in samples), 1)
    input_ids = torch.full((batch, p_len + r_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, p_len + r_len), dtype=torch.long)
    response_mask = torch.zeros((batch, r_len))
    behavior = torch.zeros((batch, r_len))
    for i, s in enumerate(samples):
        p, r = int(s.prompt_ids.numel()), int(s.response_ids.numel())
        input_ids[i, p_len - p : p_len] = s.prompt_ids
        input_ids[i, p_len : p_len + r] = s.response_ids
        attention_mask[i, p_len - p : p_len + r] = 1
        response_mask[i, :r] = 1.0
        behavior[i, :r] = s.behavior_logprobs
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    advantages = torch.tensor([s.advantage for s in samples]).unsqueeze(1) * response_mask
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        response_mask=response_mask,
        behavior_logprobs=behavior,
        advantages=advantages,
        rewards=torch.tensor([s.reward for s in samples], dtype=torch.float32),
        versions=torch.tensor([s.version for s in samples], dtype=torch.long),
        policy_versions=torch.tensor([s.policy_version for s in samples], dtype=torch.long),
        finished=torch.tensor([s.finished for s in samples], dtype=torch.bool),
        prompt_len=p_len,
    )


# ---- forward-pass layout and micro-batches ------------------------------------------------
def prompt_lengths(batch: TrainBatch) -> torch.Tensor:
    """Real prompt tokens per row: [B]."""
    return batch.attention_mask[:, : batch.prompt_len].sum(dim=1)


def row_lengths(batch: TrainBatch) -> torch.Tensor:
    """Real tokens (prompt + response) per row: [B]."""
    return batch.attention_mask.sum(dim=1)


@dataclass
class CompactRows:
    """A batch laid out for the forward pass: row i holds its prompt and response
    contiguously from column 0, right-padded to the longest row of this batch only."""

    input_ids: torch.Tensor  # [B, W]
    attention_mask: torch.Tensor  # [B, W]
    position_ids: torch.Tensor  # [B, W]
    # Column whose output predicts response token t of row i (its prompt length - 1 + t);
    # 0 where token t is padding. Index [B, W]-shaped outputs with it to get [B, R].
    response_columns: torch.Tensor  # int64 [B, R]


def compact(batch: TrainBatch) -> CompactRows:
    """Drop every padding column this batch can do without (see the module docstring)."""
    lengths = row_lengths(batch)
    width = max(int(lengths.max()), 1)
    start = batch.prompt_len - prompt_lengths(batch)  # first real column of each row
    device = batch.input_ids.device  # the update compacts batches already on the GPU
    columns = torch.arange(width, device=device).unsqueeze(0)
    real = columns < lengths.unsqueeze(1)
    source = (start.unsqueeze(1) + columns).clamp(max=batch.input_ids.shape[1] - 1)
    input_ids = torch.where(real, batch.input_ids.gather(1, source), 0)
    respond = torch.arange(batch.response_mask.shape[1], device=device).unsqueeze(0)
    response_columns = (batch.prompt_len - start - 1).unsqueeze(1) + respond
    response_columns = torch.where(batch.response_mask.bool(), response_columns, 0)
    return CompactRows(
        input_ids=input_ids,
        attention_mask=real.long(),
        position_ids=torch.where(real, columns, 0),
        response_columns=response_columns,
    )


def padding_counts(lengths: torch.Tensor) -> tuple[int, int]:
    """(real tokens, tokens a compact forward pass processes) for rows of these lengths."""
    return int(lengths.sum()), int(lengths.numel() * max(int(lengths.max()), 1))


@dataclass(frozen=True)
class MicroBatching:
    """How a minibatch is cut into forward passes.

    ``rows`` caps the rows of a micro-batch (0: no cap). ``tokens`` (0: off, today's
    behaviour: consecutive rows, ``rows`` at a time) is a per-device budget of padded
    tokens, rows x longest row: rows are sorted by length and packed greedily, so each
    micro-batch holds rows of similar length and pads only to its own longest one; a
    row longer than the budget goes alone. Losses must divide by the count of the
    whole minibatch for the result to equal one big batch (``aggregate(denominator=)``).

    ``agree`` maps this process's number of micro-batches to the number every rank
    uses (the maximum, under data parallelism), because each forward pass of a sharded
    model is a collective: all ranks must run as many.
    """

    rows: int = 0
    tokens: int = 0
    agree: Callable[[int], float] = float  # one process: its own count

    def split(self, batch: TrainBatch, index: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Rows ``index`` of ``batch`` (default: all), as a list of index tensors."""
        index = torch.arange(len(batch)) if index is None else index
        if self.tokens <= 0:
            step = self.rows or max(len(index), 1)
            groups = [index[i : i + step] for i in range(0, len(index), step)]
        else:
            groups = self._by_budget(index, row_lengths(batch)[index])
        return _split_to_count(groups, int(self.agree(len(groups))))

    def _by_budget(self, index: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        order = torch.argsort(lengths, descending=True, stable=True)
        groups: list[list[int]] = []
        longest = 0
        for i in order.tolist():
            current = groups[-1] if groups else []
            rows = len(current) + 1
            full = self.rows and rows > self.rows
            if not current or full or rows * longest > self.tokens:
                groups.append([i])
                longest = int(lengths[i])  # sorted: the first row of a group is its longest
            else:
                current.append(i)
        return [index[torch.tensor(g)] for g in groups]


def _split_to_count(groups: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Halve the largest groups until there are ``count`` (never more rows than groups)."""
    groups = list(groups)
    while len(groups) < count:
        largest = max(range(len(groups)), key=lambda g: len(groups[g]))
        if len(groups[largest]) < 2:
            raise ValueError(f"cannot cut {sum(map(len, groups))} rows into {count} micro-batches")
        group = groups.pop(largest)
        half = (len(group) + 1) // 2
        groups[largest:largest] = [group[:half], group[half:]]
    return groups
