"""Replay strategies, one registry by name: which past samples join an iteration's fresh
ones in the training batch (docs/design.md §2.11).

* ``uniform`` -- ReMix as published: past samples of the last ν − 1 iterations drawn
  uniformly without replacement (the buffer's own draw, bit for bit the pre-registry path);
* ``informative`` -- the same draw restricted to samples of *informative* groups, those whose
  advantages were not all zero when they were generated (a uniform group carries no
  gradient under group-relative advantages, and under token-mean aggregation it only
  dilutes the step of the rest). Uniform within the window, not newest first: with ν − 1
  past iterations the informative pool is usually no larger than the off-policy share, so
  the order rarely matters, and a uniform draw keeps ``uniform``'s age mix, so that the
  filter is the only difference between the two arms;
* ``fill-uniform`` -- POPO's swap (arXiv 2606.01281): the fresh batch keeps its informative
  groups, and informative replayed samples take the place of its uniform groups and of the
  off-policy share; the batch keeps its size (fresh uniform samples fill what the replay
  pool cannot), so the fresh share is what the fresh data earned;
* ``success`` -- the difficulty-prioritised variant of ``informative``: whole informative
  groups in ascending mean reward (rare successes first), newest first among equals.

A replayed sample keeps its behaviour log-probs μ, its version and the advantage computed
within its group at generation (§2.2); only the Mix-PPG ratio and clip see its age.

Adding one is a function ``fn(fresh, buffer, n_past, step) -> MixedBatch`` plus
``@register_replay("name")``; the config key ``replay_strategy`` then accepts the name.
Strategies draw with the buffer's generator, which a checkpoint holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from remix_rft.data.buffer import ReplayBuffer, Sample, draw


@dataclass(frozen=True)
class MixedBatch:
    """An iteration's training samples: the fresh ones kept (first in the batch), then the
    replayed ones."""

    fresh: list[Sample]
    replayed: list[Sample]

    @property
    def samples(self) -> list[Sample]:
        return self.fresh + self.replayed


ReplayFn = Callable[[list[Sample], ReplayBuffer, int, int], MixedBatch]
REPLAY_STRATEGIES: dict[str, ReplayFn] = {}


def register_replay(name: str) -> Callable[[ReplayFn], ReplayFn]:
    def register(fn: ReplayFn) -> ReplayFn:
        REPLAY_STRATEGIES[name] = fn
        return fn

    return register


def replay_strategy(name: str) -> ReplayFn:
    if name not in REPLAY_STRATEGIES:
        raise ValueError(f"unknown replay strategy {name!r}; allowed: {sorted(REPLAY_STRATEGIES)}")
    return REPLAY_STRATEGIES[name]


def informative_groups(samples: Iterable[Sample]) -> set[tuple[int, int]]:
    """``(version, group)`` of the groups with a non-zero advantage at generation."""
    return {(s.version, s.group) for s in samples if s.advantage != 0.0}


def is_informative(sample: Sample, groups: set[tuple[int, int]]) -> bool:
    return (sample.version, sample.group) in groups


def informative_past(buffer: ReplayBuffer, step: int) -> list[Sample]:
    past = buffer.past(step)
    groups = informative_groups(past)
    return [s for s in past if is_informative(s, groups)]


@register_replay("uniform")
def uniform_replay(fresh: list[Sample], buffer: ReplayBuffer, n_past: int, step: int) -> MixedBatch:
    return MixedBatch(list(fresh), buffer.sample_past(n_past, step))


@register_replay("informative")
def informative_replay(
    fresh: list[Sample], buffer: ReplayBuffer, n_past: int, step: int
) -> MixedBatch:
    return MixedBatch(list(fresh), draw(informative_past(buffer, step), n_past, buffer.rng))


@register_replay("success")
def success_replay(fresh: list[Sample], buffer: ReplayBuffer, n_past: int, step: int) -> MixedBatch:
    """Informative groups, hardest first: whole groups in ascending mean reward (a rare
    success is the signal a hard prompt gives, and it is not learnt yet), newer first among
    equals; the last group that does not fit whole is drawn from uniformly."""
    by_group: dict[tuple[int, int], list[Sample]] = {}
    for s in informative_past(buffer, step):
        by_group.setdefault((s.version, s.group), []).append(s)
    ranked = sorted(
        by_group.items(), key=lambda kv: (sum(s.reward for s in kv[1]) / len(kv[1]), -kv[0][0])
    )
    replayed: list[Sample] = []
    for _, members in ranked:
        if len(replayed) >= n_past:
            break
        replayed += draw(members, n_past - len(replayed), buffer.rng)
    return MixedBatch(list(fresh), replayed)


@register_replay("fill-uniform")
def fill_uniform_replay(
    fresh: list[Sample], buffer: ReplayBuffer, n_past: int, step: int
) -> MixedBatch:
    groups = informative_groups(fresh)
    signal = [s for s in fresh if is_informative(s, groups)]
    flat = [s for s in fresh if not is_informative(s, groups)]
    size = len(fresh) + n_past
    replayed = draw(informative_past(buffer, step), size - len(signal), buffer.rng)
    # too few informative past samples: fresh uniform groups (whole ones first) fill the rest
    filler = flat[: max(0, size - len(signal) - len(replayed))]
    kept = {id(s) for s in signal + filler}
    return MixedBatch([s for s in fresh if id(s) in kept], replayed)


def mix(name: str, fresh: list[Sample], buffer: ReplayBuffer, n_past: int, step: int) -> MixedBatch:
    """The batch of iteration ``step``: without an off-policy share (on-policy, or after
    reincarnation) the fresh samples alone, whatever the strategy."""
    if n_past <= 0:
        return MixedBatch(list(fresh), [])
    mixed = replay_strategy(name)(fresh, buffer, n_past, step)
    for s in mixed.replayed:
        s.replays += 1
    return mixed


def replay_metrics(
    mixed: MixedBatch, generated: Sequence[Sample], step: int, window: int
) -> dict[str, float]:
    """What the strategy did this iteration: the informative share of the fresh samples
    generated, of the replayed ones and of the whole batch, the replayed samples' ages
    (``replay/age_<k>``: share of age k, k = 1 .. ν − 1) and how often each has now been
    replayed (``replay/reuse_mean``, ``replay/reuse_max``)."""
    fresh_groups = informative_groups(generated)
    past_groups = informative_groups(mixed.replayed)
    fresh_inf = sum(is_informative(s, fresh_groups) for s in mixed.fresh)
    past_inf = sum(is_informative(s, past_groups) for s in mixed.replayed)
    batch = len(mixed.fresh) + len(mixed.replayed)
    row = {
        "fresh/informative_frac": _share(
            sum(is_informative(s, fresh_groups) for s in generated), len(generated)
        ),
        "batch/informative_frac": _share(fresh_inf + past_inf, batch),
        "batch/fresh_samples": float(len(mixed.fresh)),
        "replay/samples": float(len(mixed.replayed)),
    }
    if mixed.replayed:
        n = len(mixed.replayed)
        ages = [step - s.version for s in mixed.replayed]
        reuse = [s.replays for s in mixed.replayed]
        row["replay/informative_frac"] = past_inf / n
        row.update({f"replay/age_{k}": ages.count(k) / n for k in range(1, window)})
        row["replay/reuse_mean"] = sum(reuse) / n
        row["replay/reuse_max"] = float(max(reuse))
    return row


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
