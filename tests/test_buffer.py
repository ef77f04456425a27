import pytest
import torch

from remix_rft.data.batch import collate
from remix_rft.data.buffer import ReplayBuffer, Sample
from remix_rft.data.sampler import PromptSampler


def make_sample(version: int, i: int = 0, length: int = 3) -> Sample:
    gen = torch.Generator().manual_seed(version * 100 + i)
    return Sample(
        prompt_ids=torch.randint(0, 50, (2 + i % 3,), generator=gen),
        response_ids=torch.randint(0, 50, (length,), generator=gen),
        behavior_logprobs=-torch.rand(length, generator=gen),
        reward=float(i % 2),
        advantage=0.5 - i % 2,
        version=version,
        group=i // 2,
        finished=True,
    )


def test_eviction_keeps_exactly_the_last_window_versions():
    buf = ReplayBuffer(window=3)
    for step in range(1, 7):
        buf.add([make_sample(step, i) for i in range(4)])
        buf.evict(step)
        assert buf.versions() == list(range(max(1, step - 2), step + 1))
    assert len(buf) == 12


def test_window_one_keeps_only_fresh_data_and_has_no_past():
    buf = ReplayBuffer(window=1)
    for step in (1, 2):
        buf.add([make_sample(step, i) for i in range(3)])
        buf.evict(step)
    assert buf.versions() == [2] and len(buf) == 3
    assert buf.past(2) == []  # at iteration 2 its own samples are fresh, not past
    assert buf.sample_past(5, 2) == []
    # At iteration 3, before eviction, the iteration-2 samples are the past ones.
    assert [s.version for s in buf.past(3)] == [2, 2, 2]
    buf.evict(3)
    assert buf.past(3) == [] and len(buf) == 0


def test_sample_past_draws_only_older_versions_without_replacement():
    buf = ReplayBuffer(window=3, seed=1)
    for step in (1, 2, 3):
        buf.add([make_sample(step, i) for i in range(5)])
    drawn = buf.sample_past(6, current_version=3)
    assert len(drawn) == 6
    assert all(s.version < 3 for s in drawn)
    assert len({id(s) for s in drawn}) == 6
    assert len(buf.sample_past(100, current_version=3)) == 10


def test_state_roundtrip_is_bit_for_bit_including_the_sampling_rng():
    buf = ReplayBuffer(window=2, seed=7)
    for step in (1, 2):
        buf.add([make_sample(step, i) for i in range(4)])
    buf.sample_past(2, 2)  # advance the RNG
    state = buf.state_dict()
    path_state = {k: v for k, v in state.items()}
    restored = ReplayBuffer(window=2)
    restored.load_state_dict(path_state)
    for a, b in zip(buf._samples, restored._samples, strict=True):
        for key in Sample._TENSORS:
            assert torch.equal(getattr(a, key), getattr(b, key))
        for key in Sample._SCALARS:
            assert getattr(a, key) == getattr(b, key)
    ids = [id(s) for s in buf._samples]
    drawn_a = [ids.index(id(s)) for s in buf.sample_past(3, 3)]
    ids_b = [id(s) for s in restored._samples]
    drawn_b = [ids_b.index(id(s)) for s in restored.sample_past(3, 3)]
    assert drawn_a == drawn_b


def test_state_survives_torch_save_with_weights_only(tmp_path):
    buf = ReplayBuffer(window=2)
    buf.add([make_sample(1, i) for i in range(3)])
    torch.save(buf.state_dict(), tmp_path / "b.pt")
    restored = ReplayBuffer(window=2)
    restored.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True))
    assert torch.equal(restored._samples[2].behavior_logprobs, buf._samples[2].behavior_logprobs)


def test_collate_left_pads_prompts_and_right_pads_responses():
    samples = [make_sample(1, 0, length=2), make_sample(1, 1, length=4)]
    batch = collate(samples, pad_id=99)
    p = batch.prompt_len
    assert p == max(s.prompt_ids.numel() for s in samples)
    s0 = samples[0]
    assert torch.equal(batch.input_ids[0, p - s0.prompt_ids.numel() : p], s0.prompt_ids)
    assert torch.equal(batch.input_ids[0, p : p + 2], s0.response_ids)
    assert batch.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    # position ids count real tokens only, so left padding does not shift positions
    first_real = p - s0.prompt_ids.numel()
    assert batch.position_ids[0, first_real].item() == 0
    assert torch.equal(batch.advantages[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_prompt_sampler_is_deterministic_and_resumable():
    a = PromptSampler(10, seed=3)
    first = a.next(7)
    state = a.state_dict()
    rest = a.next(8)
    b = PromptSampler(10, seed=3)
    b.load_state_dict(state)
    assert b.next(8) == rest
    assert sorted(first + rest[:3]) == list(range(10))  # one epoch covers every problem once


def test_loading_a_buffer_of_another_window_names_the_key_and_both_values():
    buf = ReplayBuffer(window=2)
    buf.add([make_sample(1, i) for i in range(2)])
    with pytest.raises(ValueError, match=r"'window'.*window=2.*window=4"):
        ReplayBuffer(window=4).load_state_dict(buf.state_dict())
