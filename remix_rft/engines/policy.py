"""Policy, reference and critic models, and the per-token quantities the losses need."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from remix_rft.data.batch import TrainBatch
from remix_rft.engines.distributed import reshard
from remix_rft.engines.models import resolve_model_path

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
VALUE_HEAD_FILE = "value_head.safetensors"


def load_tokenizer(model: str) -> Any:
    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(model: str, *, dtype: str = "float32", gradient_checkpointing: bool = False) -> Any:
    policy = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(model), dtype=TORCH_DTYPES[dtype]
    )
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        policy.config.use_cache = False
    return policy


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy that never trains: the reference π_base."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    for model in (source, target):  # under FSDP2: shards copy onto shards
        reshard(model)
    with torch.no_grad():
        for dst, src in zip(target.parameters(), source.parameters(), strict=True):
            dst.copy_(src)


class ValueModel(nn.Module):
    """The critic: the policy's architecture (its backbone) with a scalar head per token."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        # Start near zero so early advantages are driven by rewards, not head noise.
        nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1))
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, model: str, *, dtype: str = "float32") -> ValueModel:
        path = resolve_model_path(model)
        critic = cls(AutoModel.from_pretrained(path, dtype=TORCH_DTYPES[dtype]))
        head_file = Path(path) / VALUE_HEAD_FILE
        if head_file.is_file():
            critic.head.load_state_dict(load_file(str(head_file)))
        return critic

    def save_pretrained(self, out_dir: str | Path) -> None:
        self.backbone.save_pretrained(out_dir)
        save_file(
            {k: v.contiguous() for k, v in self.head.state_dict().items()},
            str(Path(out_dir) / VALUE_HEAD_FILE),
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


def _response_slice(batch: TrainBatch) -> slice:
    """Columns whose outputs score the response tokens (each predicts the next token)."""
    width = batch.response_mask.shape[1]
    return slice(batch.prompt_len - 1, batch.prompt_len - 1 + width)


def response_logprobs(model: Any, batch: TrainBatch, *, temperature: float) -> torch.Tensor:
    """log π(y_t | x, y_<t) for every response token, at the sampling temperature: [B, R]."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        position_ids=batch.position_ids.to(device),
        use_cache=False,
    ).logits
    logits = logits[:, _response_slice(batch)].float() / temperature
    targets = batch.input_ids[:, batch.prompt_len :].to(device)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked - torch.logsumexp(logits, dim=-1)) * batch.response_mask.to(device)


def response_values(critic: ValueModel, batch: TrainBatch) -> torch.Tensor:
    """V of the state before each response token: [B, R]."""
    device = next(critic.parameters()).device
    values = critic(
        batch.input_ids.to(device), batch.attention_mask.to(device), batch.position_ids.to(device)
    )
    return values[:, _response_slice(batch)] * batch.response_mask.to(device)


@torch.no_grad()
def batched_no_grad(
    fn: Any, model: Any, batch: TrainBatch, micro: int, **kwargs: Any
) -> torch.Tensor:
    """Apply ``fn(model, sub_batch)`` over micro-batches without gradients; concatenate rows."""
    outs = []
    for begin in range(0, len(batch), micro):
        index = torch.arange(begin, min(begin + micro, len(batch)))
        outs.append(fn(model, batch.select(index), **kwargs).cpu())
    return torch.cat(outs, dim=0)
