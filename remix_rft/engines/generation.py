"""The Hugging Face rollout engine: ``generate`` on the training module itself.

It samples with the trainer's own weights (no copy, nothing to push after an update);
under FSDP2 it gathers the full parameters for the duration of a batch, because ranks
stop decoding at different lengths and ``generate`` must run no collectives. Prompts
are left-padded (right padding changes outputs of batched generation) and
everything after the first EOS is dropped. The log-probability of each sampled
token is recorded from the raw logits divided by the temperature, which is what a
full forward pass of the same weights computes (tests pin that invariant).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from remix_rft.engines.distributed import unsharded, without_autocast
from remix_rft.engines.rollout import (
    EngineOptions,
    Generation,
    RolloutEngine,
    SamplingSettings,
    register_engine,
)


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
    if not ids:
        raise ValueError("the tokenizer defines no EOS token; generation could never stop")
    return ids


def pad_token_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def _cut_at_eos(tokens: torch.Tensor, eos_ids: set[int]) -> tuple[int, bool]:
    """Length up to and including the first EOS, and whether there was one."""
    for i, t in enumerate(tokens.tolist()):
        if t in eos_ids:
            return i + 1, True
    return int(tokens.numel()), False


@contextmanager
def _left_padding(tokenizer: Any) -> Iterator[None]:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


STATIC_PAD_MULTIPLE = 16


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    backend: str = "hf",
    record_logprobs: bool = True,
) -> Generation:
    """Generate one response per prompt string (repeat prompts for groups).

    ``record_logprobs`` keeps every step's logits to record sampled-token log-probs;
    with a large vocabulary and long responses that costs B·T·V floats, so callers
    that recompute log-probs with a forward pass anyway can turn it off (NaN then).

    ``backend="hf-static"``: a static KV cache, which ``generate`` compiles with
    ``torch.compile`` on GPUs; prompts are padded to a multiple of 16 tokens so
    that few distinct shapes are compiled.
    """
    start = time.perf_counter()
    static = backend == "hf-static"
    with _left_padding(tokenizer):
        enc = tokenizer(
            list(prompts), return_tensors="pt", padding=True, add_special_tokens=False,
            pad_to_multiple_of=STATIC_PAD_MULTIPLE if static else None,
        )  # fmt: skip
    device = next(model.parameters()).device
    input_ids = enc["input_ids"].to(device)
    attention_mask = enc["attention_mask"].to(device)
    greedy = temperature <= 0.0
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
        do_sample=not greedy, temperature=None if greedy else temperature,
        top_p=None if greedy else top_p, top_k=None, pad_token_id=pad_token_id(tokenizer),
        eos_token_id=sorted(eos_token_ids(model, tokenizer)), return_dict_in_generate=True,
        output_logits=record_logprobs,
        **({"cache_implementation": "static"} if static else {}),
    )  # fmt: skip
    new_tokens = out.sequences[:, input_ids.shape[1] :]
    token_lp = _sampled_logprobs(out.logits, new_tokens, 1.0 if greedy else temperature)
    return _split_generation(
        tokenizer, input_ids, attention_mask, new_tokens, token_lp,
        eos_token_ids(model, tokenizer), seconds=time.perf_counter() - start,
    )  # fmt: skip


def _sampled_logprobs(
    logits: tuple[torch.Tensor, ...] | None, new_tokens: torch.Tensor, temperature: float
) -> torch.Tensor:
    """log-probs of the sampled tokens under the sampling distribution (logits / T); NaN
    where ``generate`` kept no logits (``record_logprobs=False``)."""
    if not logits:
        return torch.full(new_tokens.shape, float("nan"), device=new_tokens.device)
    token_lp = torch.log_softmax(torch.stack(logits, dim=1).float() / temperature, dim=-1)
    return token_lp.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)


def _split_generation(
    tokenizer: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    new_tokens: torch.Tensor,
    token_lp: torch.Tensor,
    eos_ids: set[int],
    *,
    seconds: float,
) -> Generation:
    prompts, responses, logprobs, finished = [], [], [], []
    for i in range(new_tokens.shape[0]):
        prompts.append(input_ids[i][attention_mask[i].bool()].cpu())
        length, done = _cut_at_eos(new_tokens[i], eos_ids)
        responses.append(new_tokens[i, :length].cpu())
        logprobs.append(token_lp[i, :length].cpu())
        finished.append(done)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Generation(prompts, responses, logprobs, finished, texts, seconds=seconds).record_speed()


def concat(parts: Sequence[Generation]) -> Generation:
    """One Generation of several, in order (times add up)."""
    out = Generation([], [], [], [], [], seconds=sum(g.seconds for g in parts))
    for g in parts:
        out.prompt_ids += g.prompt_ids
        out.response_ids += g.response_ids
        out.logprobs += g.logprobs
        out.finished += g.finished
        out.texts += g.texts
    return out.record_speed()


@register_engine("hf")
class HFEngine(RolloutEngine):
    """``model.generate`` on the policy module the trainer optimises.

    ``hf-static``: a static KV cache, which ``generate`` compiles with ``torch.compile``
    on GPUs (prompts padded to a multiple of 16 tokens to bound the compiled shapes).
    """

    def __init__(
        self,
        *,
        policy: Any,
        tokenizer: Any,
        options: EngineOptions | None = None,
        env: Any = None,
        static_cache: bool = False,
    ) -> None:
        self.model, self.tokenizer = policy, tokenizer
        self.batch_size = options.batch_size if options else 0
        self.backend = "hf-static" if static_cache else "hf"
        self.name = self.backend

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> Generation:
        repeated = [p for p in prompts for _ in range(settings.n)]
        size = self.batch_size or max(len(repeated), 1)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(
                devices=_rng_devices(self.model), enabled=settings.seed is not None
            ):
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
                with unsharded(self.model), without_autocast(self.model):
                    parts = [
                        sample(
                            self.model,
                            self.tokenizer,
                            repeated[i : i + size],
                            max_new_tokens=settings.max_new_tokens,
                            temperature=settings.temperature,
                            top_p=settings.top_p,
                            backend=self.backend,
                            record_logprobs=settings.logprobs,
                        )  # fmt: skip
                        for i in range(0, len(repeated), size)
                    ]
        finally:
            self.model.train(was_training)
        return parts[0] if len(parts) == 1 else concat(parts)


@register_engine("hf-static")
def _static_engine(**kwargs: Any) -> HFEngine:
    return HFEngine(static_cache=True, **kwargs)


def _rng_devices(model: Any) -> list[Any]:
    device = next(model.parameters()).device
    return [device] if device.type == "cuda" else []


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int | None = None,
    backend: str = "hf",
) -> list[str]:
    """Decoded responses (cut at EOS) for chat-templated prompt strings, in order."""
    engine = HFEngine(
        policy=model,
        tokenizer=tokenizer,
        options=EngineOptions(model_path="", batch_size=batch_size),
        static_cache=backend == "hf-static",
    )
    settings = SamplingSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
        logprobs=False,
    )  # fmt: skip
    return engine.generate(prompts, settings).texts
