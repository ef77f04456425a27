"""The efficiency benchmark's settings and variants (registered by name), and the overrides
of one run: what ``benchmarks/efficiency.py`` trains."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remix_rft.trainer.config import load_config


@dataclass(frozen=True)
class Setting:
    model: str
    budget: int  # rollouts per run
    fixed_target: float  # a documented, fixed accuracy besides the plateau target
    eval_rollouts: int  # evaluate about every this many rollouts
    remix_overrides: tuple[str, ...] = ()  # for the ReMix variants only
    # the stability table looks at evaluations from here on: past the early climb, where a
    # fall of accuracy between evaluations is instability rather than noise of the climb
    stable_after: int = 0


SETTINGS: dict[str, Setting] = {
    # The demo's budget: 30 GRPO iterations of 16 x 8.
    "default": Setting("embedded", 3840, 0.9, 128, stable_after=1280),
    # 100 GRPO iterations of 16 x 8 (one update each): GRPO creeps up to ~0.45 by then
    # (~0.47 by 150). The fixed target 0.40 is the early-speed mark (base 0.15, factor-2/3
    # problems solved: 0.31); the plateau target is tuned GRPO's final accuracy - 0.01.
    # ReMix reincarnates later here (80 iterations, 2,560 rollouts).
    "hard": Setting("embedded-hard", 12800, 0.40, 512, ("reincarnation_step=80",), 4096),
    # The replay test's setting (docs/results-replay.md): the hard setting evaluated twice as
    # often (every 256 rollouts, fine enough to interpolate rollouts-to-T) over the reuse
    # phase of the paper regime (reincarnation at 2,560 rollouts, where every strategy
    # becomes the same on-policy GRPO) and 12 on-policy iterations after it; its own
    # archive (runs/hard-replay/). A 12,800 budget costs ~4x as much per run.
    "hard-replay": Setting("embedded-hard", 4096, 0.40, 256, ("reincarnation_step=80",), 2560),
}


@dataclass(frozen=True)
class Variant:
    config: str
    overrides: tuple[str, ...] = ()
    role: str = ""  # grpo (an lr of the baseline), control, remix, ablation, ppo
    settings: tuple[str, ...] = ("default", "hard")
    note: str = ""
    tier: int = 0  # launch order: the comparison itself, then PPO, ablations, extras


# tiny-remix-ppo moved to the paper's regime: tiny-remix-grpo-paper's share, window, UTD
# and λ schedule; the minibatch holds the whole mixed batch, as there
PAPER_PPO = (
    "prompts_per_step=8", "offpolicy_fraction=0.4", "window=3", "epochs=2",
    "kl_lambda_schedule=step-down", "kl_lambda_start=1.0", "kl_lambda_hold_steps=8",
    "kl_lambda_every=2", "kl_lambda_decrement=0.1", "kl_lambda=0.5",
    # after reincarnation: tiny-ppo's on-policy batch and single update, as the GRPO
    # paper config switches to tiny-grpo's
    "post_reincarnation_prompts_per_step=32", "post_reincarnation_minibatch_size=128",
    "post_reincarnation_epochs=1", "post_reincarnation_kl_coef=0",
)  # fmt: skip


def replay_variant(strategy: str, note: str, *extra: str) -> Variant:
    """The paper regime with ``replay_strategy=strategy`` (and ``extra`` overrides) on the
    hard-replay setting."""
    return Variant(
        "tiny-remix-grpo-paper", (f"replay_strategy={strategy}", *extra), "remix",
        settings=("hard-replay",), tier=5, note=note,
    )  # fmt: skip


def paper_ablations(tier: int, *entries: tuple[str, tuple[str, ...], str]) -> dict[str, Variant]:
    """Variants of the paper regime (``tiny-remix-grpo-paper`` on the hard setting), each
    ``(name, overrides, note)``, launched at ``tier``."""
    return {
        name: Variant("tiny-remix-grpo-paper", overrides, "ablation", settings=("hard",),
                      tier=tier, note=note)
        for name, overrides, note in entries
    }  # fmt: skip


# The overrides come on top of the shipped config; the setting's overrides come first, so
# a variant's own value wins.
VARIANTS: dict[str, Variant] = {
    "grpo-lr5e-5": Variant("tiny-grpo", ("lr=5e-5",), "grpo", tier=3),
    "grpo": Variant("tiny-grpo", (), "grpo", note="16 x 8 fresh, one update per iteration"),
    "grpo-lr2e-4": Variant("tiny-grpo", ("lr=2e-4",), "grpo"),
    "grpo-lr4e-4": Variant("tiny-grpo", ("lr=4e-4",), "grpo"),
    "remix-grpo": Variant(
        "tiny-remix-grpo",
        (),
        "remix",
        note="4 x 8 fresh + 32 reused (window 4), one update per iteration, KL-Convex, "
        "reincarnation, then tiny-grpo's settings",
    ),  # fmt: skip
    # control 1: everything of ReMix-GRPO (fresh batch, one update per iteration, KL,
    # reincarnation and the on-policy phase after it) except the reuse
    "remix-grpo-no-reuse": Variant(
        "tiny-remix-grpo",
        ("offpolicy_fraction=0",),
        "control",
        note="ReMix-GRPO without reuse (control: same fresh batch and updates)",
    ),  # fmt: skip
    # control 2: smaller fresh batches without reuse -- more updates per rollout
    "grpo-4x8": Variant("tiny-grpo", ("prompts_per_step=4",), "control", note="4 x 8 fresh"),
    "grpo-2x8": Variant(
        "tiny-grpo", ("prompts_per_step=2",), "control", note="2 x 8 fresh", tier=3
    ),
    # ablations of ReMix's parts
    "remix-grpo-kl-base-only": Variant(
        "tiny-remix-grpo", ("kl_lambda=1.0",), "ablation", tier=2, note="no KL-Convex: λ = 1"
    ),
    "remix-grpo-no-kl": Variant(
        "tiny-remix-grpo", ("kl_coef=0",), "ablation", tier=2, note="no KL at all: β = 0"
    ),
    "remix-grpo-no-reincarnation": Variant(
        "tiny-remix-grpo",
        ("reincarnation_step=0",),
        "ablation",
        tier=2,
        note="reuse for the whole run",
    ),  # fmt: skip
    "remix-grpo-centre-one": Variant(
        "tiny-remix-grpo", ("clip_centre=one",), "ablation", tier=2, note="clip around 1, not π_k/μ"
    ),
    "ppo": Variant("tiny-ppo", (), "ppo", settings=("hard",), tier=1),
    # PPO's own lr sweep on the hard setting (actor lr; the critic keeps 1e-4): the baseline
    # of the ReMix-PPO comparison gets its best shot, as GRPO does
    "ppo-lr5e-5": Variant("tiny-ppo", ("lr=5e-5",), "ppo", settings=("hard",), tier=9),
    "ppo-lr2e-4": Variant("tiny-ppo", ("lr=2e-4",), "ppo", settings=("hard",), tier=9),
    "remix-ppo": Variant("tiny-remix-ppo", (), "ppo", settings=("hard",), tier=1),
    # ReMix-PPO in the paper's regime (p 0.4, window 3, 2 updates per batch, the λ
    # schedule of tiny-remix-grpo-paper) on an 8 x 4 fresh batch, and the same without reuse
    **{
        name: Variant(
            "tiny-remix-ppo", PAPER_PPO + extra, role, settings=("hard",), tier=8, note=note
        )  # fmt: skip
        for name, extra, role, note in (
            (
                "paper-remix-ppo",
                (),
                "remix",
                "ReMix-PPO: 8 x 4 fresh + 21 reused (window 3, p 0.4), 2 updates, λ schedule",
            ),
            (
                "paper-ppo-no-reuse",
                ("offpolicy_fraction=0",),
                "control",
                "the same 8 x 4 fresh batch and 2 updates, no reuse (critic GAE)",
            ),
        )  # fmt: skip
    },
    # DAPO's dynamic sampling: the filter that competes with reuse for the same sparse
    # signal; every generated response counts in the rollouts, kept or dropped
    "grpo-dynamic": Variant(
        "tiny-grpo",
        ("dynamic_sampling=true", "max_generation_rounds=3"),
        "filter",
        settings=("hard",),
        tier=4,
        note="16 x 8 fresh, groups without signal dropped and refilled, up to 3 rounds",
    ),  # fmt: skip
    # The three arms of the reuse test in the paper's regime (2 updates per batch, where
    # the clip centre acts): (a) ReMix, (b) the same fresh batch and updates without the
    # reuse, (c) half the fresh batch with one update: the same updates per rollout as
    # (a) and (b). (c) reincarnates at the same rollout count (160 x 16 = 80 x 32) and
    # steps its λ at the same rollout counts.
    "paper-remix": Variant(
        "tiny-remix-grpo-paper",
        (),
        "remix",
        settings=("hard",),
        tier=5,
        note="4 x 8 fresh + 21 reused (window 3, p 0.4), 2 updates, λ schedule",
    ),  # fmt: skip
    "paper-no-reuse": Variant(
        "tiny-remix-grpo-paper",
        ("offpolicy_fraction=0",),
        "control",
        settings=("hard",),
        tier=5,
        note="arm (b): the same 4 x 8 fresh batch and 2 updates, no reuse",
    ),  # fmt: skip
    "paper-2x8-one-update": Variant(
        "tiny-remix-grpo-paper",
        (
            "offpolicy_fraction=0",
            "prompts_per_step=2",
            "epochs=1",
            "minibatch_size=16",
            "reincarnation_step=160",
            "kl_lambda_hold_steps=16",
            "kl_lambda_every=4",
        ),
        "control",
        settings=("hard",),
        tier=5,
        note="arm (c): 2 x 8 fresh, 1 update: the updates per rollout of (a) and (b)",
    ),  # fmt: skip
    # The replay test (docs/results-replay.md): the paper regime with each replay strategy
    # (arm (a); uniform is paper-remix), against paper-no-reuse (arm (b)), dynamic sampling
    # on the same fresh batch and updates (arm (c)) and tuned GRPO (arm (d))
    "paper-informative": replay_variant(
        "informative", "paper-remix replaying only groups with signal at generation"
    ),
    "paper-fill-uniform": replay_variant(
        "fill-uniform",
        "paper-remix whose informative replay also replaces the fresh batch's uniform groups "
        "(POPO's swap)",
    ),
    # the diagnosed limit of `informative`: with the last 2 iterations its pool is ~12-16
    # samples, each replayed ~1.5 times; the last 8 give it ~4x the distinct groups
    "paper-informative-window9": replay_variant(
        "informative",
        "paper-informative drawing from the last 8 iterations (a 4x larger informative pool)",
        "window=9",
    ),
    "paper-success-window9": replay_variant(
        "success",
        "paper-informative-window9 taking whole groups, hardest (lowest mean reward) first",
        "window=9",
    ),
    "paper-dynamic": Variant(
        "tiny-remix-grpo-paper",
        ("offpolicy_fraction=0", "dynamic_sampling=true", "max_generation_rounds=3"),
        "filter",
        settings=("hard-replay",),
        tier=5,
        note="arm (c): paper-no-reuse with dynamic sampling (groups without signal dropped "
        "and refilled, up to 3 rounds; every generated response counted)",
    ),  # fmt: skip
    # ablations of the paper regime's parts (role "ablation": the right-hand plot panel)
    **paper_ablations(
        6,
        (
            "paper-lambda-constant",
            ("kl_lambda_schedule=constant",),
            "no λ schedule: λ = 0.5 throughout",
        ),
        (
            "paper-lambda-1",
            ("kl_lambda_schedule=constant", "kl_lambda=1.0"),
            "no KL-Convex: λ = 1 (base KL only)",
        ),
        ("paper-no-kl", ("kl_coef=0",), "no KL at all: β = 0"),
        ("paper-utd1", ("epochs=1",), "UTD 1: one update per batch"),
    ),  # fmt: skip
    # where reuse degrades: more updates per batch, older data, and pure Mix-PPG (no
    # reincarnation) for the whole budget (the paper reports destructive degradation of
    # pure Mix-PPG at high UTD after ~200 steps)
    **paper_ablations(
        7,
        ("paper-utd4", ("epochs=4",), "UTD 4: four updates per batch"),
        ("paper-window6", ("window=6",), "window 6: the last 5 past policies"),
        (
            "paper-no-reincarnation",
            ("reincarnation_step=0",),
            "pure Mix-PPG (UTD 2) for the whole budget",
        ),
        (
            "paper-utd4-no-reincarnation",
            ("epochs=4", "reincarnation_step=0"),
            "pure Mix-PPG at UTD 4 for the whole budget",
        ),
    ),  # fmt: skip
}
BUDGET_SHARES = (0.125, 0.25, 0.5, 1.0)
EVAL_PROBLEMS = 500


def run_dir_for(root: Path, variant: str, seed: int) -> Path:
    return root / variant / f"seed{seed}"


def run_overrides(
    setting: Setting, variant: str, seed: int, rollout_grid: bool = False
) -> list[str]:
    """The overrides of one run: setting, variant, the budget's steps and the eval cadence
    (every ``eval_every`` iterations, or with ``rollout_grid`` whenever the rollout count
    crosses a multiple of the setting's ``eval_rollouts``, the same grid for every batch
    size, before and after reincarnation)."""
    v = VARIANTS[variant]
    extra = setting.remix_overrides if v.config.startswith("tiny-remix") else ()
    base = [f"model={setting.model}", *extra, *v.overrides]
    cfg = quiet_config(v.config, base)
    steps = cfg.steps_for_rollouts(setting.budget)
    per_step = cfg.rollouts_for_steps(1)  # before reincarnation: the smallest iterations
    eval_every = max(1, setting.eval_rollouts // per_step)
    cadence = (f"eval_every_rollouts={setting.eval_rollouts}" if rollout_grid
               else f"eval_every={eval_every}")  # fmt: skip
    return [*base, f"steps={steps}", cadence,
            f"eval_problems={EVAL_PROBLEMS}", f"save_every={steps}", "keep_checkpoints=1",
            f"seed={seed}", f"name={variant}"]  # fmt: skip


def expected_config(
    setting: Setting, variant: str, seed: int, rollout_grid: bool
) -> dict[str, Any]:
    """The resolved configuration of one run, to compare with an archived run's."""
    overrides = run_overrides(setting, variant, seed, rollout_grid)
    return quiet_config(VARIANTS[variant].config, overrides).to_dict()


@functools.cache
def default_config() -> dict[str, Any]:
    """Every key at its default: what an archived run's config is completed with."""
    return load_config(None, []).to_dict()


def quiet_config(path: str | None, overrides: list[str]) -> Any:
    """``load_config`` without its warnings (keys a variant sets but does not use): the
    run itself logs them when it starts, and the benchmark resolves each config often."""
    checks = logging.getLogger("remix_rft.trainer.config_checks")
    level = checks.level
    checks.setLevel(logging.ERROR)
    try:
        return load_config(path, overrides)
    finally:
        checks.setLevel(level)


def resolved(overrides: Sequence[str]) -> list[str]:
    """``key=value`` overrides with later values winning, in first-seen key order (as the
    config loader applies them), so a variant's description names each key once."""
    values: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        values[key] = value
    return [f"{k}={v}" for k, v in values.items()]
