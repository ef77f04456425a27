"""The fields of a run's configuration: :class:`TrainConfig` (task keys in :class:`TaskConfig`),
their defaults and help comments, and the settings derived from them.

Loading (YAML + ``key=value`` overrides) lives in :mod:`remix_rft.trainer.config`, the
checks of every value in :mod:`remix_rft.trainer.config_checks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from remix_rft.algorithm.advantages import ADVANTAGE_ESTIMATORS
from remix_rft.algorithm.kl import (
    PAPER_KL_LAMBDA_SCHEDULE,
    StepDownSchedule,
)

T = TypeVar("T")


def inherit(value: T | None, default: T) -> T:
    """A setting that may be unset (None): then the value it inherits."""
    return default if value is None else value


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for non-negative integers: minibatches of ``b`` that hold ``a`` samples."""
    return -(-a // b)


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
    # TRL-protocol reward functions (issue #35), fn(prompts, completions, completion_ids,
    # **columns) -> list[float | None], as module:function or file.py:function; their weighted
    # sum (None: skipped) is the reward. Instead of reward_fn. answer_key "" then passes every
    # other column of a row to them unchanged (a dataset without answers).
    reward_funcs: list[str] = field(default_factory=list)
    reward_weights: list[float] = field(default_factory=list)  # empty: 1.0 each
    # held-out evaluation (docs/your-own-task.md): a response counts as correct when its
    # reward >= accuracy_threshold (eval/accuracy: the share of such; eval/reward_mean beside)
    accuracy_threshold: float = 1.0
    # a math/custom task without eval_path holds out this share of train_path (seeded by
    # task.seed, at most holdout_max rows) for evaluation; 0: no evaluation (warned)
    holdout_fraction: float = 0.1
    holdout_max: int = 500


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
    warmup_updates: int = 0  # optimizer updates of linear lr warmup (formerly warmup_steps)
    lr_schedule: str = "constant"
    minibatch_size: int = 128  # samples per optimizer update
    micro_batch_size: int = 0  # samples per forward pass (0: the whole minibatch)
    # Per-device budget of padded tokens (rows x longest row) per forward pass: rows are
    # sorted by length and packed up to it (0: micro_batch_size rows at a time).
    micro_batch_tokens: int = 0
    # Response tokens per chunk of the output head when computing log-probs and entropy
    # (0: full logits from the model's forward, [B, T, V] at once).
    logprob_chunk_tokens: int = 1024
    # Per-device budget of padded tokens per forward pass of the no-grad passes (log π_k,
    # log π_base, critic values), as verl's log_prob_max_token_len_per_gpu: they keep no
    # activations, so they can take more than micro_batch_tokens (0: the update's micro-batches)
    logprob_micro_batch_tokens: int = 0
    epochs: int = 1  # passes over each iteration's training batch
    # updates in a row skipped for a non-finite loss or gradient that stop the run (0: never)
    max_nonfinite_updates: int = 3

    # losses
    advantage_estimator: str = ""  # grpo, rloo or gae; empty: grpo for *-grpo, gae for *-ppo
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    loss_agg: str = "token-mean"
    norm_length: float | None = None  # Dr. GRPO constant length (null: max_new_tokens)
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
    # dual clip for A < 0 in mix-ppg and gspo (cispo's clipped weight never reaches it);
    # verl's clip_ratio_c, e.g. 3.0; 0: off
    clip_ratio_c: float = 0.0
    # trainer/engine mismatch correction of fresh data generated by π_k (algorithm/
    # correction.py): tis = truncated IS weight min(π_trainer/π_engine, threshold), mis =
    # drop tokens above it; per token or per sequence. Needs behavior_logprobs=trainer (with
    # engine, Mix-PPG's ratio π_θ/μ_engine already corrects the gap).
    rollout_correction: str = "none"
    rollout_correction_level: str = "token"
    rollout_correction_threshold: float = 2.0
    # mis only: also drop the tokens whose ratio is under this (null: no lower bound);
    # 0.5 with threshold 2.0 is verl's IcePop (reject ratios outside [0.5, 2])
    rollout_correction_min: float | None = None
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
    # which past samples are drawn (data/replay.py): uniform (ReMix), informative (groups with
    # a non-zero advantage at generation only), fill-uniform (they also replace the fresh
    # batch's uniform groups, POPO's swap); docs/design.md §2.11
    replay_strategy: str = "uniform"
    clip_centre: str = "current"  # "current": π_k/μ (GePPO); "one": clip around 1
    offpolicy_clip_eps_low: float | None = None  # ε for reused samples (null: as for fresh)
    offpolicy_clip_eps_high: float | None = None
    reincarnation_step: int = 0  # iteration of policy reincarnation (0: never)
    reincarnation_patience: int = 0  # or: after this many evaluations without improvement
    # After reincarnation the run is on-policy GRPO/PPO from the new base (docs/design.md §2.12), with
    # the on-policy method's own settings: null (unset) keeps the value above.
    post_reincarnation_prompts_per_step: int | None = None
    post_reincarnation_group_size: int | None = None
    post_reincarnation_minibatch_size: int | None = None
    post_reincarnation_epochs: int | None = None
    post_reincarnation_lr: float | None = None  # peak lr; the schedule keeps counting
    post_reincarnation_kl_coef: float | None = None  # β towards the new base (and precedent)

    # evaluation, logging, checkpoints
    eval_every: int = 10
    # evaluate when `rollouts` crosses each multiple of this (0: every eval_every iterations
    # instead), so runs with different batch sizes share one x-axis grid
    eval_every_rollouts: int = 0
    eval_problems: int = 200
    eval_batch_size: int = 200
    eval_max_new_tokens: int | None = None  # null: max_new_tokens
    # 0: greedy pass@1; > 0: sampled, scored as avg@eval_samples (R1 models loop greedily)
    eval_temperature: float = 0.0
    eval_top_p: float = 1.0
    eval_samples: int = 1  # responses per held-out problem (avg@k)
    # torch CPU threads while evaluating (0: threads). An async run can lend evaluation the
    # producer's threads: the producer is idle once it is max_staleness versions ahead
    eval_threads: int = 0
    save_every: int = 10
    keep_checkpoints: int = 2
    # also keep the checkpoint of the best eval accuracy; a new best is then checkpointed
    # even between save_every steps
    keep_best_checkpoint: bool = False
    # signals that mean "finish this update, checkpoint, exit 75" (a scheduler's preemption notice);
    # SIGINT (Ctrl-C) always does too (a third one aborts the save)
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    reflection_words: list[str] = field(default_factory=lambda: list(DEFAULT_REFLECTION_WORDS))
    # samples.jsonl (and the trackers): the first log_samples fresh responses of every
    # iteration, and every response to the first log_eval_problems held-out problems on
    # evaluation steps (0: none)
    log_samples: int = 4
    log_eval_problems: int = 4
    # warn on stderr when more than truncation_warn_fraction of an iteration's responses are
    # cut at max_new_tokens for truncation_warn_steps iterations in a row (0: never)
    truncation_warn_fraction: float = 0.5
    truncation_warn_steps: int = 3
    # experiment trackers besides metrics.jsonl: tensorboard, wandb (optional extras)
    report_to: list[str] = field(default_factory=list)
    wandb_project: str = "remix-rft"

    # engines
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)
    device: str = "auto"  # auto (CUDA when available), cpu or cuda; under torchrun: the rank's GPU
    # torchrun: how long a rank waits in a collective (rank 0's checkpoint write, a long
    # evaluation) before the run fails; passed to init_process_group (NCCL's own is 10)
    dist_timeout_minutes: float = 60.0
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
    # the async producer's device: "" = the learner's; cpu, cuda:N (generation on its own
    # GPU of a one-process run; weights cross through the transport)
    rollout_device: str = ""
    weight_transport: str = "shared-memory"  # learner -> producer weights (engines/transport.py)
    # weights published (vLLM push, async transport, checkpoint's HF copy) are gathered and
    # handed over at most this many MB at a time, in the engine's dtype (weight_stream.py)
    weight_sync_bucket_mb: float = 1024.0
    vllm_gpu_memory_utilization: float = 0.3  # share of GPU memory (of host RAM on CPU)
    vllm_max_model_len: int = 0  # 0: longest prompt budget + max_new_tokens, from the task
    vllm_sleep: bool = True  # CUDA: free vLLM's memory during the update (sleep mode)
    vllm_enforce_eager: bool = False  # CUDA: no CUDA graphs (always eager on CPU)
    # CUDA sleep mode: 2 discards vLLM's weights and KV cache while the trainer updates
    # (the push overwrites the weights anyway); 1 offloads the weights to pinned host memory
    vllm_sleep_level: int = 2
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
    def needs_reference(self) -> bool:
        """Whether anything uses π_base: the loss's KL(π_θ ‖ π_base) term in either phase
        (a coefficient and some λ > 0), or the ``kl/base`` diagnostic."""
        coef = max(self.kl_coef, self.post_reincarnation_kl_coef or 0.0)
        return (coef > 0 and self.kl_lambda_max > 0) or self.log_kl_base

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
            prompts_per_step=inherit(
                self.post_reincarnation_prompts_per_step, self.prompts_per_step
            ),
            group_size=inherit(self.post_reincarnation_group_size, self.group_size),
            minibatch_size=inherit(self.post_reincarnation_minibatch_size, self.minibatch_size),
            epochs=inherit(self.post_reincarnation_epochs, self.epochs),
            offpolicy_batch_size=0,  # reincarnation ends reuse
            lr=inherit(self.post_reincarnation_lr, self.lr),
            kl_coef=inherit(self.post_reincarnation_kl_coef, self.kl_coef),
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
        per_epoch = ceil_div(batch, self.minibatch_size)
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
                per_epoch = ceil_div(post.fresh_batch_size, post.minibatch_size)
                total += per_epoch * post.epochs
            else:  # past iterations stored so far: step − 1, at most ν − 1
                stored = (min(step, self.window) - 1) * fresh
                total += self.updates_per_step(fresh + min(offpolicy, stored))
        return total

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # TRL's GRPOConfig and back (issue #35), by the README's key table: config_trl.py
    @classmethod
    def from_trl(cls, trl_config: Any, base: TrainConfig | None = None) -> TrainConfig:
        """This config from a TRL ``GRPOConfig`` (unmapped keys named in one warning)."""
        from remix_rft.trainer.config_trl import from_trl

        return from_trl(trl_config, base)

    def to_trl(self) -> Any:
        """A TRL ``GRPOConfig`` with the keys that have a counterpart (needs TRL)."""
        from remix_rft.trainer.config_trl import to_trl

        return to_trl(self)


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
        return ceil_div(batch_size, self.minibatch_size) * self.epochs
