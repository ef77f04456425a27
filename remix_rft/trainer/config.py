"""Typed run configuration: YAML file + ``key=value`` overrides, validated with clear errors.

Every key lives in :class:`TrainConfig` (task keys under ``task.``). An unknown key,
a value of the wrong type or an out-of-range value raises :class:`ConfigError`,
whose message names the key and what is allowed; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remix_rft.algorithm.advantages import ADVANTAGE_ESTIMATORS
from remix_rft.algorithm.correction import ROLLOUT_CORRECTION_LEVELS, ROLLOUT_CORRECTIONS
from remix_rft.algorithm.kl import (
    KL_LAMBDA_SCHEDULES,
    PAPER_KL_LAMBDA_SCHEDULE,
    StepDownSchedule,
)
from remix_rft.algorithm.policy_losses import POLICY_LOSSES
from remix_rft.data.builtin import BUILTIN_DATASETS, BUILTIN_PREFIX, is_builtin
from remix_rft.reward_pool import RewardError, is_file_spec, parse_reward_spec
from remix_rft.trainer.config_sections import flat_key, flatten, section_table
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
RENAMED_KEYS = {"generation_backend": "rollout_engine"}  # old name -> new name
DEFAULT_REFLECTION_WORDS = (
    "wait",
    "recheck",
    "re-check",
    "alternatively",
    "double-check",
    "double check",
    "verify",
    "let me check",
    "retry",
    "hmm",
)


class ConfigError(ValueError):
    """An invalid configuration; the message names the key and what is allowed."""


@dataclass
class TaskConfig:
    """What to train on: the embedded arithmetic task or a math dataset."""

    name: str = "arithmetic"
    # arithmetic (embedded) task
    seed: int = 0
    num_products: int = 2
    min_operand: int = 1
    max_operand: int = 9
    outer_multiply: bool = True
    n_train: int = 20000
    n_eval: int = 500
    # math datasets (JSON, JSONL, parquet or a Hugging Face dataset name)
    train_path: str = ""
    eval_path: str = ""
    problem_key: str = "problem"
    answer_key: str = "answer"
    instruction: str = ""  # appended to every prompt; empty for the embedded task
    skip_bad_rows: bool = False
    # reward: the task's own verifier, or a user's function (required for name=custom):
    # path/to/file.py:function or module:function, called as fn(response, problem_dict)
    reward_fn: str = ""
    # grading processes: -1 auto (0 for the embedded task's integer answers, else
    # min(4, CPUs)); 0 grades in the trainer process (debugging)
    reward_workers: int = -1
    reward_timeout_s: float = 5.0  # per response; past it the response scores 0


@dataclass
class TrainConfig:
    """A training run. Defaults are on-policy GRPO on the embedded task."""

    name: str = "run"
    out_dir: str = ""  # default: runs/<name>
    seed: int = 0
    algorithm: str = "grpo"
    model: str = "embedded"  # "embedded" or a Hugging Face causal LM path / hub id
    critic_model: str = ""  # PPO critic initialisation; default: the policy model
    task: TaskConfig = field(default_factory=TaskConfig)

    # rollout
    steps: int = 200  # iterations (fresh rollout collections)
    prompts_per_step: int = 16
    group_size: int = 8  # responses per prompt (GRPO needs >= 2)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0

    # optimisation
    lr: float = 3e-5
    critic_lr: float = 1e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    warmup_steps: int = 0  # optimizer updates of linear warmup
    lr_schedule: str = "constant"
    minibatch_size: int = 128  # samples per optimizer update
    micro_batch_size: int = 0  # samples per forward pass (0: the whole minibatch)
    # Per-device budget of padded tokens (rows x longest row) per forward pass: rows are
    # sorted by length and packed up to it (0: micro_batch_size rows at a time).
    micro_batch_tokens: int = 0
    # Response tokens per chunk of the output head when computing log-probs and entropy
    # (0: full logits from the model's forward, [B, T, V] at once).
    logprob_chunk_tokens: int = 1024
    epochs: int = 1  # passes over each iteration's training batch
    # updates in a row skipped for a non-finite loss or gradient that stop the run (0: never)
    max_nonfinite_updates: int = 3

    # losses
    advantage_estimator: str = ""  # grpo, rloo or gae; empty: grpo for *-grpo, gae for *-ppo
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    loss_agg: str = "token-mean"
    norm_length: float = 0.0  # Dr. GRPO constant length (0: max_new_tokens)
    scale_adv_by_std: bool = True
    kl_coef: float = 0.0  # β
    kl_estimator: str = "k3"
    kl_lambda: float = 1.0  # KL-Convex λ: 1 = base KL only, 0 = precedent KL only
    # λ over the run (algorithm/kl.py StepDownSchedule): constant (kl_lambda throughout),
    # step-down (kl_lambda_start held kl_lambda_hold_steps iterations, then lowered by
    # kl_lambda_decrement every kl_lambda_every iterations down to kl_lambda), or paper
    # (the ReMix paper's: 1 up to iteration 50, then -0.1 every 10 down to 0.5)
    kl_lambda_schedule: str = "constant"
    kl_lambda_start: float = 1.0
    kl_lambda_hold_steps: int = 50
    kl_lambda_every: int = 10
    kl_lambda_decrement: float = 0.1
    entropy_coef: float = 0.0  # entropy bonus: loss − entropy_coef · H(π_θ) on response tokens
    # policy loss by name (algorithm/policy_losses.py): mix-ppg (PPO/GRPO's clip, Mix-PPG's
    # clip centre π_k/μ for reused data), gspo (sequence-level ratio), cispo (clipped IS
    # weight, every token's gradient kept)
    policy_loss: str = "mix-ppg"
    clip_ratio_c: float = 0.0  # dual clip for A < 0 (verl's clip_ratio_c, e.g. 3.0; 0: off)
    # trainer/engine mismatch correction of fresh data generated by π_k (algorithm/
    # correction.py): tis = truncated IS weight min(π_trainer/π_engine, threshold), mis =
    # drop tokens above it; per token or per sequence. Needs behavior_logprobs=trainer (with
    # engine, Mix-PPG's ratio π_θ/μ_engine already corrects the gap).
    rollout_correction: str = "none"
    rollout_correction_level: str = "token"
    rollout_correction_threshold: float = 2.0
    # DAPO's dynamic sampling: drop prompt groups whose rewards are all equal (no GRPO
    # signal) and generate further prompts, up to max_generation_rounds rounds, to refill
    # the batch; every response generated counts in `rollouts`, dropped or not
    dynamic_sampling: bool = False
    max_generation_rounds: int = 3
    # overlong handling (DAPO): truncated responses out of the loss; a soft length penalty
    # ramping to -overlong_penalty over the last overlong_buffer_tokens (0: off)
    mask_truncated: bool = False
    overlong_buffer_tokens: int = 0
    overlong_penalty: float = 1.0
    # log kl/base on eval steps even when the loss does not use π_base (β = 0 or λ = 0);
    # costs a reference copy of the model and its forward pass
    log_kl_base: bool = False

    # PPO critic
    gamma: float = 1.0
    gae_lambda: float = 1.0
    value_clip: float = 0.2
    whiten_advantages: bool = True
    critic_warmup_steps: int = 0  # iterations that train only the critic

    # ReMix (used by remix-grpo / remix-ppo)
    window: int = 1  # ν: iterations of data kept, the fresh one included
    offpolicy_fraction: float = 0.0  # share of the training batch drawn from past iterations
    clip_centre: str = "current"  # "current": π_k/μ (GePPO); "one": clip around 1
    offpolicy_clip_eps_low: float = -1.0  # ε for reused samples (-1: same as fresh)
    offpolicy_clip_eps_high: float = -1.0
    reincarnation_step: int = 0  # iteration of policy reincarnation (0: never)
    reincarnation_patience: int = 0  # or: after this many evaluations without improvement
    # After reincarnation the run is on-policy GRPO/PPO from the new base (docs/design.md §2.12), with
    # the on-policy method's own settings: 0 (-1 for the KL coefficient) keeps the value above.
    post_reincarnation_prompts_per_step: int = 0
    post_reincarnation_group_size: int = 0
    post_reincarnation_minibatch_size: int = 0
    post_reincarnation_epochs: int = 0
    post_reincarnation_lr: float = 0.0  # peak lr; the schedule keeps counting across the run
    post_reincarnation_kl_coef: float = -1.0  # β towards the new base (and the precedent)

    # evaluation, logging, checkpoints
    eval_every: int = 10
    # evaluate when `rollouts` crosses each multiple of this (0: every eval_every iterations
    # instead), so runs with different batch sizes share one x-axis grid
    eval_every_rollouts: int = 0
    eval_problems: int = 200
    eval_batch_size: int = 200
    eval_max_new_tokens: int = 0  # 0: max_new_tokens
    # 0: greedy pass@1; > 0: sampled, scored as avg@eval_samples (R1 models loop greedily)
    eval_temperature: float = 0.0
    eval_top_p: float = 1.0
    eval_samples: int = 1  # responses per held-out problem (avg@k)
    save_every: int = 10
    keep_checkpoints: int = 2
    # also keep the checkpoint of the best eval accuracy; a new best is then checkpointed
    # even between save_every steps
    keep_best_checkpoint: bool = False
    # signals that mean "finish this update, checkpoint, exit 75" (a scheduler's preemption notice)
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    reflection_words: list[str] = field(default_factory=lambda: list(DEFAULT_REFLECTION_WORDS))
    # experiment trackers besides metrics.jsonl: tensorboard, wandb (optional extras)
    report_to: list[str] = field(default_factory=list)
    wandb_project: str = "remix-rft"

    # engines
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)
    device: str = "auto"  # auto (CUDA when available), cpu or cuda; under torchrun: the rank's GPU
    # rollout engine (engines/rollout.py): hf = HF generate on the training module;
    # hf-static = static KV cache (+ torch.compile on GPU); vllm = vLLM with weight pushes
    rollout_engine: str = "hf"
    # log μ of fresh samples: "trainer" = the trainer's forward pass of π_k (fresh data
    # on-policy by construction); "engine" = the engine's sampling log-probs, so Mix-PPG's
    # ratio π_θ/μ also corrects the engine-trainer mismatch (bf16, kernels)
    behavior_logprobs: str = "trainer"
    # asynchronous rollouts (trainer/rollouts.py): "sync" generates inline after each
    # update; "async" runs the producer in its own process, overlapping generation with
    # training, at most max_staleness policy versions behind the learner (η; 0 = the
    # synchronous schedule in two processes). Stale samples are corrected by Mix-PPG's
    # ratio against the generating engine's μ and clip centre π_k/μ.
    rollout_mode: str = "sync"
    max_staleness: int = 1
    rollout_threads: int = 1  # torch CPU threads of the async producer (0: torch's default)
    weight_transport: str = "shared-memory"  # learner -> producer weights (engines/transport.py)
    vllm_gpu_memory_utilization: float = 0.3  # share of GPU memory (of host RAM on CPU)
    vllm_max_model_len: int = 0  # 0: longest prompt budget + max_new_tokens, from the task
    vllm_sleep: bool = True  # CUDA: free vLLM's memory during the update (sleep mode)
    vllm_enforce_eager: bool = False  # CUDA: no CUDA graphs (always eager on CPU)
    # LoRA (peft; lora_rank 0: full finetuning). The reference is the base with the adapter off.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_target_modules: list[str] = field(default_factory=list)  # empty: all linear layers

    # ---- derived quantities -------------------------------------------------
    @property
    def is_remix(self) -> bool:
        return self.algorithm.startswith("remix-")

    @property
    def estimator(self) -> str:
        """The advantage estimator: ``advantage_estimator``, or the algorithm's own."""
        if self.advantage_estimator:
            return self.advantage_estimator
        return "grpo" if self.algorithm.endswith("grpo") else "gae"

    @property
    def uses_critic(self) -> bool:
        return ADVANTAGE_ESTIMATORS[self.estimator].uses_critic

    @property
    def uses_base_kl(self) -> bool:
        """The loss has a KL(π_θ ‖ π_base) term."""
        return self.kl_coef > 0 and self.kl_lambda_max > 0

    @property
    def needs_reference(self) -> bool:
        """Whether anything uses π_base: the loss, or the ``kl/base`` diagnostic."""
        post_kl = self.post_reincarnation_kl_coef > 0 and self.kl_lambda_max > 0
        return self.uses_base_kl or post_kl or self.log_kl_base

    def fresh_batch_size(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def reincarnates(self) -> bool:
        return self.is_remix and bool(self.reincarnation_step or self.reincarnation_patience)

    def phase(self, reincarnated: bool) -> PhaseSettings:
        """The settings of one phase of the run: before reincarnation (ReMix's reuse), or
        after it (on-policy, with the ``post_reincarnation_*`` values where they are set)."""
        before = PhaseSettings(
            prompts_per_step=self.prompts_per_step,
            group_size=self.group_size,
            minibatch_size=self.minibatch_size,
            epochs=self.epochs,
            offpolicy_batch_size=self.offpolicy_batch_size(),
            lr=self.lr,
            kl_coef=self.kl_coef,
        )
        if not reincarnated:
            return before
        return PhaseSettings(
            prompts_per_step=self.post_reincarnation_prompts_per_step or self.prompts_per_step,
            group_size=self.post_reincarnation_group_size or self.group_size,
            minibatch_size=self.post_reincarnation_minibatch_size or self.minibatch_size,
            epochs=self.post_reincarnation_epochs or self.epochs,
            offpolicy_batch_size=0,  # reincarnation ends reuse
            lr=self.post_reincarnation_lr or self.lr,
            kl_coef=self.kl_coef
            if self.post_reincarnation_kl_coef < 0
            else self.post_reincarnation_kl_coef,
        )

    @property
    def generation_rounds(self) -> int:
        """Generation rounds per iteration: more than one only with dynamic sampling."""
        return self.max_generation_rounds if self.dynamic_sampling else 1

    def is_eval_step(self, step: int, rollouts: tuple[int, int] = (0, 0)) -> bool:
        """Iterations that end with an evaluation (and log kl/base when asked): every
        ``eval_every``, or those whose ``rollouts`` (before, after the iteration) crossed a
        multiple of ``eval_every_rollouts``; and the last."""
        if step == self.steps:
            return True
        if self.eval_every_rollouts:
            before, after = rollouts
            return after // self.eval_every_rollouts > before // self.eval_every_rollouts
        return step % self.eval_every == 0

    def kl_lambda_schedule_fn(self) -> StepDownSchedule | None:
        """The λ schedule, or None for a constant ``kl_lambda``."""
        if self.kl_lambda_schedule == "paper":
            return PAPER_KL_LAMBDA_SCHEDULE
        if self.kl_lambda_schedule == "step-down":
            return StepDownSchedule(
                start=self.kl_lambda_start, hold=self.kl_lambda_hold_steps,
                every=self.kl_lambda_every, decrement=self.kl_lambda_decrement,
                floor=self.kl_lambda,
            )  # fmt: skip
        return None

    def kl_lambda_at(self, step: int) -> float:
        """KL-Convex λ at iteration ``step``."""
        schedule = self.kl_lambda_schedule_fn()
        return self.kl_lambda if schedule is None else schedule(step)

    @property
    def kl_lambda_max(self) -> float:
        """The largest λ of the run (whether π_base is ever needed)."""
        schedule = self.kl_lambda_schedule_fn()
        return self.kl_lambda if schedule is None else max(schedule.start, schedule.floor)

    def rollouts_for_steps(self, steps: int) -> int:
        """Responses sampled in ``steps`` iterations, the batch switching at a fixed
        reincarnation step (with patience alone the switch is not known in advance)."""
        before, after = self.phase(False), self.phase(True)
        switch = self.reincarnation_step if self.is_remix and self.reincarnation_step else steps
        pre = min(steps, switch)
        return pre * before.fresh_batch_size + (steps - pre) * after.fresh_batch_size

    def steps_for_rollouts(self, budget: int) -> int:
        """The most iterations whose rollouts fit in ``budget`` (at least one)."""
        steps = 1
        while self.rollouts_for_steps(steps + 1) <= budget:
            steps += 1
        return steps

    def offpolicy_batch_size(self) -> int:
        """Past samples drawn per iteration so that they make ``offpolicy_fraction`` of the batch."""
        if not self.is_remix or self.window <= 1 or self.offpolicy_fraction <= 0:
            return 0
        f = self.offpolicy_fraction
        return round(self.fresh_batch_size() * f / (1.0 - f))

    def updates_per_step(self, batch_size: int | None = None, epochs: int | None = None) -> int:
        """Optimizer updates per iteration: the UTD ratio."""
        batch = (
            self.fresh_batch_size() + self.offpolicy_batch_size()
            if batch_size is None
            else batch_size
        )
        per_epoch = -(-batch // self.minibatch_size)
        return per_epoch * (self.epochs if epochs is None else epochs)

    def planned_updates(self, reincarnated_at: int = 0) -> int:
        """Policy updates the whole run takes, the length of the learning-rate schedule.

        The reused share of the batch grows over the first ν − 1 iterations as the
        buffer fills; after reincarnation (``reincarnation_step``, or ``reincarnated_at``
        once it happened) batches are fresh only; critic-warmup iterations take none.
        """
        fresh, offpolicy = self.fresh_batch_size(), self.offpolicy_batch_size()
        switch = reincarnated_at or self.reincarnation_step
        total = 0
        for step in range(1, self.steps + 1):
            if self.uses_critic and step <= self.critic_warmup_steps:
                continue
            if switch and step > switch:  # the on-policy phase's own batch and minibatch
                post = self.phase(reincarnated=True)
                per_epoch = -(-post.fresh_batch_size // post.minibatch_size)
                total += per_epoch * post.epochs
            else:  # past iterations stored so far: step − 1, at most ν − 1
                stored = (min(step, self.window) - 1) * fresh
                total += self.updates_per_step(fresh + min(offpolicy, stored))
        return total

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PhaseSettings:
    """What changes at policy reincarnation: the fresh batch, the updates, lr and β."""

    prompts_per_step: int
    group_size: int
    minibatch_size: int
    epochs: int
    offpolicy_batch_size: int  # past samples drawn per iteration
    lr: float  # peak learning rate of the policy's schedule
    kl_coef: float

    @property
    def fresh_batch_size(self) -> int:
        return self.prompts_per_step * self.group_size

    def updates(self, batch_size: int) -> int:
        """Optimizer updates of an iteration on ``batch_size`` samples: the UTD ratio."""
        return -(-batch_size // self.minibatch_size) * self.epochs


# ---- validation -----------------------------------------------------------------
def _check(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': must be {allowed}, got {value!r}")


def _one_of(cfg: Any, key: str, choices: tuple[str, ...], prefix: str = "") -> None:
    value = getattr(cfg, key)
    _check(value in choices, prefix + key, f"one of {', '.join(choices)}", value)


def validate(cfg: TrainConfig) -> TrainConfig:
    _one_of(cfg, "algorithm", ALGORITHMS)
    _one_of(cfg.task, "name", TASKS, "task.")
    _one_of(cfg, "kl_estimator", KL_KINDS)
    _one_of(cfg, "loss_agg", AGG_MODES)
    _one_of(cfg, "clip_centre", CLIP_CENTRE_MODES)
    _one_of(cfg, "lr_schedule", LR_SCHEDULES)
    _one_of(cfg, "dtype", DTYPES)
    _one_of(cfg, "device", DEVICES)
    _one_of(cfg, "rollout_engine", _engine_names())
    _one_of(cfg, "behavior_logprobs", BEHAVIOR_LOGPROBS)
    _one_of(cfg, "rollout_mode", ROLLOUT_MODES)
    _one_of(cfg, "policy_loss", tuple(sorted(POLICY_LOSSES)))
    _one_of(cfg, "rollout_correction", ROLLOUT_CORRECTIONS)
    _one_of(cfg, "rollout_correction_level", ROLLOUT_CORRECTION_LEVELS)
    _validate_practitioner_keys(cfg)
    _validate_kl_lambda_schedule(cfg)
    from remix_rft.trainer.preemption import validate_signal_names

    try:
        validate_signal_names(cfg.preempt_signals)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key 'preempt_signals': {err}") from None
    _one_of(cfg, "weight_transport", _transport_names())
    _check(cfg.eval_temperature >= 0, "eval_temperature", ">= 0 (0: greedy)", cfg.eval_temperature)
    _check(0 < cfg.eval_top_p <= 1, "eval_top_p", "in (0, 1]", cfg.eval_top_p)
    _check(
        0 < cfg.vllm_gpu_memory_utilization <= 1,
        "vllm_gpu_memory_utilization",
        "in (0, 1]",
        cfg.vllm_gpu_memory_utilization,
    )
    _check(
        cfg.advantage_estimator in ("", *ADVANTAGE_ESTIMATORS),
        "advantage_estimator",
        f"one of {', '.join(ADVANTAGE_ESTIMATORS)} (empty: from the algorithm)",
        cfg.advantage_estimator,
    )
    _check(cfg.lora_rank >= 0, "lora_rank", "an integer >= 0 (0: no LoRA)", cfg.lora_rank)
    _check(cfg.lora_alpha > 0, "lora_alpha", "> 0", cfg.lora_alpha)
    _check(
        isinstance(cfg.lora_target_modules, list)
        and all(isinstance(w, str) and w for w in cfg.lora_target_modules),
        "lora_target_modules",
        "a list of module names (e.g. q_proj,v_proj), empty for all linear layers",
        cfg.lora_target_modules,
    )
    positive_ints = (
        "steps", "prompts_per_step", "group_size", "max_new_tokens", "minibatch_size",
        "epochs", "eval_every", "eval_problems", "eval_batch_size", "save_every",
        "keep_checkpoints", "window", "eval_samples",
    )  # fmt: skip
    for key in positive_ints:
        _check(getattr(cfg, key) >= 1, key, "an integer >= 1", getattr(cfg, key))
    non_negative = (
        "micro_batch_size", "warmup_steps", "weight_decay", "kl_coef", "critic_warmup_steps",
        "reincarnation_step", "reincarnation_patience", "post_reincarnation_epochs",
        "post_reincarnation_prompts_per_step", "post_reincarnation_group_size",
        "post_reincarnation_minibatch_size", "post_reincarnation_lr",
        "eval_max_new_tokens", "norm_length", "threads", "max_grad_norm", "seed",
        "vllm_max_model_len", "micro_batch_tokens", "logprob_chunk_tokens", "entropy_coef",
        "max_nonfinite_updates", "max_staleness", "rollout_threads", "overlong_buffer_tokens",
        "overlong_penalty",
    )  # fmt: skip
    for key in non_negative:
        _check(getattr(cfg, key) >= 0, key, ">= 0", getattr(cfg, key))
    for key in ("lr", "critic_lr", "temperature", "clip_eps_low", "clip_eps_high", "value_clip"):
        _check(getattr(cfg, key) > 0, key, "> 0", getattr(cfg, key))
    for key in ("top_p", "gamma", "gae_lambda", "kl_lambda", "adam_beta1", "adam_beta2"):
        value = getattr(cfg, key)
        _check(0.0 <= value <= 1.0, key, "in [0, 1]", value)
    _check(cfg.top_p > 0, "top_p", "in (0, 1]", cfg.top_p)
    _check(
        0.0 <= cfg.offpolicy_fraction < 1.0,
        "offpolicy_fraction",
        "in [0, 1)",
        cfg.offpolicy_fraction,
    )
    _check(cfg.clip_eps_low < 1.0, "clip_eps_low", "< 1", cfg.clip_eps_low)
    for key in ("offpolicy_clip_eps_low", "offpolicy_clip_eps_high"):
        value = getattr(cfg, key)
        _check(value == -1.0 or value > 0, key, "> 0, or -1 for the fresh-data value", value)
    _check(
        cfg.post_reincarnation_kl_coef == -1.0 or cfg.post_reincarnation_kl_coef >= 0,
        "post_reincarnation_kl_coef",
        ">= 0, or -1 for the kl_coef value",
        cfg.post_reincarnation_kl_coef,
    )
    if ADVANTAGE_ESTIMATORS[cfg.estimator].needs_groups:
        for key in ("group_size", "post_reincarnation_group_size"):
            value = getattr(cfg, key)
            _check(
                value >= 2 or (key.startswith("post_") and value == 0),
                key,
                f">= 2 for the {cfg.estimator} advantage (it compares responses within a group)"
                + (", or 0 for the group_size value" if key.startswith("post_") else ""),
                value,
            )
    _validate_post_reincarnation(cfg)
    if not cfg.is_remix:
        _check(
            cfg.window == 1,
            "window",
            f"1 for the on-policy algorithm {cfg.algorithm} (use remix-*)",
            cfg.window,
        )
        _check(
            cfg.offpolicy_fraction == 0.0,
            "offpolicy_fraction",
            f"0 for the on-policy algorithm {cfg.algorithm} (use remix-*)",
            cfg.offpolicy_fraction,
        )
        _check(
            cfg.reincarnation_step == 0 and cfg.reincarnation_patience == 0,
            "reincarnation_step",
            f"0 for the on-policy algorithm {cfg.algorithm} (use remix-*)",
            cfg.reincarnation_step,
        )
    if cfg.micro_batch_size:
        smallest = min(cfg.minibatch_size, cfg.post_reincarnation_minibatch_size or math.inf)
        _check(
            cfg.micro_batch_size <= smallest,
            "micro_batch_size",
            f"<= minibatch_size and post_reincarnation_minibatch_size ({smallest})",
            cfg.micro_batch_size,
        )
    _validate_task(cfg.task)
    _check(
        all(t in TRACKERS for t in cfg.report_to) and len(set(cfg.report_to)) == len(cfg.report_to),
        "report_to",
        f"a list of distinct trackers from {', '.join(TRACKERS)} (empty: metrics.jsonl only)",
        cfg.report_to,
    )
    try:
        check_installed(cfg.report_to)
    except TrackerError as err:
        raise ConfigError(str(err)) from None
    _check(
        isinstance(cfg.reflection_words, list)
        and all(isinstance(w, str) for w in cfg.reflection_words),
        "reflection_words",
        "a list of strings",
        cfg.reflection_words,
    )
    return cfg


POST_REINCARNATION_KEYS = (
    "post_reincarnation_prompts_per_step", "post_reincarnation_group_size",
    "post_reincarnation_minibatch_size", "post_reincarnation_epochs", "post_reincarnation_lr",
)  # fmt: skip


def _validate_post_reincarnation(cfg: TrainConfig) -> None:
    """Post-reincarnation settings need a run that reincarnates. On-policy algorithms never
    do, so a value there is a mistake; a ReMix run with reincarnation switched off (an
    ablation of a shipped config) only ignores them."""
    set_keys = [k for k in POST_REINCARNATION_KEYS if getattr(cfg, k)]
    if cfg.post_reincarnation_kl_coef != -1.0:
        set_keys.append("post_reincarnation_kl_coef")
    if not set_keys:
        return
    _check(
        cfg.is_remix,
        set_keys[0],
        f"unset (0) for the on-policy algorithm {cfg.algorithm}, which never reincarnates "
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
    _check(
        cfg.clip_ratio_c == 0 or cfg.clip_ratio_c > 1, "clip_ratio_c", "> 1, or 0 for off",
        cfg.clip_ratio_c,
    )  # fmt: skip
    _check(
        cfg.rollout_correction_threshold > 0, "rollout_correction_threshold", "> 0",
        cfg.rollout_correction_threshold,
    )  # fmt: skip
    _check(
        cfg.rollout_correction == "none" or cfg.behavior_logprobs == "trainer",
        "rollout_correction",
        "none with behavior_logprobs=engine (Mix-PPG's ratio to the engine's μ already "
        "corrects the mismatch; a weight would count it twice)",
        cfg.rollout_correction,
    )
    _check(
        cfg.max_generation_rounds >= 1, "max_generation_rounds", "an integer >= 1",
        cfg.max_generation_rounds,
    )  # fmt: skip
    if cfg.dynamic_sampling:
        _check(
            ADVANTAGE_ESTIMATORS[cfg.estimator].needs_groups,
            "dynamic_sampling",
            f"false for the {cfg.estimator} advantage (it filters prompt groups without "
            "signal, which only group estimators have)",
            cfg.dynamic_sampling,
        )
    _check(
        cfg.overlong_buffer_tokens <= cfg.max_new_tokens,
        "overlong_buffer_tokens",
        f"<= max_new_tokens ({cfg.max_new_tokens})",
        cfg.overlong_buffer_tokens,
    )


def _validate_kl_lambda_schedule(cfg: TrainConfig) -> None:
    _one_of(cfg, "kl_lambda_schedule", KL_LAMBDA_SCHEDULES)
    _check(0 <= cfg.kl_lambda_start <= 1, "kl_lambda_start", "in [0, 1]", cfg.kl_lambda_start)
    _check(cfg.kl_lambda_every >= 1, "kl_lambda_every", ">= 1", cfg.kl_lambda_every)
    _check(cfg.kl_lambda_hold_steps >= 0, "kl_lambda_hold_steps", ">= 0", cfg.kl_lambda_hold_steps)
    _check(cfg.kl_lambda_decrement >= 0, "kl_lambda_decrement", ">= 0", cfg.kl_lambda_decrement)
    _check(cfg.eval_every_rollouts >= 0, "eval_every_rollouts", ">= 0", cfg.eval_every_rollouts)


def _transport_names() -> tuple[str, ...]:
    from remix_rft.engines.transport import TRANSPORTS

    return tuple(sorted(TRANSPORTS))


def _engine_names() -> tuple[str, ...]:
    from remix_rft.engines.catalog import engine_names

    return engine_names()


def _validate_task(task: TaskConfig) -> None:
    if task.name in ("math", "custom"):
        _check(
            bool(task.train_path),
            "task.train_path",
            f"a dataset file, builtin:NAME or Hugging Face dataset id for task.name={task.name}",
            task.train_path,
        )
    for key in ("train_path", "eval_path"):
        value = getattr(task, key)
        _check(
            not is_builtin(value) or value.removeprefix(BUILTIN_PREFIX) in BUILTIN_DATASETS,
            f"task.{key}",
            "a file, a Hugging Face dataset id, or one of "
            + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_DATASETS),
            value,
        )
    if task.name == "custom":
        _check(
            bool(task.reward_fn),
            "task.reward_fn",
            "path/to/file.py:function or module:function for task.name=custom",
            task.reward_fn,
        )
    if task.reward_fn:
        try:
            target, _ = parse_reward_spec(task.reward_fn)
        except RewardError as err:
            raise ConfigError(f"config key 'task.reward_fn': {err}") from None
        if is_file_spec(target):
            _check(
                Path(target).expanduser().is_file(), "task.reward_fn", "an existing file", target
            )
    _check(
        task.reward_workers >= -1,
        "task.reward_workers",
        "-1 (auto), 0 (in the trainer process) or a number of worker processes",
        task.reward_workers,
    )
    _check(task.reward_timeout_s > 0, "task.reward_timeout_s", "> 0 seconds", task.reward_timeout_s)


# ---- loading ----------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint} (allowed: {', '.join(sorted(known))})")


def _coerce_number(key: str, value: Any, cast: type, accepted: Any, allowed: str) -> Any:
    """A number from YAML, or parsed from a command-line string; bools are not numbers."""
    if isinstance(value, str):
        try:
            return cast(value)
        except ValueError:
            pass
    _check(isinstance(value, accepted) and not isinstance(value, bool), key, allowed, value)
    return cast(value)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or explain why not."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
        origin = typing.get_origin(typ)
    if origin is list:
        if isinstance(value, str) and value.strip().startswith("["):  # report_to=[a, b]
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise ConfigError(f"config key '{key}': {value!r} is not a list: {err}") from None
        elif isinstance(value, str):
            value = [w.strip() for w in value.split(",") if w.strip()]
        _check(isinstance(value, list), key, "a list", value)
        return [str(v) for v in value]
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        _check(isinstance(value, bool), key, "true or false", value)
        return value
    if typ is int:
        return _coerce_number(key, value, int, int, "an integer")
    if typ is float:
        return _coerce_number(key, value, float, int | float, "a number")
    if typ is str:
        _check(
            isinstance(value, str | int | float) and not isinstance(value, bool),
            key,
            "a string",
            value,
        )
        return str(value) if value is not None else ""
    return value


def _apply(target: Any, key: str, value: Any, prefix: str = "") -> None:
    if not prefix and key in RENAMED_KEYS:
        log.warning("config key '%s' is now '%s'", key, RENAMED_KEYS[key])
        key = RENAMED_KEYS[key]
    types_ = _field_types(type(target))
    head, _, rest = key.partition(".")
    if head not in types_:
        raise _unknown_key(prefix + key, [prefix + k for k in types_])
    typ = types_[head]
    if dataclasses.is_dataclass(typ):
        sub = getattr(target, head)
        if rest:
            _apply(sub, rest, value, prefix + head + ".")
            return
        _check(isinstance(value, dict), prefix + head, "a mapping of keys", value)
        for k, v in value.items():
            _apply(sub, str(k), v, prefix + head + ".")
        return
    if rest:
        raise _unknown_key(prefix + key, [prefix + k for k in types_])
    setattr(target, head, _coerce(prefix + head, value, typ))


def parse_overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A file path, or the name of a config shipped with the package (``tiny-grpo``)."""
    path = Path(path)
    if path.is_file():
        return path
    yaml_name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = PACKAGED_CONFIGS / yaml_name  # "r1-distill-1.5b-grpo": ".5b-grpo" is no suffix
    if packaged.is_file():
        return packaged
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file {path} does not exist (shipped configs: {shipped})")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = resolve_config_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, got {type(data).__name__}"
        )
    return data


def build_config(data: dict[str, Any], overrides: dict[str, str] | None = None) -> TrainConfig:
    cfg = TrainConfig()
    table = section_table(TrainConfig)  # the sectioned spelling (rollout.mode, ...) too
    for key, value in flatten(data, TrainConfig, ConfigError).items():
        _apply(cfg, str(key), value)
    for key, value in (overrides or {}).items():
        _apply(cfg, flat_key(key, table, ConfigError), value)
    return validate(cfg)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or start from defaults) and apply ``key=value`` overrides."""
    data = read_yaml(path) if path else {}
    return build_config(data, parse_overrides(overrides or []))


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
