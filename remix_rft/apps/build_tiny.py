"""`remix build-tiny`: build the embedded tiny base model shipped in ``remix_rft/assets/tiny``.

The embedded model is a ~0.8M-parameter ``Qwen2ForCausalLM`` over a character-level
tokenizer: every printable ASCII character and ``\\n`` is one token, plus six special
tokens (``<|pad|> <|system|> <|user|> <|assistant|> <|end|> <|unk|>``). It is a byte-level
BPE without merges -- the pipeline transformers rebuilds for any ``qwen2`` checkpoint -- so
the remaining bytes are tokens too and any text round-trips.

The model is trained by supervised finetuning on the worked solutions of the embedded
arithmetic task's train split (loss on the response tokens only, the final ``<|end|>``
included), with AdamW and a warmup + cosine-decay learning rate, **to convergence**.
The imperfection that leaves room for RL is in the data, not in an early stop: some
solutions are sloppy -- they box the sum inside the parentheses and skip the final
multiplication -- 15% of them when the final factor is 1-3 and 75% when it is 4-9
(``--shortcut-rates``). The base model therefore knows every step but, greedily, takes
the shortcut whenever the final factor is large, and the shortcut is right only when
that factor is 1. RL has to learn that finishing the work pays. (An early-stopped base -- still bad at the arithmetic
itself -- gave RL far less to work with: 0.36 -> 0.51 in 250 GRPO iterations.)

The saved files are reloaded from disk and evaluated again, and ``build_info.json``
records the seed, steps, accuracies (greedy on 200 and 500 held-out problems, sampled
at temperature 1, the share of complete chains), time and size. Training is
deterministic given the seed (no dropout, a fixed batch order).

Library functions log; only :func:`run` (the CLI entry point) prints and shows progress.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remix_rft.apps.args import add_seed, fraction, positive_float, positive_int
from remix_rft.data.arithmetic import ArithmeticSpec, ArithmeticTask
from remix_rft.data.prompts import format_prompt
from remix_rft.data.tasks import Problem
from remix_rft.engines.generation import generate_texts
from remix_rft.engines.models import EMBEDDED_HARD_MODEL_DIR, EMBEDDED_MODEL_DIR

log = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_TOKEN = "<|end|>"  # EOS: ends every turn
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN, UNK_TOKEN)
CHARACTERS = ("\n", *(chr(c) for c in range(32, 127)))  # one token each: newline + printable ASCII

# The split pattern of Qwen2's tokenizer. transformers 5 loads any ``qwen2`` checkpoint's
# tokenizer as ``Qwen2Tokenizer``, which rebuilds this exact pipeline (NFC, this split,
# byte-level pre-tokenizer and decoder, BPE) around the saved vocabulary and merges; the
# tokenizer is built the same way so that what is saved is what loads. With no merges,
# BPE leaves every byte a token of its own: a character tokenizer for ASCII.
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def byte_symbols() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


def tokenizer_vocab() -> dict[str, int]:
    """Special tokens, then newline and printable ASCII, then every other byte (ids 102-261).

    The other bytes (control characters, the UTF-8 bytes of non-ASCII text) keep any text
    encodable and decodable without loss; the model never saw them in training.
    """
    symbols = byte_symbols()
    ordered = [ord(c) for c in CHARACTERS]
    ordered += [b for b in range(256) if b not in set(ordered)]
    tokens = [*SPECIAL_TOKENS, *(symbols[b] for b in ordered)]
    return {token: i for i, token in enumerate(tokens)}


# <|role|>content<|end|> per message; the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unsupported role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)

MAX_POSITIONS = 256
IGNORE_INDEX = -100

# Defaults of the build (the shipped model was built with these; see build_info.json).
DEFAULT_STEPS = 1500  # to convergence: the complete chain is learned (~0.97 greedy)
# Chance of a sloppy SFT solution for a small / large final factor (see sft_examples).
DEFAULT_SHORTCUT_RATES = (0.15, 0.75)
ACCEPT_BAND = (0.15, 0.50)  # the promise about the shipped base (whole held-out split)
HARD_SHORTCUT_RATES = (0.5, 0.98)
HARD_ACCEPT_BAND = (0.05, 0.35)
EVAL_PROBLEMS = 200


@dataclass(frozen=True)
class BuildPreset:
    """A shipped base: where it goes, its SFT mixture and the band its accuracy must fall in."""

    out_dir: Path
    shortcut_rates: tuple[float, float]
    accept_band: tuple[float, float]
    about: str


PRESETS = {
    "default": BuildPreset(
        EMBEDDED_MODEL_DIR,
        DEFAULT_SHORTCUT_RATES,
        ACCEPT_BAND,
        "model: embedded -- RL only has to break the habit of skipping the last step",
    ),  # fmt: skip
    # The harder setting: with a large final factor the base finishes the work only
    # HARD_RATES[1]-rarely, so at temperature 1 most prompt groups of 8 are all wrong
    # (no group-relative signal) and on-policy GRPO needs 100+ updates to plateau.
    "hard": BuildPreset(
        EMBEDDED_HARD_MODEL_DIR,
        HARD_SHORTCUT_RATES,
        HARD_ACCEPT_BAND,
        "model: embedded-hard -- sparse reward: the base almost never finishes the work "
        "when the final factor is large",
    ),  # fmt: skip
}
EVAL_MAX_NEW_TOKENS = 64  # the longest worked solution is 47 characters + <|end|>
EVAL_BATCH_SIZE = 100


# ------------------------------------------------------------------------------- tokenizer


def build_tokenizer() -> Any:
    """The character-level tokenizer with the chat template, as a Hugging Face fast tokenizer."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab=tokenizer_vocab(), merges=[], fuse_unk=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    # No post-processor: encoding never inserts BOS/EOS, whatever add_special_tokens says.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=END_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: Any, out_dir: Path) -> None:
    tokenizer.save_pretrained(out_dir)
    # transformers 5 loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer whatever this
    # says; naming it keeps older versions (Qwen2TokenizerFast over tokenizer.json) the same.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------- model


def build_model(
    tokenizer: Any,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 384,
) -> Any:
    """A freshly initialised small ``Qwen2ForCausalLM`` over the tokenizer's vocabulary."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def num_parameters(model: Any) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


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


def _responses(
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
    texts = _responses(model, tokenizer, problems, temperature=temperature, seed=seed)
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
    return response_stats(task, _responses(model, tokenizer, problems), problems)


# ----------------------------------------------------------------------------------- build


def _check_window(name: str, window: Sequence[float]) -> tuple[float, float]:
    low, high = (float(x) for x in window)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= low <= high <= 1, got ({low}, {high})")
    return low, high


def build_tiny(
    out_dir: str | Path = EMBEDDED_MODEL_DIR,
    *,
    seed: int = 0,
    shortcut_rates: Sequence[float] = DEFAULT_SHORTCUT_RATES,
    accept_band: Sequence[float] = ACCEPT_BAND,
    steps: int = DEFAULT_STEPS,
    lr: float = 3e-3,
    warmup_steps: int = 50,
    min_lr_ratio: float = 0.05,
    weight_decay: float = 0.01,
    batch_size: int = 64,
    eval_every: int = 250,
    eval_problems: int = EVAL_PROBLEMS,
    spec: ArithmeticSpec | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the tiny base model to convergence on the SFT mixture, save and verify it.

    Returns the build metrics (also written to ``out_dir/build_info.json``), among them
    ``accuracy_200`` and ``accuracy_500`` (greedy pass@1 of the reloaded files on the
    first 200 and on all held-out problems), ``sampled_accuracy_200`` (temperature 1)
    and ``complete_rate_200`` (share of greedy answers that finish the work). Raises
    ``RuntimeError`` -- and leaves ``out_dir`` untouched -- if the greedy accuracy on the
    whole held-out split is outside ``accept_band``. ``recipe`` (how it was asked for: the
    preset, the command line) is recorded in ``build_info.json`` as it is.
    """
    accept_low, accept_high = _check_window("accept_band", accept_band)
    rates = (float(shortcut_rates[0]), float(shortcut_rates[1]))
    hp = SFTSettings(steps, lr, warmup_steps, min_lr_ratio, weight_decay, batch_size, eval_every)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    torch.manual_seed(seed)

    task = ArithmeticTask(spec)
    held_out = task.eval_problems()
    eval_set = held_out[:eval_problems]
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    n_params = num_parameters(model)
    log.info("tiny model: %d parameters, vocabulary %d", n_params, len(tokenizer))
    examples = task.sft_examples(rates, seed=seed)
    loss_value, history = _train_sft(model, tokenizer, task, examples, eval_set, hp, seed,
                                     progress)  # fmt: skip
    info: dict[str, Any] = {
        "seed": seed, "steps": steps, "parameters": n_params, "final_loss": loss_value,
        "train_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "accept_band": [accept_low, accept_high], "shortcut_rates": list(rates),
        "hyperparameters": {
            "lr": lr, "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio,
            "weight_decay": weight_decay, "batch_size": batch_size, "eval_every": eval_every,
            "eval_max_new_tokens": EVAL_MAX_NEW_TOKENS,
        },
        "task": {"name": task.name, **vars(task.spec)},
        "recipe": dict(recipe or {}),
        "history": history,
    }  # fmt: skip
    info = _save_verified(model, tokenizer, task, eval_set, out_dir, info, started)
    log.info(
        "built %s: %d steps, accuracy %.3f (%d) / %.3f (%d), sampled %.3f, %.0fs",
        out_dir, steps, info["accuracy_200"], len(eval_set), info["accuracy_500"],
        len(held_out), info["sampled_accuracy_200"], info["total_seconds"],
    )  # fmt: skip
    return info


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


def _train_sft(
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


def _save_verified(
    model: Any,
    tokenizer: Any,
    task: ArithmeticTask,
    eval_set: Sequence[Problem],
    out_dir: Path,
    info: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """Save next to ``out_dir``, measure the files as reloaded from disk, and move them in
    place only if the greedy accuracy on the whole held-out split is in the accept band."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    held_out = task.eval_problems()
    accept_low, accept_high = info["accept_band"]
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-tiny-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        save_tokenizer(tokenizer, staging)
        reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32)
        reloaded_tok = AutoTokenizer.from_pretrained(staging)
        # One greedy pass over the held-out split; the first problems are its head.
        texts = _responses(reloaded, reloaded_tok, held_out)
        first = response_stats(task, texts[: len(eval_set)], eval_set)
        accuracy_all = response_stats(task, texts, held_out)["accuracy"]
        sampled = evaluate(reloaded, reloaded_tok, task, eval_set, temperature=1.0,
                           seed=info["seed"])  # fmt: skip
        # Keys with "_200"/"_500" name the nominal sizes; the counts are recorded beside them.
        info = {
            **info,
            "weights_bytes": (staging / "model.safetensors").stat().st_size,
            "accuracy_200": first["accuracy"], "complete_rate_200": first["complete_rate"],
            "accuracy_complete_200": first["accuracy_complete"], "accuracy_500": accuracy_all,
            "eval_problems": len(eval_set), "final_eval_problems": len(held_out),
            "sampled_accuracy_200": sampled,
            "total_seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        (staging / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
        if not accept_low <= accuracy_all <= accept_high:
            raise RuntimeError(
                f"the built model's greedy accuracy on {len(held_out)} held-out problems is "
                f"{accuracy_all:.3f}, outside [{accept_low}, {accept_high}]; "
                f"nothing was written to {out_dir} (try other --shortcut-rates or another --seed)"
            )
        for path in sorted(staging.iterdir()):
            path.chmod(0o644)  # package data: readable by everyone
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


# ------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    """Add the ``build-tiny`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "build-tiny",
        help="rebuild the embedded tiny base model (SFT on arithmetic, some solutions sloppy)",
        description=(
            "Train the embedded ~0.8M-parameter Qwen2 model to convergence on the arithmetic "
            "task's worked solutions, a fraction of which stop before the final "
            "multiplication; then verify the saved files on the whole held-out split "
            "and write build_info.json."
        ),
    )
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="default",
        help="which shipped base: "
        + "; ".join(f"{name} ({p.about})" for name, p in PRESETS.items())
        + ". It sets the defaults of --out, --shortcut-rates and --accept",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output directory (default: the preset's directory in the package)",
    )
    add_seed(parser)
    parser.add_argument(
        "--shortcut-rates",
        type=fraction,
        nargs=2,
        default=None,
        metavar=("SMALL", "LARGE"),
        help="chance that an SFT solution skips the final multiplication when the final "
        "factor is small (1-3) / large (default: the preset's, "
        + ", ".join(f"{n} {list(p.shortcut_rates)}" for n, p in PRESETS.items())
        + ")",
    )
    parser.add_argument(
        "--accept",
        type=fraction,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="required greedy accuracy on the whole held-out split (default: the preset's, "
        + ", ".join(f"{n} {list(p.accept_band)}" for n, p in PRESETS.items())
        + ")",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=DEFAULT_STEPS,
        help="SFT steps; the LR decays to 5%% over them (default: %(default)s)",
    )
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=50, help="linear LR warmup steps")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="SFT batch size")
    parser.add_argument(
        "--eval-every", type=positive_int, default=250, help="steps between evaluations"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's own choice)",
    )
    parser.add_argument(
        "--eval-problems",
        type=positive_int,
        default=EVAL_PROBLEMS,
        help="held-out problems of the periodic evaluations (default: %(default)s)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``remix build-tiny``; returns the exit code."""
    from tqdm import tqdm

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    out_dir = args.out or preset.out_dir
    bar = tqdm(total=args.steps, desc="build-tiny", unit="step", dynamic_ncols=True)
    postfix: dict[str, str] = {}

    def progress(step: int, metrics: dict[str, float]) -> None:
        bar.n = step
        postfix["loss"] = f"{metrics['loss']:.3f}"
        if "accuracy" in metrics:
            postfix["acc"] = f"{metrics['accuracy']:.3f}"
            postfix["complete"] = f"{metrics['complete_rate']:.2f}"
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    try:
        info = build_tiny(
            out_dir,
            seed=args.seed,
            shortcut_rates=args.shortcut_rates or preset.shortcut_rates,
            accept_band=args.accept or preset.accept_band,
            steps=args.steps,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            batch_size=args.batch_size,
            eval_every=args.eval_every,
            eval_problems=args.eval_problems,
            progress=progress,
            recipe={
                "preset": args.preset,
                "command": "remix build-tiny " + " ".join(sys.argv[2:]),
                "torch": torch.__version__,
                "cpu_count": os.cpu_count(),
            },
        )
    except (RuntimeError, ValueError) as exc:
        bar.close()
        print(f"remix build-tiny: error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    print(
        f"built {out_dir}: {info['parameters']:,} parameters "
        f"({info['weights_bytes'] / 1e6:.1f} MB), {info['steps']} steps, "
        f"{info['total_seconds']:.0f}s\n"
        f"greedy pass@1: {info['accuracy_200']:.3f} on {info['eval_problems']} held-out, "
        f"{info['accuracy_500']:.3f} on {info['final_eval_problems']}; "
        f"sampled (T=1): {info['sampled_accuracy_200']:.3f} on {info['eval_problems']}\n"
        f"greedy answers doing every step: {info['complete_rate_200']:.2f}, "
        f"of which correct: {info['accuracy_complete_200']:.3f}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m remix_rft.apps.build_tiny``, usable before the ``remix`` CLI wires it."""
    parser = argparse.ArgumentParser(prog="remix")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["build-tiny", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
