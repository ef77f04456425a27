"""Collate samples into the padded tensors one forward pass needs.

Layout: prompts left-padded to a common length P, responses right-padded to R,
so response token t of every row sits at column P + t and is predicted by the
logits at column P + t - 1. Position ids count only real tokens, which keeps
log-probs identical to those of left-padded generation.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    versions: torch.Tensor  # int64 [B]
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
        prompt_len=p_len,
    )
