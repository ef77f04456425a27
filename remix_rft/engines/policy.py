"""Policy, reference and critic models, and the per-token quantities the losses need."""

from __future__ import annotations

import contextlib
import copy as _copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from remix_rft.data.batch import MicroBatching, TrainBatch, compact
from remix_rft.engines.distributed import gather_root, is_sharded, reshard
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


def empty_policy(model: str, *, dtype: str = "float32") -> Any:
    """The policy's architecture on the meta device (no memory): a sharded run's ranks build
    this and receive their shards from rank 0 (``factory.load_from_rank0``)."""
    from transformers import AutoConfig, GenerationConfig

    path = resolve_model_path(model)
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        policy = AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[dtype])
    if (Path(path) / "generation_config.json").is_file():  # EOS ids come from it too
        policy.generation_config = GenerationConfig.from_pretrained(path)
    return policy


def empty_critic(model: str, *, dtype: str = "float32") -> ValueModel:
    """The critic's architecture on the meta device (see :func:`empty_policy`)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_path(model))
    with torch.device("meta"):
        return ValueModel(AutoModel.from_config(config, dtype=TORCH_DTYPES[dtype]))


def frozen_copy(model: nn.Module, *, copy: bool = True) -> nn.Module:
    """A model that never trains: the reference π_base (a copy of ``model`` unless ``copy``
    is False: then ``model`` itself, frozen)."""
    ref = _copy.deepcopy(model) if copy else model
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


# Response tokens per output-head chunk: one [1024, V] fp32 tensor is 0.6 GB at V = 152k.
DEFAULT_CHUNK_TOKENS = 1024


@dataclass
class TokenStats:
    """Per response token, at the sampling temperature: [B, R] each, 0 on padding."""

    logprobs: torch.Tensor  # log π(y_t | x, y_<t)
    entropy: torch.Tensor  # H(π(· | x, y_<t))


class _LogprobEntropy(torch.autograd.Function):
    """Log-softmax at a temperature, taken at the targets, and the entropy, from logits [N, V].

    Autograd through ``log_softmax`` + an entropy keeps ~5 [N, V] fp32 tensors alive in
    the backward; this keeps only the scaled fp32 logits and builds the gradient in
    place, so that one chunk costs ~3 [N, V] fp32 tensors at its peak.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)  # None tells backward that a term is unused
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)
        picked = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
        entropy = lse - (z - lse.unsqueeze(-1)).exp_().mul_(z).sum(dim=-1)  # lse - E_p[z]
        ctx.save_for_backward(z, targets, lse, entropy)
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        return picked, entropy

    @staticmethod
    def backward(
        ctx: Any, grad_logprob: torch.Tensor | None, grad_entropy: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None, None]:
        z, targets, lse, entropy = ctx.saved_tensors
        g_lp = torch.zeros_like(lse) if grad_logprob is None else grad_logprob
        probs = (z - lse.unsqueeze(-1)).exp_()
        # d logp_y/dz = onehot(y) - p;  dH/dz = -p (log p + H), with log p = z - lse.
        if grad_entropy is None:
            grad = probs.mul_(g_lp.unsqueeze(-1))
        else:
            grad = z - (lse - entropy).unsqueeze(-1)
            grad.mul_(grad_entropy.unsqueeze(-1)).add_(g_lp.unsqueeze(-1)).mul_(probs)
            del probs
        grad.neg_().scatter_add_(-1, targets.unsqueeze(-1), g_lp.unsqueeze(-1))
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        return grad.to(ctx.dtype), None, None


def _head_stats(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    temperature: float,
    autocast_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output head and token statistics of one chunk of response positions [n, H]."""
    # A model whose forward runs under autocast (bf16 in one process) gets its head's too.
    cast = (
        torch.autocast(hidden.device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with cast:
        logits = head(hidden)
    return _LogprobEntropy.apply(logits, targets, temperature)


def _chunked_head_stats(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    temperature: float,
    chunk_tokens: int,
    autocast_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_head_stats`` a chunk at a time; with gradients, each chunk is recomputed in the
    backward (activation checkpointing), so no two chunks' logits are ever alive at once."""
    grad = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in head.parameters())
    )
    parts = []
    for begin in range(0, max(hidden.shape[0], 1), chunk_tokens):  # one empty chunk if N = 0
        end = begin + chunk_tokens
        args = (hidden[begin:end], targets[begin:end], head, temperature, autocast_dtype)
        parts.append(
            checkpoint(_head_stats, *args, use_reentrant=False) if grad else _head_stats(*args)
        )
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def output_head(model: Any) -> nn.Module | None:
    """The vocabulary projection (HF ``get_output_embeddings``; peft forwards the call to
    the wrapped model), or None where a model does not expose one."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def _is_sharded_weight(head: nn.Module, model: Any) -> bool:
    """A sharded head that ``gather_root`` cannot gather (a model sharded otherwise than by
    ``shard_model``) cannot be applied outside the forward: the full-logits path runs."""
    from torch.distributed.tensor import DTensor

    return isinstance(getattr(head, "weight", None), DTensor) and not is_sharded(model)


def _at_response(values: torch.Tensor, columns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows of ``values`` [B, W, ...] at the real response positions, in row-major order: [N, ...]."""
    rows, tokens = mask.nonzero(as_tuple=True)
    return values[rows, columns[rows, tokens]]


def _final_norm(model: Any) -> nn.Module | None:
    """The decoder's last module (its final norm), whose output is the last hidden state."""
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    norm = getattr(decoder, "norm", None)
    return norm if isinstance(norm, nn.Module) else None


def _last_hidden(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The last layer's hidden states [B, W, H] from the model's own forward
    (``logits_to_keep=1``: its head runs on one position only).

    With gradients they come back through the root's output, where FSDP2 hooks its
    backward. Without (the π_k / π_base passes) ``output_hidden_states`` would keep every
    layer's [B, W, H] until the forward returns: the final norm's output is taken by a
    hook instead, so one layer's hidden states are alive at a time (issue #38).
    """
    norm = None if torch.is_grad_enabled() else _final_norm(model)
    if norm is None:
        out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1]
    captured: list[torch.Tensor] = []
    handle = norm.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1]


def response_stats(
    model: Any,
    batch: TrainBatch,
    *,
    temperature: float,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> TokenStats:
    """Log-probs and entropy of every response token, at the sampling temperature.

    The backbone runs on the batch's compact layout (no padding beyond its own longest
    row); the output head then runs on the response positions only, ``chunk_tokens`` at
    a time, so no [B, T, V] tensor is ever built. ``chunk_tokens=0``, or a model without
    a usable head, takes the full logits from the model's own forward instead.
    """
    device = next(model.parameters()).device
    rows = compact(batch)
    inputs = {
        "input_ids": rows.input_ids.to(device),
        "attention_mask": rows.attention_mask.to(device),
        "position_ids": rows.position_ids.to(device),
    }
    mask = batch.response_mask.to(device).bool()
    columns = rows.response_columns.to(device)
    targets = batch.input_ids[:, batch.prompt_len :].to(device)[mask]
    head = output_head(model) if chunk_tokens > 0 else None
    if head is not None and not _is_sharded_weight(head, model):
        hidden = _at_response(_last_hidden(model, inputs), columns, mask)
        gather_root(model)  # under FSDP2: the full head weight until the backward is done
        autocast_dtype = getattr(model, "autocast_dtype", None)
        logprobs, entropy = _chunked_head_stats(
            hidden, targets, head, temperature, chunk_tokens, autocast_dtype
        )
    else:
        logits = model(**inputs, use_cache=False).logits
        logprobs, entropy = _LogprobEntropy.apply(
            _at_response(logits, columns, mask), targets, temperature
        )
    zeros = torch.zeros(mask.shape, device=device)
    return TokenStats(zeros.masked_scatter(mask, logprobs), zeros.masked_scatter(mask, entropy))


def response_logprobs(
    model: Any, batch: TrainBatch, *, temperature: float, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
) -> torch.Tensor:
    """log π(y_t | x, y_<t) for every response token, at the sampling temperature: [B, R]."""
    return response_stats(model, batch, temperature=temperature, chunk_tokens=chunk_tokens).logprobs


def response_values(critic: ValueModel, batch: TrainBatch) -> torch.Tensor:
    """V of the state before each response token: [B, R]."""
    device = next(critic.parameters()).device
    rows = compact(batch)
    values = critic(
        rows.input_ids.to(device), rows.attention_mask.to(device), rows.position_ids.to(device)
    )
    mask = batch.response_mask.to(device)
    return values.gather(1, rows.response_columns.to(device)) * mask


@torch.no_grad()
def batched_no_grad(
    fn: Any, model: Any, batch: TrainBatch, micro: MicroBatching | int, **kwargs: Any
) -> torch.Tensor:
    """Apply ``fn(model, sub_batch)`` over micro-batches without gradients; rows in batch order.

    ``micro``: a :class:`MicroBatching` plan, or a number of rows per micro-batch."""
    plan = micro if isinstance(micro, MicroBatching) else MicroBatching(rows=micro)
    out: torch.Tensor | None = None
    for index in plan.split(batch):
        part = fn(model, batch.select(index), **kwargs).cpu()
        if out is None:
            out = part.new_zeros((len(batch), *part.shape[1:]))
        out[index] = part
    assert out is not None  # split() yields at least one micro-batch
    return out
