"""The embedded tiny model shipped in ``remix_rft/assets/tiny`` (built by ``remix build-tiny``)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from remix_rft.apps import build_tiny, tiny_architecture
from remix_rft.data.arithmetic import ArithmeticTask
from remix_rft.data.batch import collate
from remix_rft.data.buffer import Sample
from remix_rft.data.prompts import DEFAULT_MATH_INSTRUCTION, format_prompt
from remix_rft.engines.generation import generate_texts, sample
from remix_rft.engines.models import EMBEDDED_MODEL_DIR
from remix_rft.engines.policy import response_logprobs

MAX_WEIGHT_BYTES = 20 * 1024 * 1024
SPECIALS = ["<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|unk|>"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_DIR).eval()


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask()


def test_files_load_as_a_small_qwen2(model, tokenizer):
    weights = EMBEDDED_MODEL_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= MAX_WEIGHT_BYTES
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.model_type == "qwen2"
    assert model.config.tie_word_embeddings
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 4 <= MAX_WEIGHT_BYTES
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    info = json.loads((EMBEDDED_MODEL_DIR / "build_info.json").read_text())
    assert info["parameters"] == n_params
    assert 0.15 <= info["accuracy_500"] <= 0.50


def test_special_tokens(tokenizer):
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.eos_token == "<|end|>"
    assert tokenizer.unk_token == "<|unk|>"
    assert tokenizer.bos_token is None
    for token in SPECIALS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [token]
    assert len({tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}) == len(SPECIALS)


def test_chat_template(tokenizer):
    assert format_prompt(tokenizer, "(3*4+5*6)*2=?") == "<|user|>(3*4+5*6)*2=?<|end|><|assistant|>"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1*2=?"},
        {"role": "assistant", "content": "1*2=2 \\boxed{2}"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert (
        text == "<|system|>Be brief.<|end|><|user|>1*2=?<|end|><|assistant|>1*2=2 \\boxed{2}<|end|>"
    )


def test_tokenizer_is_character_level_and_round_trips(tokenizer):
    chars = "\n" + "".join(chr(c) for c in range(32, 127))
    for add_special in (True, False):
        ids = tokenizer(chars, add_special_tokens=add_special)["input_ids"]
        assert len(ids) == len(chars)  # one token per character, nothing inserted
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == chars
    assert len(set(tokenizer(chars)["input_ids"])) == len(chars)
    response = "3*4=12 5*6=30 12+30=42 42*2=84 \\boxed{84}"
    ids = tokenizer(response + "<|end|>")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == response
    prompt = format_prompt(tokenizer, "(3*4+5*6)*2=?")
    assert tokenizer.decode(tokenizer(prompt)["input_ids"]) == prompt
    # Other characters fall back to their UTF-8 bytes: nothing is lost.
    text = "héllo\t∑ 😀"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_loaded_tokenizer_encodes_like_the_builder(tokenizer):
    """transformers rebuilds a qwen2 checkpoint's tokenizer pipeline; it must match ours."""
    built = tiny_architecture.build_tokenizer()
    assert built.get_vocab() == tokenizer.get_vocab()
    assert len(tokenizer) == 262
    prompt = format_prompt(tokenizer, "(8*7+5*8)*6=?", DEFAULT_MATH_INSTRUCTION)
    for text in [prompt, "  a  b\n\n c's they'll ", "x<|end|><|pad|>y", "héllo\t∑ 😀"]:
        assert built(text)["input_ids"] == tokenizer(text)["input_ids"], text


def test_greedy_accuracy_is_partial(model, tokenizer, task):
    problems = task.eval_problems()[:100]
    prompts = [format_prompt(tokenizer, p.prompt) for p in problems]
    texts = generate_texts(model, tokenizer, prompts, max_new_tokens=64, batch_size=100)
    accuracy = sum(task.reward(t, p) for t, p in zip(texts, problems, strict=True)) / len(problems)
    assert 0.1 <= accuracy <= 0.55, accuracy
    # Partially competent: the format is learned even where the arithmetic is wrong.
    assert sum("\\boxed{" in t for t in texts) >= 90


def _left_padded_logprobs(model, prompt_ids, response_ids, pad_id, temperature=1.0):
    """Per-token log-probs of each response under one left-padded full forward pass, of the
    distribution sampled at ``temperature``."""
    seqs = [torch.cat([p, r]) for p, r in zip(prompt_ids, response_ids, strict=True)]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, width - len(s) :] = s
        attention_mask[i, width - len(s) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).logits.float()
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    out = []
    for i, r in enumerate(response_ids):
        n = len(r)
        # The token at position t is predicted by the logits at position t - 1.
        predicted = logprobs[i, width - n - 1 : width - 1]
        out.append(predicted.gather(-1, r.unsqueeze(-1)).squeeze(-1))
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.6])  # 0.6: the R1 recipes' sampling temperature
def test_sampled_logprobs_match_a_full_forward_pass(model, tokenizer, task, temperature):
    problems = [p.prompt for p in task.eval_problems()[:3]]
    prompts = [
        format_prompt(tokenizer, problems[0]),
        format_prompt(tokenizer, "7*8=?"),
        format_prompt(tokenizer, problems[1], DEFAULT_MATH_INSTRUCTION),
        tokenizer.apply_chat_template(
            [{"role": "system", "content": "Solve it."}, {"role": "user", "content": problems[2]}],
            tokenize=False,
            add_generation_prompt=True,
        ),
        format_prompt(tokenizer, "1+1=?"),
        format_prompt(tokenizer, problems[2]),
    ]
    prompts = prompts * 2  # two samples per prompt
    assert len({len(p) for p in prompts}) > 3  # really different lengths: padding is exercised
    torch.manual_seed(0)
    gen = sample(model, tokenizer, prompts, max_new_tokens=48, temperature=temperature)
    assert len(gen) == len(prompts)
    for p, text in zip(gen.prompt_ids, prompts, strict=True):
        assert tokenizer.decode(p) == text  # padding stripped
    expected = _left_padded_logprobs(
        model, gen.prompt_ids, gen.response_ids, tokenizer.pad_token_id, temperature
    )
    # ... and the trainer's own forward pass (collated batch, temperature-scaled log-softmax)
    samples = [
        Sample(p, r, lp, 0.0, 0.0, 1, 0, True)
        for p, r, lp in zip(gen.prompt_ids, gen.response_ids, gen.logprobs, strict=True)
    ]
    batch = collate(samples, tokenizer.pad_token_id)
    with torch.no_grad():
        trainer = response_logprobs(model, batch, temperature=temperature)
    for i, (recorded, full) in enumerate(zip(gen.logprobs, expected, strict=True)):
        assert recorded.shape == gen.response_ids[i].shape
        assert torch.isfinite(recorded).all()
        torch.testing.assert_close(recorded, full, atol=1e-4, rtol=0)
        torch.testing.assert_close(recorded, trainer[i, : len(recorded)], atol=1e-4, rtol=0)


def test_build_tiny_writes_verified_files_and_refuses_out_of_band(tmp_path):
    """The build machinery end to end on a few steps (the real build takes minutes)."""
    from remix_rft.data.arithmetic import ArithmeticSpec

    spec = ArithmeticSpec(n_train=256, n_eval=8)
    out = tmp_path / "tiny"
    info = build_tiny.build_tiny(
        out, steps=3, batch_size=16, eval_every=2, eval_problems=4, spec=spec,
        accept_band=(0.0, 1.0), shortcut_rates=(0.0, 1.0),
    )  # fmt: skip
    assert info["steps"] == 3 and [h["step"] for h in info["history"]] == [2, 3]
    assert info["shortcut_rates"] == [0.0, 1.0]
    saved = json.loads((out / "build_info.json").read_text())
    assert saved["accuracy_500"] == info["accuracy_500"]
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"
    with pytest.raises(RuntimeError, match="outside"):
        build_tiny.build_tiny(
            tmp_path / "never", steps=1, batch_size=16, eval_problems=4, spec=spec,
            accept_band=(0.9, 1.0),
        )  # fmt: skip
    assert not (tmp_path / "never" / "model.safetensors").exists()


def test_hard_base_ships_as_embedded_hard_with_its_recipe(task):
    """The harder setting's base: same files and tokenizer as the default one, built by
    ``remix build-tiny --preset hard``, and it rarely finishes the work when greedy."""
    from remix_rft.engines.models import EMBEDDED_HARD_MODEL_DIR, resolve_model_path

    assert resolve_model_path("embedded-hard") == str(EMBEDDED_HARD_MODEL_DIR)
    info = json.loads((EMBEDDED_HARD_MODEL_DIR / "build_info.json").read_text())
    preset = build_tiny.PRESETS["hard"]
    assert info["recipe"]["preset"] == "hard"
    assert tuple(info["shortcut_rates"]) == preset.shortcut_rates
    low, high = preset.accept_band
    assert low <= info["accuracy_500"] <= high
    assert info["sampled_accuracy_200"] < 0.3  # the sparse signal the setting is for
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_HARD_MODEL_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_HARD_MODEL_DIR)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR).get_vocab()
    problems = task.eval_problems()[:50]
    texts = generate_texts(model, tokenizer, [format_prompt(tokenizer, p.prompt) for p in problems],
                           max_new_tokens=64)  # fmt: skip
    accuracy = sum(task.reward(t, p) for t, p in zip(texts, problems, strict=True)) / len(problems)
    assert accuracy == pytest.approx(info["accuracy_500"], abs=0.15)


def test_unknown_embedded_alias_and_missing_base_are_named(tmp_path, monkeypatch):
    from remix_rft.engines import models

    monkeypatch.setitem(models.EMBEDDED_MODELS, "embedded-hard", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="embedded-hard.*build-tiny"):
        models.resolve_model_path("embedded-hard")
