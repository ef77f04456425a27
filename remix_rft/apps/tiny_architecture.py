"""The embedded model's architecture: a character-level tokenizer with a chat template and a
small ``Qwen2ForCausalLM`` over it (``remix build-tiny`` trains it; tests build random ones).

Every printable ASCII character and ``\\n`` is one token, plus six special tokens
(``<|pad|> <|system|> <|user|> <|assistant|> <|end|> <|unk|>``). It is a byte-level BPE
without merges -- the pipeline transformers rebuilds for any ``qwen2`` checkpoint -- so the
remaining bytes are tokens too and any text round-trips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
