"""The SFT of the embedded model (``remix build-tiny``): the response-only training data, the
warmup + cosine learning rate, the training loop and the greedy / sampled evaluation of
arithmetic answers. Deterministic given the seed: no dropout, a fixed batch order."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from remix_rft.apps.tiny_architecture import MAX_POSITIONS
from remix_rft.data.arithmetic import ArithmeticTask
from remix_rft.data.prompts import format_prompt
from remix_rft.data.tasks import Problem
from remix_rft.engines.generation import generate_texts

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
EVAL_MAX_NEW_TOKENS = 64  # the longest worked solution is 47 characters + <|end|>
EVAL_BATCH_SIZE = 100


# -------------------------------------------------------------------------------- SFT data


def encode_sft(
    tokenizer: Any, examples: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 outside responses).

    The prompt is the chat-templated user turn with the generation prompt; the response is
    the worked solution followed by ``<|end|>``. Only response tokens carry a label.
    """
    prompts = [format_prompt(tokenizer, p) for p, _ in examples]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer([s for _, s in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    rows = [(p, [*r, eos]) for p, r in zip(prompt_ids, response_ids, strict=True)]
    length = max(len(p) + len(r) for p, r in rows)
    if length > MAX_POSITIONS:
        raise ValueError(f"an SFT example has {length} tokens, more than {MAX_POSITIONS}")
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r)
        attention_mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(r)
    return input_ids, attention_mask, labels


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------ evaluation


def greedy_responses(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    temperature: float = 0.0,
    seed: int | None = None,
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
    batch_size: int = EVAL_BATCH_SIZE,
) -> list[str]:
    was_training = model.training
    model.eval()
    prompts = [format_prompt(tokenizer, p.prompt) for p in problems]
    texts = generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
        seed=seed,
    )
    model.train(was_training)
    return texts


def evaluate(
    model: Any,
    tokenizer: Any,
    task: ArithmeticTask,
    problems: Sequence[Problem],
    *,
    temperature: float = 0.0,
    seed: int | None = None,
) -> float:
    """pass@1 (greedy by default) of ``model`` on ``problems``."""
    texts = greedy_responses(model, tokenizer, problems, temperature=temperature, seed=seed)
    rewards = [task.reward(t, p) for t, p in zip(texts, problems, strict=True)]
    return sum(rewards) / max(1, len(rewards))


def response_stats(
    task: ArithmeticTask, texts: Sequence[str], problems: Sequence[Problem]
) -> dict[str, float]:
    """Accuracy, the share of answers that do every step of the chain, and the accuracy
    of those complete answers (what RL can reach by dropping the shortcut)."""
    rewards = [task.reward(t, p) for t, p in zip(texts, problems, strict=True)]
    complete = [t.count("=") >= task.spec.num_steps() for t in texts]
    n_complete = sum(complete)
    return {
        "accuracy": sum(rewards) / max(1, len(rewards)),
        "complete_rate": n_complete / max(1, len(texts)),
        "accuracy_complete": sum(r for r, c in zip(rewards, complete, strict=True) if c)
        / max(1, n_complete),
    }


def greedy_stats(
    model: Any, tokenizer: Any, task: ArithmeticTask, problems: Sequence[Problem]
) -> dict[str, float]:
    """:func:`response_stats` of the greedy responses to ``problems``."""
    return response_stats(task, greedy_responses(model, tokenizer, problems), problems)


@dataclass(frozen=True)
class SFTSettings:
    """The optimisation of the SFT run (``build_tiny``'s keyword arguments)."""

    steps: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    batch_size: int
    eval_every: int

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("steps, batch_size and eval_every must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def record(self) -> dict[str, Any]:
        """For ``build_info.json``: everything but ``steps`` (recorded on its own)."""
        kept = {k: v for k, v in dataclasses.asdict(self).items() if k != "steps"}
        return {**kept, "eval_max_new_tokens": EVAL_MAX_NEW_TOKENS}


def train_sft(
    model: Any,
    tokenizer: Any,
    task: ArithmeticTask,
    examples: Any,
    eval_set: Sequence[Problem],
    hp: SFTSettings,
    seed: int,
    progress: Callable[[int, dict[str, float]], None] | None,
) -> tuple[float, list[dict[str, float]]]:
    """AdamW over shuffled epochs of the SFT examples; (final loss, periodic evaluations)."""
    input_ids, attention_mask, labels = encode_sft(tokenizer, examples)
    n_examples = input_ids.shape[0]
    data_gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = n_examples // hp.batch_size
    order = torch.randperm(n_examples, generator=data_gen)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hp.lr, betas=(0.9, 0.95), weight_decay=hp.weight_decay
    )
    # Decay to a small LR: greedy accuracy at a constant LR swings by +-0.1 between steps.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s, warmup_steps=hp.warmup_steps, total_steps=hp.steps, min_ratio=hp.min_lr_ratio
        ),
    )
    history: list[dict[str, float]] = []
    loss_value = float("nan")
    model.train()
    for step in range(1, hp.steps + 1):
        k = (step - 1) % steps_per_epoch
        if k == 0 and step > 1:
            order = torch.randperm(n_examples, generator=data_gen)
        idx = order[k * hp.batch_size : (k + 1) * hp.batch_size]
        mask = attention_mask[idx]
        width = int(mask.sum(1).max())
        out = model(input_ids=input_ids[idx, :width], attention_mask=mask[:, :width],
                    labels=labels[idx, :width])  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = float(out.loss.detach())
        record: dict[str, float] = {"step": step, "loss": loss_value}
        if step % hp.eval_every == 0 or step == hp.steps:
            record["lr"] = optimizer.param_groups[0]["lr"]
            record.update(greedy_stats(model, tokenizer, task, eval_set))
            history.append(record)
            log.info("step %d loss %.4f accuracy %.3f", step, loss_value, record["accuracy"])
        if progress is not None:
            progress(step, record)
    return loss_value, history
