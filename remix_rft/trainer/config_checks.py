"""Checks of every configuration value: a bad one raises :class:`ConfigError` naming the key,
what is allowed and what was given. The choice lists of registered variants (estimators,
policy losses, engines, transports, trackers) are read from their registries.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from remix_rft.algorithm.advantages import ADVANTAGE_ESTIMATORS
from remix_rft.algorithm.correction import ROLLOUT_CORRECTION_LEVELS, ROLLOUT_CORRECTIONS
from remix_rft.algorithm.kl import KL_LAMBDA_SCHEDULES
from remix_rft.algorithm.policy_losses import POLICY_LOSSES
from remix_rft.data.replay import REPLAY_STRATEGIES
from remix_rft.trainer.config_fields import ConfigError, TrainConfig
from remix_rft.trainer.config_task_checks import check, validate_task
from remix_rft.trainer.trackers import TRACKERS, TrackerError, check_installed

log = logging.getLogger(__name__)

ALGORITHMS = ("grpo", "ppo", "remix-grpo", "remix-ppo")
TASKS = ("arithmetic", "math", "custom")
KL_KINDS = ("k1", "k2", "k3")
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
CLIP_CENTRE_MODES = ("current", "one")
LR_SCHEDULES = ("constant", "cosine", "linear")
DTYPES = ("float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
BEHAVIOR_LOGPROBS = ("trainer", "engine")
ROLLOUT_MODES = ("sync", "async")


# ---- validation -----------------------------------------------------------------
def _one_of(cfg: Any, key: str, choices: tuple[str, ...], prefix: str = "") -> None:
    value = getattr(cfg, key)
    check(value in choices, prefix + key, f"one of {', '.join(choices)}", value)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every value of ``cfg``; return it unchanged, or raise :class:`ConfigError`."""
    _validate_choices(cfg)
    _validate_ranges(cfg)
    _validate_groups(cfg)
    _validate_replay(cfg)
    _validate_practitioner_keys(cfg)
    _validate_kl_lambda_schedule(cfg)
    _validate_post_reincarnation(cfg)
    _validate_on_policy(cfg)
    _validate_lora(cfg)
    validate_task(cfg.task)
    _validate_reporting(cfg)
    return cfg


def choice_keys() -> dict[str, tuple[str, ...]]:
    """Every key whose value is one of a list, with the list (registries read now); what
    ``_validate_choices`` checks and ``remix train --help-config`` shows."""
    return {
        "algorithm": ALGORITHMS,
        "task.name": TASKS,
        "kl_estimator": KL_KINDS,
        "kl_lambda_schedule": KL_LAMBDA_SCHEDULES,
        "loss_agg": AGG_MODES,
        "clip_centre": CLIP_CENTRE_MODES,
        "lr_schedule": LR_SCHEDULES,
        "dtype": DTYPES,
        "device": DEVICES,
        "rollout_engine": _engine_names(),
        "behavior_logprobs": BEHAVIOR_LOGPROBS,
        "rollout_mode": ROLLOUT_MODES,
        "policy_loss": tuple(sorted(POLICY_LOSSES)),
        "rollout_correction": ROLLOUT_CORRECTIONS,
        "rollout_correction_level": ROLLOUT_CORRECTION_LEVELS,
        "weight_transport": _transport_names(),
        "replay_strategy": tuple(REPLAY_STRATEGIES),
    }


def _validate_choices(cfg: TrainConfig) -> None:
    for key, choices in choice_keys().items():
        section, _, name = key.rpartition(".")  # "task.name": the task's own key
        _one_of(cfg.task if section else cfg, name, choices, f"{section}." if section else "")
    _validate_rollout_device(cfg)
    from remix_rft.trainer.preemption import validate_signal_names

    try:
        validate_signal_names(cfg.preempt_signals)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key 'preempt_signals': {err}") from None


def _validate_rollout_device(cfg: TrainConfig) -> None:
    value = cfg.rollout_device
    index = value.removeprefix("cuda:")
    check(
        value in ("", "cpu", "cuda") or (value.startswith("cuda:") and index.isdigit()),
        "rollout_device", "empty (the learner's device), cpu, cuda or cuda:N", value,
    )  # fmt: skip
    check(
        not value or cfg.rollout_mode == "async",
        "rollout_device", "empty unless rollout_mode is async (a sync run generates with the "
        "learner's model)", value,
    )  # fmt: skip


def _validate_ranges(cfg: TrainConfig) -> None:
    check(cfg.eval_temperature >= 0, "eval_temperature", ">= 0 (0: greedy)", cfg.eval_temperature)
    check(0 < cfg.eval_top_p <= 1, "eval_top_p", "in (0, 1]", cfg.eval_top_p)
    check(
        0 < cfg.vllm_gpu_memory_utilization <= 1,
        "vllm_gpu_memory_utilization",
        "in (0, 1]",
        cfg.vllm_gpu_memory_utilization,
    )
    check(cfg.vllm_sleep_level in (1, 2), "vllm_sleep_level", "1 or 2", cfg.vllm_sleep_level)
    check(cfg.weight_sync_bucket_mb >= 0, "weight_sync_bucket_mb", ">= 0 (0: one tensor at a "
          "time)", cfg.weight_sync_bucket_mb)  # fmt: skip
    check(cfg.dist_timeout_minutes > 0, "dist_timeout_minutes", "> 0", cfg.dist_timeout_minutes)
    check(
        cfg.advantage_estimator in ("", *ADVANTAGE_ESTIMATORS),
        "advantage_estimator",
        f"one of {', '.join(ADVANTAGE_ESTIMATORS)} (empty: from the algorithm)",
        cfg.advantage_estimator,
    )
    positive_ints = (
        "steps", "prompts_per_step", "group_size", "max_new_tokens", "minibatch_size",
        "epochs", "eval_every", "eval_problems", "eval_batch_size", "save_every",
        "keep_checkpoints", "window", "eval_samples",
    )  # fmt: skip
    for key in positive_ints:
        check(getattr(cfg, key) >= 1, key, "an integer >= 1", getattr(cfg, key))
    non_negative = (
        "micro_batch_size", "warmup_updates", "weight_decay", "kl_coef", "critic_warmup_steps",
        "reincarnation_step", "reincarnation_patience", "threads", "max_grad_norm", "seed",
        "vllm_max_model_len", "micro_batch_tokens", "logprob_chunk_tokens", "entropy_coef",
        "logprob_micro_batch_tokens",
        "max_nonfinite_updates", "max_staleness", "rollout_threads", "overlong_buffer_tokens",
        "overlong_penalty", "eval_threads", "log_samples", "log_eval_problems",
        "truncation_warn_steps",
    )  # fmt: skip
    for key in non_negative:
        check(getattr(cfg, key) >= 0, key, ">= 0", getattr(cfg, key))
    for key in INHERITING:
        value = getattr(cfg, key)
        what = f"the {INHERITING[key]} value (older configs: {LEGACY_UNSET[key]})"
        check(value is None or value >= 0, key, f">= 0, or null for {what}", value)
    for key in ("lr", "critic_lr", "temperature", "clip_eps_low", "clip_eps_high", "value_clip"):
        check(getattr(cfg, key) > 0, key, "> 0", getattr(cfg, key))
    for key in ("top_p", "gamma", "gae_lambda", "kl_lambda", "adam_beta1", "adam_beta2",
                "truncation_warn_fraction"):  # fmt: skip
        value = getattr(cfg, key)
        check(0.0 <= value <= 1.0, key, "in [0, 1]", value)
    check(cfg.top_p > 0, "top_p", "in (0, 1]", cfg.top_p)
    check(
        0.0 <= cfg.offpolicy_fraction < 1.0,
        "offpolicy_fraction",
        "in [0, 1)",
        cfg.offpolicy_fraction,
    )
    check(cfg.clip_eps_low < 1.0, "clip_eps_low", "< 1", cfg.clip_eps_low)
    for key in ("offpolicy_clip_eps_low", "offpolicy_clip_eps_high"):
        value = getattr(cfg, key)
        check(value is None or value > 0, key, "> 0, or null for the fresh-data value", value)


def _validate_groups(cfg: TrainConfig) -> None:
    """Group estimators compare responses within a group: a group needs two of them."""
    if ADVANTAGE_ESTIMATORS[cfg.estimator].needs_groups:
        for key in ("group_size", "post_reincarnation_group_size"):
            value = getattr(cfg, key)
            check(
                (value is None and key.startswith("post_")) or (value or 0) >= 2,
                key,
                f">= 2 for the {cfg.estimator} advantage (it compares responses within a group)"
                + (", or null for the group_size value" if key.startswith("post_") else ""),
                value,
            )


def _validate_replay(cfg: TrainConfig) -> None:
    """A strategy that tells informative groups by their advantage at generation needs
    per-response advantages (a critic's are recomputed per batch)."""
    check(
        cfg.replay_strategy == "uniform" or not ADVANTAGE_ESTIMATORS[cfg.estimator].uses_critic,
        "replay_strategy",
        f"uniform with the {cfg.estimator} advantage (a critic's advantages are not fixed at "
        "generation)",
        cfg.replay_strategy,
    )


def _validate_on_policy(cfg: TrainConfig) -> None:
    """Reuse and reincarnation keys belong to remix-*; micro-batches fit every minibatch."""
    if not cfg.is_remix:
        check(
            cfg.window == 1,
            "window",
            f"1 for the on-policy algorithm {cfg.algorithm} (use remix-*)",
            cfg.window,
        )
        check(
            cfg.offpolicy_fraction == 0.0,
            "offpolicy_fraction",
            f"0 for the on-policy algorithm {cfg.algorithm} (use remix-*)",
            cfg.offpolicy_fraction,
        )
        check(
            cfg.replay_strategy == "uniform",
            "replay_strategy",
            f"uniform for the on-policy algorithm {cfg.algorithm} (it replays nothing)",
            cfg.replay_strategy,
        )
        check(
            cfg.reincarnation_step == 0 and cfg.reincarnation_patience == 0,
            "reincarnation_step",
            f"0 for the on-policy algorithm {cfg.algorithm} (use remix-*)",
            cfg.reincarnation_step,
        )
    if cfg.micro_batch_size:
        smallest = min(cfg.minibatch_size, cfg.post_reincarnation_minibatch_size or math.inf)
        check(
            cfg.micro_batch_size <= smallest,
            "micro_batch_size",
            f"<= minibatch_size and post_reincarnation_minibatch_size ({smallest})",
            cfg.micro_batch_size,
        )


def _validate_lora(cfg: TrainConfig) -> None:
    check(cfg.lora_rank >= 0, "lora_rank", "an integer >= 0 (0: no LoRA)", cfg.lora_rank)
    check(cfg.lora_alpha > 0, "lora_alpha", "> 0", cfg.lora_alpha)
    check(
        isinstance(cfg.lora_target_modules, list)
        and all(isinstance(w, str) and w for w in cfg.lora_target_modules),
        "lora_target_modules",
        "a list of module names (e.g. q_proj,v_proj), empty for all linear layers",
        cfg.lora_target_modules,
    )


def _validate_reporting(cfg: TrainConfig) -> None:
    check(
        all(t in TRACKERS for t in cfg.report_to) and len(set(cfg.report_to)) == len(cfg.report_to),
        "report_to",
        f"a list of distinct trackers from {', '.join(TRACKERS)} (empty: metrics.jsonl only)",
        cfg.report_to,
    )
    try:
        check_installed(cfg.report_to)
    except TrackerError as err:
        raise ConfigError(str(err)) from None
    check(
        isinstance(cfg.reflection_words, list)
        and all(isinstance(w, str) for w in cfg.reflection_words),
        "reflection_words",
        "a list of strings",
        cfg.reflection_words,
    )


POST_REINCARNATION_KEYS = (
    "post_reincarnation_prompts_per_step", "post_reincarnation_group_size",
    "post_reincarnation_minibatch_size", "post_reincarnation_epochs", "post_reincarnation_lr",
    "post_reincarnation_kl_coef",
)  # fmt: skip
# settings that inherit another value when unset (None), and what they inherit
INHERITING = {
    **{k: k.removeprefix("post_reincarnation_") for k in POST_REINCARNATION_KEYS},
    "eval_max_new_tokens": "max_new_tokens",
    "norm_length": "max_new_tokens",
}
# what older configs wrote for "unset": still read as None, with a deprecation warning
LEGACY_UNSET: dict[str, float] = {
    **{k: 0 for k in INHERITING},
    "post_reincarnation_kl_coef": -1.0,  # 0 is a real β there
    "offpolicy_clip_eps_low": -1.0,
    "offpolicy_clip_eps_high": -1.0,
}


def _validate_post_reincarnation(cfg: TrainConfig) -> None:
    """Post-reincarnation settings need a run that reincarnates. On-policy algorithms never
    do, so a value there is a mistake; a ReMix run with reincarnation switched off (an
    ablation of a shipped config) only ignores them."""
    set_keys = [k for k in POST_REINCARNATION_KEYS if getattr(cfg, k) is not None]
    if not set_keys:
        return
    check(
        cfg.is_remix,
        set_keys[0],
        f"unset (null) for the on-policy algorithm {cfg.algorithm}, which never reincarnates "
        "(use remix-*)",
        getattr(cfg, set_keys[0]),
    )
    if not cfg.reincarnates:
        log.warning(
            "%s ignored: reincarnation_step and reincarnation_patience are 0 (no reincarnation)",
            ", ".join(set_keys),
        )


def _validate_practitioner_keys(cfg: TrainConfig) -> None:
    """Dual clip, rollout correction, dynamic sampling and overlong keys (docs: README)."""
    check(
        cfg.clip_ratio_c == 0 or cfg.clip_ratio_c > 1, "clip_ratio_c", "> 1, or 0 for off",
        cfg.clip_ratio_c,
    )  # fmt: skip
    check(
        cfg.rollout_correction_threshold > 0, "rollout_correction_threshold", "> 0",
        cfg.rollout_correction_threshold,
    )  # fmt: skip
    low = cfg.rollout_correction_min
    check(
        low is None or 0 < low < cfg.rollout_correction_threshold, "rollout_correction_min",
        "null, or in (0, rollout_correction_threshold)", low,
    )  # fmt: skip
    check(
        low is None or cfg.rollout_correction == "mis", "rollout_correction_min",
        "null unless rollout_correction is mis (a lower bound rejects; tis truncates from "
        "above only)", low,
    )  # fmt: skip
    check(
        cfg.rollout_correction == "none" or cfg.behavior_logprobs == "trainer",
        "rollout_correction",
        "none with behavior_logprobs=engine (Mix-PPG's ratio to the engine's μ already "
        "corrects the mismatch; a weight would count it twice)",
        cfg.rollout_correction,
    )
    check(
        cfg.max_generation_rounds >= 1, "max_generation_rounds", "an integer >= 1",
        cfg.max_generation_rounds,
    )  # fmt: skip
    if cfg.dynamic_sampling:
        check(
            ADVANTAGE_ESTIMATORS[cfg.estimator].needs_groups,
            "dynamic_sampling",
            f"false for the {cfg.estimator} advantage (it filters prompt groups without "
            "signal, which only group estimators have)",
            cfg.dynamic_sampling,
        )
    check(
        cfg.overlong_buffer_tokens <= cfg.max_new_tokens,
        "overlong_buffer_tokens",
        f"<= max_new_tokens ({cfg.max_new_tokens})",
        cfg.overlong_buffer_tokens,
    )


def _validate_kl_lambda_schedule(cfg: TrainConfig) -> None:
    check(0 <= cfg.kl_lambda_start <= 1, "kl_lambda_start", "in [0, 1]", cfg.kl_lambda_start)
    check(cfg.kl_lambda_every >= 1, "kl_lambda_every", ">= 1", cfg.kl_lambda_every)
    check(cfg.kl_lambda_hold_steps >= 0, "kl_lambda_hold_steps", ">= 0", cfg.kl_lambda_hold_steps)
    check(cfg.kl_lambda_decrement >= 0, "kl_lambda_decrement", ">= 0", cfg.kl_lambda_decrement)
    check(cfg.eval_every_rollouts >= 0, "eval_every_rollouts", ">= 0", cfg.eval_every_rollouts)


def _transport_names() -> tuple[str, ...]:
    from remix_rft.engines.transport import TRANSPORTS

    return tuple(sorted(TRANSPORTS))


def _engine_names() -> tuple[str, ...]:
    from remix_rft.engines.catalog import engine_names

    return engine_names()
