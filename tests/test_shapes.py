"""Training at real shapes (issue #15): chunked log-probs and entropy from hidden states,
the compact per-micro-batch layout, token-budget micro-batches and entropy metrics."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from remix_rft.algorithm.policy_losses import POLICY_LOSSES
from remix_rft.data.batch import MicroBatching, collate, compact, padding_counts, row_lengths
from remix_rft.data.buffer import Sample
from remix_rft.engines.policy import _LogprobEntropy, response_stats

VOCAB = 50_000


def random_samples(n: int, seed: int, *, vocab: int = 100, max_p: int = 9, max_r: int = 30):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        p = int(torch.randint(2, max_p, (1,), generator=gen))
        r = int(torch.randint(1, max_r, (1,), generator=gen))
        rows.append(
            Sample(
                prompt_ids=torch.randint(5, vocab, (p,), generator=gen),
                response_ids=torch.randint(5, vocab, (r,), generator=gen),
                behavior_logprobs=-4.6 + 0.3 * torch.randn(r, generator=gen),
                reward=float(i % 2),
                advantage=float(torch.randn(1, generator=gen)),
                version=1 if i % 3 else 0,
                group=i // 2,
                finished=True,
            )
        )
    return rows


@pytest.fixture(scope="module")
def big_vocab_model():
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).float()


def naive_stats(model, batch, temperature: float):
    """The pre-#15 computation: full logits in the left-padded layout, plain autograd."""
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    ).logits  # fmt: skip
    p, r = batch.prompt_len, batch.response_mask.shape[1]
    logp = torch.log_softmax(logits[:, p - 1 : p - 1 + r].float() / temperature, dim=-1)
    picked = logp.gather(-1, batch.input_ids[:, p:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return picked * batch.response_mask, entropy * batch.response_mask


def values_and_grads(model, compute, weights):
    model.zero_grad(set_to_none=True)
    logprobs, entropy = compute()
    # Both outputs feed the loss, with per-token weights: both backward terms are checked.
    ((logprobs * weights).sum() + (entropy * weights.flip(0)).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logprobs.detach(), entropy.detach(), grads


def test_logprob_entropy_function_passes_gradcheck():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 13, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(0, 13, (6,), generator=gen)
    for temperature in (1.0, 0.6):
        assert torch.autograd.gradcheck(
            lambda x, t=temperature: _LogprobEntropy.apply(x, targets, t), (logits,)
        )


def test_chunked_logprobs_entropy_and_grads_equal_unchunked(big_vocab_model):
    model = big_vocab_model
    batch = collate(random_samples(5, seed=1, vocab=VOCAB), pad_id=0)
    weights = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(2))
    temperature = 0.7
    ref = values_and_grads(model, lambda: naive_stats(model, batch, temperature), weights)
    assert float(ref[1][batch.response_mask.bool()].min()) > 1.0  # a real entropy, not zeros
    for chunk in (7, 4096, 0):  # chunks that do not divide N, one chunk, full logits

        def chunked(c: int = chunk) -> tuple[torch.Tensor, torch.Tensor]:
            out = response_stats(model, batch, temperature=temperature, chunk_tokens=c)
            return out.logprobs, out.entropy

        got = values_and_grads(model, chunked, weights)
        assert (got[0] - ref[0]).abs().max() <= 1e-5, chunk
        # Entropies near log(50k) = 10.8 are fp32 sums over 50k terms: compare relatively.
        assert ((got[1] - ref[1]).abs() / ref[1].abs().clamp(min=1.0)).max() <= 1e-5, chunk
        for name, grad in ref[2].items():
            assert (got[2][name] - grad).abs().max() <= 1e-5 * max(1.0, grad.abs().max()), (
                chunk,
                name,
            )


def test_chunked_path_runs_through_lora_policy_and_adapter_free_reference(big_vocab_model):
    peft = pytest.importorskip("peft")
    from remix_rft.engines.lora import AdapterDisabled

    base = copy.deepcopy(big_vocab_model)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "lm_head"])
    policy = peft.get_peft_model(base, config)
    with torch.no_grad():  # a non-zero adapter, so that policy and reference differ
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    reference = AdapterDisabled(policy)
    batch = collate(random_samples(4, seed=5, vocab=VOCAB), pad_id=0)
    with torch.no_grad():
        chunked = response_stats(policy, batch, temperature=1.0, chunk_tokens=5).logprobs
        full = response_stats(policy, batch, temperature=1.0, chunk_tokens=0).logprobs
        ref_chunked = response_stats(reference, batch, temperature=1.0, chunk_tokens=5).logprobs
        ref_plain = naive_stats(big_vocab_model, batch, 1.0)[0]
    assert (chunked - full).abs().max() <= 1e-5
    assert (ref_chunked - ref_plain).abs().max() <= 1e-5
    assert (chunked - ref_chunked).abs().max() > 1e-3  # the adapter (lm_head's too) is applied


def test_compact_layout_keeps_each_row_contiguous_and_maps_response_columns():
    batch = collate(random_samples(4, seed=9), pad_id=0)
    rows = compact(batch)
    lengths = row_lengths(batch)
    assert rows.input_ids.shape[1] == int(lengths.max())
    for i in range(len(batch)):
        real = batch.input_ids[i][batch.attention_mask[i].bool()]
        n = int(lengths[i])
        assert torch.equal(rows.input_ids[i, :n], real)
        assert rows.attention_mask[i].sum() == n
        assert torch.equal(rows.position_ids[i, :n], torch.arange(n))
        r = int(batch.response_mask[i].sum())
        # the column predicting response token t holds the token before it
        cols = rows.response_columns[i, :r]
        assert torch.equal(rows.input_ids[i, cols + 1], batch.input_ids[i, batch.prompt_len :][:r])


def test_token_budget_groups_rows_by_length_within_budget():
    batch = collate(random_samples(23, seed=4, max_r=60), pad_id=0)
    lengths = row_lengths(batch)
    index = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))[:20]
    groups = MicroBatching(rows=0, tokens=100).split(batch, index)
    assert sorted(torch.cat(groups).tolist()) == sorted(index.tolist())  # each row once
    for g in groups:
        assert len(g) == 1 or len(g) * int(lengths[g].max()) <= 100
    real, padded = map(sum, zip(*(padding_counts(lengths[g]) for g in groups), strict=True))
    real_rows, padded_rows = map(
        sum, zip(*(padding_counts(lengths[index[i : i + 5]]) for i in range(0, 20, 5)), strict=True)
    )
    assert real == real_rows and padded < padded_rows  # sorting by length cuts padding
    capped = MicroBatching(rows=3, tokens=10_000).split(batch, index)
    assert max(len(g) for g in capped) == 3
    # Under data parallelism every rank runs as many micro-batches as the one with most.
    agreed = MicroBatching(rows=0, tokens=100, agree=lambda n: n + 3).split(batch, index)
    assert len(agreed) == len(groups) + 3
    assert sorted(torch.cat(agreed).tolist()) == sorted(index.tolist())
    plain = MicroBatching(rows=8).split(batch, index)  # tokens 0: today's consecutive rows
    assert [g.tolist() for g in plain] == [index[i : i + 8].tolist() for i in range(0, 20, 8)]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_token_budget_micro_batches_give_the_one_batch_loss_and_grads(
    model_dir, tmp_path, monkeypatch, agg
):
    from remix_rft.trainer import loop
    from remix_rft.trainer.config import load_config

    losses: list[torch.Tensor] = []
    original = POLICY_LOSSES["mix-ppg"]

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        losses.append(out.loss.detach())
        return out

    monkeypatch.setitem(POLICY_LOSSES, "mix-ppg", spy)
    from remix_rft.trainer import update

    monkeypatch.setattr(update, "free_gradients", lambda optimizer: None)  # grads are compared
    samples = random_samples(12, seed=11, max_r=40)
    results = {}
    for name, extra in (("one", []), ("budget", ["micro_batch_tokens=60"])):
        cfg = load_config(
            None,
            [
                f"model={model_dir}", f"out_dir={tmp_path / name}", "algorithm=remix-grpo",
                "window=2", "offpolicy_fraction=0.3", "minibatch_size=12", "threads=1",
                "kl_coef=0.1", "entropy_coef=0.01", f"loss_agg={agg}", "task.n_train=50",
                "task.n_eval=4", *extra,
            ],
        )  # fmt: skip
        losses.clear()
        trainer = loop.Trainer(cfg, tmp_path / name)
        batch = collate(samples, trainer.pad_id)
        pre = trainer.precompute(batch, step=1)
        stats = trainer.update(batch, pre, step=1).means()
        grads = {n: p.grad.clone() for n, p in trainer.policy.named_parameters()}
        results[name] = (torch.stack(losses).sum(), len(losses), grads, stats)
    one, budget = results["one"], results["budget"]
    assert one[1] == 1 and budget[1] > 3  # really several micro-batches
    assert budget[0] == pytest.approx(float(one[0]), rel=1e-5, abs=1e-7)
    for name, grad in one[2].items():
        assert (budget[2][name] - grad).abs().max() <= 1e-5 * max(1.0, grad.abs().max()), name
    for key in ("grad_norm", "entropy/mean", "age1/entropy", "ratio/mean", "kl/base"):
        assert budget[3][key] == pytest.approx(one[3][key], rel=1e-5), key
    assert budget[3]["padding/frac"] < one[3]["padding/frac"]


def test_entropy_is_logged_overall_and_by_data_age(tiny_config):
    from remix_rft.trainer.loop import train

    cfg = tiny_config(
        "steps=2", "algorithm=remix-grpo", "window=2", "offpolicy_fraction=0.5",
        "micro_batch_tokens=400", "eval_every=10",
    )  # fmt: skip
    train(cfg)
    rows = [
        json.loads(x) for x in (cfg.resolved_out_dir() / "metrics.jsonl").read_text().splitlines()
    ]
    second = rows[2]
    assert 0.0 < second["entropy/mean"] < torch.log(torch.tensor(1000.0))
    assert second["age0/entropy"] > 0 and second["age1/entropy"] > 0
    assert 0.0 <= second["padding/frac"] < 0.5


def test_new_keys_are_validated():
    from remix_rft.trainer.config import ConfigError, load_config

    for bad in ("micro_batch_tokens=-1", "logprob_chunk_tokens=-8", "entropy_coef=-0.1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])
    cfg = load_config(None, ["micro_batch_tokens=16384", "entropy_coef=0.001"])
    assert cfg.micro_batch_tokens == 16384 and cfg.logprob_chunk_tokens == 1024
