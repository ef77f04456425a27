from pathlib import Path

import pytest
import torch

from remix_rft.trainer.config import load_config

# Small, fast settings for end-to-end runs on the embedded model.
TINY = [
    "prompts_per_step=4",
    "group_size=4",
    "minibatch_size=16",
    "max_new_tokens=40",
    "eval_problems=16",
    "eval_batch_size=16",
    "eval_every=2",
    "save_every=1",
    "threads=1",
]


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config(tmp_path):
    def make(*overrides: str, out: str = "run"):
        return load_config(None, [*TINY, f"out_dir={tmp_path / out}", *overrides])

    return make


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A random tiny model of the embedded architecture, for tests of mechanics, not learning."""
    from remix_rft.apps.tiny_architecture import build_model, build_tokenizer, save_tokenizer

    out = tmp_path_factory.mktemp("tiny-random")
    torch.manual_seed(0)
    tok = build_tokenizer()
    save_tokenizer(tok, out)
    build_model(tok).save_pretrained(out)
    return out


@pytest.fixture
def generation_batch():
    """A Generation's samples collated as a training batch (μ = the engine's log-probs)."""
    from remix_rft.data.batch import collate
    from remix_rft.data.buffer import Sample

    def make(gen):
        samples = [
            Sample(
                prompt_ids=gen.prompt_ids[i],
                response_ids=gen.response_ids[i],
                behavior_logprobs=gen.logprobs[i],
                reward=0.0,
                advantage=0.0,
                version=1,
                group=i,
                finished=gen.finished[i],
            )  # fmt: skip
            for i in range(len(gen))
        ]
        return collate(samples, 0)

    return make
