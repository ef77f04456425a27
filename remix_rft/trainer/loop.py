"""The training loop of DESIGN §2 — one iteration, top to bottom, for GRPO, PPO and ReMix.

    generate (π_k) → score → advantages → mixed batch (fresh + replay) →
    log π_k, log π_base, values on the whole batch → U optimizer updates →
    (evaluate, checkpoint, reincarnate)

On-policy GRPO/PPO are the special case window = 1 (no replay).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from remix_rft.algorithm import (
    advantage_estimator,
    kl_convex,
    kl_estimate,
    mix_ppg_policy_loss,
    value_loss,
)
from remix_rft.algorithm.aggregation import aggregate, aggregation_count
from remix_rft.data.batch import MicroBatching, TrainBatch, collate, padding_counts, row_lengths
from remix_rft.data.buffer import ReplayBuffer, Sample
from remix_rft.data.prompts import format_prompt
from remix_rft.data.sampler import PromptSampler
from remix_rft.data.tasks import Problem, Task
from remix_rft.engines import distributed, factory
from remix_rft.engines.catalog import build_engine
from remix_rft.engines.generation import pad_token_id
from remix_rft.engines.models import resolve_model_path
from remix_rft.engines.policy import (
    ValueModel,
    batched_no_grad,
    copy_weights,
    load_tokenizer,
    response_logprobs,
    response_stats,
    response_values,
)
from remix_rft.engines.rollout import EngineOptions, Generation, RolloutEngine, SamplingSettings
from remix_rft.trainer import checkpoint as ckpt
from remix_rft.trainer import ranks
from remix_rft.trainer.config import PhaseSettings, TrainConfig, dump_config
from remix_rft.trainer.io import atomic_write_json, atomic_write_text
from remix_rft.trainer.metrics import MetricsLog, group_signal, reflection_rate
from remix_rft.trainer.tasks import build_task, score_responses
from remix_rft.trainer.trackers import open_trackers

log = logging.getLogger(__name__)

StepCallback = Callable[[dict[str, Any]], None]


class NonFiniteTrainingError(RuntimeError):
    """``max_nonfinite_updates`` optimizer updates in a row had a non-finite loss or gradient."""


@dataclass
class Counters:
    """Everything about progress that a resumed run must continue from."""

    step: int = 0  # completed iterations
    rollouts: int = 0  # responses sampled for training, cumulative
    tokens: int = 0  # response tokens generated for training, cumulative
    updates: int = 0  # optimizer updates, cumulative
    wall_time_s: float = 0.0  # across resumes
    reincarnated_at: int = 0  # iteration of reincarnation (0: not yet)
    base_eval_accuracy: float | None = None
    last_eval_accuracy: float | None = None
    best_eval_accuracy: float = -1.0
    evals_since_best: int = 0
    skipped_updates: int = 0  # optimizer updates skipped for a non-finite loss or gradient


@dataclass
class StepStats:
    """Running sums over one iteration's updates, reduced to metrics at the end."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    maxima: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, total: float, count: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + total
        self.counts[key] = self.counts.get(key, 0.0) + count

    def max(self, key: str, value: float) -> None:
        self.maxima[key] = max(self.maxima.get(key, -math.inf), value)

    def means(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k] > 0}
        out.update(self.maxima)
        return out


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.task: Task = build_task(cfg.task)
        self.train_problems = list(self.task.train_problems())
        self.eval_problems = list(self.task.eval_problems())[: cfg.eval_problems]
        self.tokenizer = load_tokenizer(cfg.model)
        self.pad_id = pad_token_id(self.tokenizer)
        self.prompt_cache: dict[str, str] = {}
        # One process unless launched by torchrun (engines/distributed.py: FSDP2, DCP).
        self.dist = distributed.setup(cfg.device)
        ranks.check_config(cfg, self.dist.world_size)
        self.policy, self.reference = factory.build_models(cfg, self.dist)
        self.optimizer = self._adamw(self.policy.parameters(), cfg.lr)
        self.schedule_total = cfg.planned_updates()  # recounted at reincarnation and on resume
        self.scheduler = self._schedule(self.optimizer)
        self.nonfinite_streak = 0  # skipped updates in a row; cfg.max_nonfinite_updates stops
        self.critic: ValueModel | None = None
        if cfg.uses_critic:
            self.critic = factory.build_critic(cfg, self.dist)
            self.critic_optimizer = self._adamw(self.critic.parameters(), cfg.critic_lr)
        self.engine: RolloutEngine = build_engine(
            cfg.rollout_engine,
            policy=self.policy,
            tokenizer=self.tokenizer,
            options=self.engine_options(),
            env=self.dist,
        )
        self.engine_stale = True  # a copy-holding engine loaded the model file, not ours
        self.buffer = ReplayBuffer(cfg.window, seed=cfg.seed + 1 + 7919 * self.dist.rank)
        self.sampler = PromptSampler(len(self.train_problems), cfg.seed)
        self.shuffle_rng = torch.Generator().manual_seed(cfg.seed + 2)
        self.counters = Counters()
        trackers = open_trackers(cfg.report_to, run_dir, cfg.name, cfg.to_dict())
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", trackers)
        if self.dist.enabled:  # ranks sample different responses; only rank 0 writes
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
            if not self.dist.is_main:
                self.metrics = ranks.NullMetrics()  # type: ignore[assignment]

    # ---- setup ---------------------------------------------------------------
    def _adamw(self, params: Any, lr: float) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.AdamW(
            params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )

    def _schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Warmup, then decay over the updates the run really takes (``schedule_total``), so
        the last update of the run sees the end of the schedule."""
        cfg = self.cfg

        def factor(update: int) -> float:
            total = max(self.schedule_total, 1)
            if cfg.warmup_steps and update < cfg.warmup_steps:
                return (update + 1) / cfg.warmup_steps
            progress = min(1.0, (update - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1))
            if cfg.lr_schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            if cfg.lr_schedule == "linear":
                return 1.0 - progress
            return 1.0

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def engine_options(self) -> EngineOptions:
        cfg = self.cfg
        max_len = cfg.vllm_max_model_len
        if cfg.rollout_engine == "vllm" and not max_len:  # size vLLM's KV cache to the task
            longest_prompt = max(
                len(self.tokenizer(self.prompt_text(p), add_special_tokens=False)["input_ids"])
                for p in self.train_problems + self.eval_problems
            )
            max_len = longest_prompt + max(cfg.max_new_tokens, cfg.eval_max_new_tokens)
        return EngineOptions(
            model_path=resolve_model_path(cfg.model),
            dtype=cfg.dtype,
            seed=cfg.seed + 7919 * self.dist.rank,
            max_model_len=max_len,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            sleep_between_rollouts=cfg.vllm_sleep,
            enforce_eager=cfg.vllm_enforce_eager,
            batch_size=0,
        )

    @contextmanager
    def ready_engine(self) -> Iterator[RolloutEngine]:
        """The engine awake, holding the weights an update may have changed since it last
        generated; it sleeps again (GPU) when the block ends, so a block should hold all
        the generation of one phase (evaluation's chunks too), not one call each."""
        self.policy.eval()
        with self.engine.awake():
            if self.engine_stale:
                self.engine.sync_weights(self.policy)
                self.engine_stale = False
            yield self.engine

    def rollout(self, prompts: list[str], settings: SamplingSettings) -> Generation:
        with self.ready_engine() as engine:
            return engine.generate(prompts, settings)

    # ---- phase settings --------------------------------------------------------
    @property
    def reincarnated(self) -> bool:
        return self.counters.reincarnated_at > 0

    def phase(self) -> PhaseSettings:
        """Reuse before reincarnation; on-policy with the ``post_reincarnation_*`` settings
        (the on-policy method's fresh batch, updates, lr and β) after it."""
        return self.cfg.phase(self.reincarnated)

    def offpolicy_batch_size(self) -> int:
        return self.phase().offpolicy_batch_size

    def epochs(self) -> int:
        return self.phase().epochs

    def kl_coef(self) -> float:
        return self.phase().kl_coef

    def set_peak_lr(self, lr: float) -> None:
        """Scale the schedule to a new peak lr; its position (updates so far) is kept."""
        sched = self.scheduler
        sched.base_lrs = [lr for _ in self.optimizer.param_groups]
        for group, fn in zip(self.optimizer.param_groups, sched.lr_lambdas, strict=True):
            group["initial_lr"] = lr
            group["lr"] = lr * fn(sched.last_epoch)

    # ---- one iteration, step by step ---------------------------------------------
    def collect(self, step: int) -> tuple[list[Sample], Generation, list[Problem]]:
        """Sample G responses for each of this iteration's prompts with π_k and score them."""
        cfg = self.cfg
        # All ranks draw the same prompts; each keeps its slice (whole groups per rank).
        phase = self.phase()
        group_size = phase.group_size
        problems = [
            self.train_problems[i]
            for i in self.dist.shard(self.sampler.next(phase.prompts_per_step))
        ]
        prompts = [self.prompt_text(p) for p in problems for _ in range(group_size)]
        settings = SamplingSettings(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
            logprobs=self.record_gen_logprobs(),
        )  # fmt: skip
        gen = self.rollout(prompts, settings)
        pairs = [(text, problems[i // group_size]) for i, text in enumerate(gen.texts)]
        rewards = score_responses(self.task, pairs, graded=gen.finished)  # unfinished: 0
        reward_t = torch.tensor(rewards, dtype=torch.float32)
        estimator = advantage_estimator(cfg.estimator)
        if estimator.uses_critic:  # per token, from the current critic at every batch: gae()
            advantages = torch.zeros_like(reward_t)
        else:  # per response, kept with the sample when it is reused (DESIGN §3.1)
            advantages = estimator.fn(reward_t, group_size, scale_by_std=cfg.scale_adv_by_std)
        samples = [
            Sample(
                prompt_ids=gen.prompt_ids[i],
                response_ids=gen.response_ids[i],
                behavior_logprobs=gen.logprobs[i],  # replaced by log π_k from a forward pass
                reward=rewards[i],
                advantage=float(advantages[i]),
                version=step,
                group=(step - 1) * phase.prompts_per_step
                + self.dist.rank * len(problems)
                + i // group_size,
                finished=gen.finished[i],
            )
            for i in range(len(gen))
        ]
        return samples, gen, problems

    def record_gen_logprobs(self) -> bool:
        """Keep sampling-time log-probs while cheap: HF ``generate`` needs every step's
        full-vocabulary logits for them (vLLM returns them at no cost); ``engine``
        behaviour log-probs need them always."""
        if self.cfg.rollout_engine == "vllm" or self.cfg.behavior_logprobs == "engine":
            return True
        vocab = int(self.policy.config.vocab_size)
        return vocab * self.cfg.max_new_tokens * self.phase().fresh_batch_size <= 2**28

    def prompt_text(self, problem: Problem) -> str:
        if problem.id not in self.prompt_cache:
            self.prompt_cache[problem.id] = format_prompt(
                self.tokenizer, problem.prompt, self.cfg.task.instruction or None
            )
        return self.prompt_cache[problem.id]

    def mixed_batch(self, fresh: list[Sample], step: int) -> list[Sample]:
        """Fresh samples plus past ones of the last ν − 1 iterations (ReMix)."""
        self.buffer.evict(step)  # the fresh version counts towards the window
        n_past = self.dist.local_offpolicy(self.offpolicy_batch_size())
        return fresh + self.buffer.sample_past(n_past, step)

    def micro(self) -> MicroBatching:
        """Forward passes of ``micro_batch_size`` rows, or within a ``micro_batch_tokens`` budget;
        every rank runs as many (each forward pass of a sharded model is a collective)."""
        cfg = self.cfg
        rows = cfg.micro_batch_size or self.dist.local_minibatch(self.phase().minibatch_size)
        return MicroBatching(rows=rows, tokens=cfg.micro_batch_tokens, agree=self.dist.max)

    def needs_base(self, step: int) -> bool:
        """log π_base is needed by the KL term; the ``kl/base`` diagnostic (eval steps) only
        when asked for (``log_kl_base``): it is a third of the no-grad compute on real models."""
        cfg = self.cfg
        if self.kl_coef() > 0 and cfg.kl_lambda > 0:
            return True
        return cfg.log_kl_base and (step % cfg.eval_every == 0 or step == cfg.steps)

    def precompute(self, batch: TrainBatch, n_fresh: int, step: int) -> dict[str, Any]:
        """Quantities fixed for the whole iteration: log π_k, log π_base, values, advantages."""
        cfg = self.cfg
        self.policy.eval()
        precedent = None
        if not self.single_update(len(batch)):
            precedent = batched_no_grad(
                response_logprobs, self.policy, batch, self.micro(), temperature=cfg.temperature,
                chunk_tokens=cfg.logprob_chunk_tokens,
            )  # fmt: skip
        base = None
        if self.needs_base(step):
            base = batched_no_grad(
                response_logprobs, self.reference, batch, self.micro(), temperature=cfg.temperature,
                chunk_tokens=cfg.logprob_chunk_tokens,
            )  # fmt: skip
        out: dict[str, Any] = {"precedent": precedent, "base": base}
        if precedent is not None:
            out["gen_mismatch"] = logprob_mismatch(
                batch.behavior_logprobs[:n_fresh],
                precedent[:n_fresh],
                batch.response_mask[:n_fresh],
            )
            if cfg.behavior_logprobs == "trainer":
                # Fresh data was generated by π_k: μ = π_k exactly, so its clip centre is 1.
                batch.behavior_logprobs[:n_fresh] = precedent[:n_fresh]
        if self.critic is not None:
            out.update(self.gae(batch))
        return out

    def trains_policy(self) -> bool:
        """False during PPO's critic warmup, whose iterations update only the critic."""
        return self.critic is None or self.counters.step >= self.cfg.critic_warmup_steps

    def single_update(self, batch_size: int) -> bool:
        """This iteration takes exactly one policy update. Then π_θ = π_k at that update for
        every row, reused ones included, so the loss forward's own detached log-probs are
        log π_k and a separate no-grad pass would only repeat them (TRL skips it too). Fresh
        rows take them as μ as well; reused rows keep their stored μ."""
        local_minibatch = self.dist.local_minibatch(self.phase().minibatch_size)
        return self.trains_policy() and self.epochs() == 1 and batch_size <= local_minibatch

    def gae(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Critic estimators (PPO's GAE): advantages of every sample, reused ones included,
        from the current critic."""
        cfg = self.cfg
        assert self.critic is not None
        self.critic.eval()
        values = batched_no_grad(response_values, self.critic, batch, self.micro())
        mask = batch.response_mask
        last = (mask.sum(dim=1).long() - 1).clamp(min=0)
        token_rewards = torch.zeros_like(mask)
        token_rewards[torch.arange(len(batch)), last] = batch.rewards
        advantages, returns = advantage_estimator(cfg.estimator).fn(
            token_rewards, values, mask, gamma=cfg.gamma, lam=cfg.gae_lambda
        )
        if cfg.whiten_advantages:
            advantages = self.dist.masked_whiten(advantages, mask)  # global batch statistics
        batch.advantages = advantages
        return {"values": values, "returns": returns}

    def clip_eps(self, batch: TrainBatch, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ε: reused samples may get their own (smaller) clip range."""
        cfg = self.cfg
        reused = (batch.versions < step).unsqueeze(1)
        low_off = cfg.offpolicy_clip_eps_low if cfg.offpolicy_clip_eps_low > 0 else cfg.clip_eps_low
        high_off = (
            cfg.offpolicy_clip_eps_high if cfg.offpolicy_clip_eps_high > 0 else cfg.clip_eps_high
        )
        low = torch.where(reused, torch.tensor(low_off), torch.tensor(cfg.clip_eps_low))
        high = torch.where(reused, torch.tensor(high_off), torch.tensor(cfg.clip_eps_high))
        return low, high

    def update(self, batch: TrainBatch, pre: dict[str, torch.Tensor], step: int) -> StepStats:
        """The U optimizer updates of this iteration (the UTD ratio), on shuffled minibatches."""
        stats = StepStats()
        host = batch
        batch, pre = self.dist.to_device(batch, pre)
        eps_low, eps_high = self.clip_eps(batch, step)
        train_policy = self.trains_policy()
        self.policy.train()
        if self.critic is not None:
            self.critic.train()
        for _ in range(self.epochs()):
            order = torch.randperm(len(batch), generator=self.shuffle_rng)
            size = self.dist.local_minibatch(self.phase().minibatch_size)  # this rank's share
            for begin in range(0, len(batch), size):
                mb = order[begin : begin + size]
                if train_policy:
                    self.policy_update(batch, pre, mb, eps_low, eps_high, step, stats)
                if self.critic is not None:
                    self.critic_update(batch, pre, mb, stats)
        if batch is not host:  # μ of fresh rows may come from the update's forward (single_update)
            host.behavior_logprobs.copy_(batch.behavior_logprobs.cpu())
        return stats

    def policy_update(
        self,
        batch: TrainBatch,
        pre: dict[str, torch.Tensor],
        mb: torch.Tensor,
        eps_low: torch.Tensor,
        eps_high: torch.Tensor,
        step: int,
        stats: StepStats,
    ) -> None:
        cfg = self.cfg
        norm_length = cfg.norm_length or cfg.max_new_tokens
        # Global count (summed over ranks): N ranks make one rank's update on the same batch.
        denominator = self.dist.sum(aggregation_count(batch.response_mask[mb], cfg.loss_agg))
        self.optimizer.zero_grad(set_to_none=True)
        loss_total = 0.0
        for idx in self.micro().split(batch, mb):
            sub = batch.select(idx)
            mask = sub.response_mask
            token = response_stats(
                self.policy, sub, temperature=cfg.temperature, chunk_tokens=cfg.logprob_chunk_tokens
            )
            logprob = token.logprobs
            precedent, behavior = self.proximal_logprobs(pre, sub, idx, logprob, step, stats)
            if pre["precedent"] is None:  # keep μ of the fresh rows for the replay buffer
                batch.behavior_logprobs[idx] = behavior
            out = mix_ppg_policy_loss(
                logprob, behavior, precedent, sub.advantages, mask,
                eps_low=eps_low[idx], eps_high=eps_high[idx], centre=cfg.clip_centre,
                agg=cfg.loss_agg, denominator=denominator, norm_length=norm_length,
            )  # fmt: skip
            loss = out.loss
            kl_coef = self.kl_coef()
            if kl_coef > 0:
                # λ = 0 needs no π_base: the precedent stands in for the unused base term.
                base = pre["base"][idx] if pre["base"] is not None else precedent
                kl = kl_convex(logprob, base, precedent, lam=cfg.kl_lambda, kind=cfg.kl_estimator)
                loss = loss + kl_coef * aggregate(
                    kl, mask, cfg.loss_agg, denominator=denominator, norm_length=norm_length
                )
            if cfg.entropy_coef > 0:  # a bonus: more entropy, lower loss
                loss = loss - cfg.entropy_coef * aggregate(
                    token.entropy, mask, cfg.loss_agg, denominator=denominator,
                    norm_length=norm_length,
                )  # fmt: skip
            loss.backward()
            loss_total += float(loss.detach())
            self.record_policy_stats(
                stats, out, logprob.detach(), precedent, behavior, pre, sub, idx, step
            )
            self.record_entropy(stats, token.entropy.detach(), sub, step)
        grad_norm = self.optimizer_step(self.optimizer, self.policy, loss_total, "policy")
        if grad_norm is not None:
            stats.add("grad_norm", grad_norm, 1)
            self.counters.updates += 1
            self.engine_stale = True  # the rollout engine must get the new weights
        self.scheduler.step()  # a skipped update still uses up its place in the schedule

    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, model: Any, loss: float, name: str
    ) -> float | None:
        """Clip and step; the gradient norm, or None when the loss or the gradient is not
        finite: then the step is skipped (a NaN step would poison the weights and, through
        the log-probs stored with new samples, the replay buffer)."""
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        )
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if self.dist.sum(0.0 if finite else 1.0) == 0:  # every rank skips or steps together
            optimizer.step()
            self.nonfinite_streak = 0
            return grad_norm
        optimizer.zero_grad(set_to_none=True)
        self.counters.skipped_updates += 1
        self.nonfinite_streak += 1
        log.warning(
            "step %d: skipped a %s update (loss %s, gradient norm %s)",
            self.counters.step + 1, name, loss, grad_norm,
        )  # fmt: skip
        limit = self.cfg.max_nonfinite_updates
        if limit and self.nonfinite_streak >= limit:
            raise NonFiniteTrainingError(
                f"{self.nonfinite_streak} optimizer updates in a row had a non-finite loss or "
                f"gradient norm (last: {name} loss {loss}, gradient norm {grad_norm}); stopped "
                f"at step {self.counters.step + 1} (max_nonfinite_updates={limit}). The last "
                "checkpoint is intact: resume from it with a smaller lr or inspect the data."
            )
        return None

    def proximal_logprobs(
        self,
        pre: dict[str, Any],
        sub: TrainBatch,
        idx: torch.Tensor,
        logprob: torch.Tensor,
        step: int,
        stats: StepStats,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log π_k, log μ) of these rows. Precomputed, or — when the iteration takes a
        single update (``single_update``) — log π_k is the loss forward's own detached
        log-probs; fresh rows take it as μ too (μ = π_k: r ≡ 1, clip centre 1), reused rows
        keep their stored μ."""
        if pre["precedent"] is not None:
            return pre["precedent"][idx], sub.behavior_logprobs
        current = logprob.detach()
        fresh = (sub.versions == step).unsqueeze(1)
        mismatch = logprob_mismatch(
            sub.behavior_logprobs, current, sub.response_mask.bool() & fresh
        )
        if mismatch:
            stats.add("gen/logprob_diff_mean", mismatch["gen/logprob_diff_mean"], 1)
            stats.max("gen/logprob_diff_max", mismatch["gen/logprob_diff_max"])
        if self.cfg.behavior_logprobs == "engine":  # μ as sampled; the ratio corrects the gap
            return current, sub.behavior_logprobs
        return current, torch.where(fresh, current, sub.behavior_logprobs)

    def record_policy_stats(
        self,
        stats: StepStats,
        out: Any,
        logprob: torch.Tensor,
        precedent: torch.Tensor,
        behavior: torch.Tensor,
        pre: dict[str, torch.Tensor],
        sub: TrainBatch,
        idx: torch.Tensor,
        step: int,
    ) -> None:
        """Importance ratios, clipping and KL, overall and by data age (k − j)."""
        kind = self.cfg.kl_estimator
        mask = sub.response_mask.bool()
        clipped = out.clipped_low | out.clipped_high
        log_ratio = (logprob - behavior).abs()
        kl_prec = kl_estimate(logprob, precedent, kind)
        n = float(mask.sum())
        if pre["base"] is not None:
            kl_base = kl_estimate(logprob, pre["base"][idx], kind)
            stats.add("kl/base", float(kl_base[mask].sum()), n)
        stats.add("ratio/mean", float(out.ratio[mask].sum()), n)
        stats.max("ratio/max", float(out.ratio[mask].max()) if n else 0.0)
        stats.add("clip/frac", float(clipped.sum()), n)
        stats.add("clip/frac_low", float(out.clipped_low.sum()), n)
        stats.add("clip/frac_high", float(out.clipped_high.sum()), n)
        stats.add("kl/precedent", float(kl_prec[mask].sum()), n)
        ages = step - sub.versions
        for age in ages.unique().tolist():
            rows = mask & (ages == age).unsqueeze(1)
            m = float(rows.sum())
            stats.add(f"age{age}/ratio_mean", float(out.ratio[rows].sum()), m)
            stats.max(f"age{age}/ratio_max", float(out.ratio[rows].max()) if m else 0.0)
            stats.add(f"age{age}/clip_frac", float(clipped[rows].sum()), m)
            stats.add(f"age{age}/clip_frac_low", float(out.clipped_low[rows].sum()), m)
            stats.add(f"age{age}/clip_frac_high", float(out.clipped_high[rows].sum()), m)
            stats.add(f"age{age}/log_ratio_abs", float(log_ratio[rows].sum()), m)
            stats.add(f"age{age}/tokens", m, 1)

    def record_entropy(
        self, stats: StepStats, entropy: torch.Tensor, sub: TrainBatch, step: int
    ) -> None:
        """Policy entropy on response tokens, overall and by data age (k − j), and how much
        of this forward pass was padding."""
        mask = sub.response_mask.bool()
        stats.add("entropy/mean", float(entropy[mask].sum()), float(mask.sum()))
        ages = step - sub.versions
        for age in ages.unique().tolist():
            rows = mask & (ages == age).unsqueeze(1)
            stats.add(f"age{age}/entropy", float(entropy[rows].sum()), float(rows.sum()))
        real, padded = padding_counts(row_lengths(sub))
        stats.add("padding/frac", padded - real, padded)

    def critic_update(
        self, batch: TrainBatch, pre: dict[str, torch.Tensor], mb: torch.Tensor, stats: StepStats
    ) -> None:
        cfg = self.cfg
        assert self.critic is not None
        denominator = self.dist.sum(aggregation_count(batch.response_mask[mb], "token-mean"))
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss_total = 0.0
        for idx in self.micro().split(batch, mb):
            sub = batch.select(idx)
            values = response_values(self.critic, sub)
            loss, clipped = value_loss(
                values, pre["values"][idx], pre["returns"][idx], sub.response_mask,
                clip_range=cfg.value_clip, agg="token-mean", denominator=denominator,
            )  # fmt: skip
            loss.backward()
            loss_total += float(loss.detach())
            tokens = float(sub.response_mask.sum())
            stats.add("critic/loss", float(loss.detach()) * denominator, tokens)
            stats.add("critic/clip_frac", float(clipped.sum()), float(sub.response_mask.sum()))
        self.optimizer_step(self.critic_optimizer, self.critic, loss_total, "critic")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Held-out accuracy: greedy pass@1, or avg@k of ``eval_samples`` sampled responses
        at ``eval_temperature`` (the paper's setting for R1-distilled models)."""
        cfg = self.cfg
        problems = self.dist.shard(self.eval_problems)  # each rank its slice; correct counts summed
        prompts = [self.prompt_text(p) for p in problems]
        settings = SamplingSettings(
            max_new_tokens=cfg.eval_max_new_tokens or cfg.max_new_tokens,
            temperature=cfg.eval_temperature, top_p=cfg.eval_top_p, n=cfg.eval_samples,
            # its own stream: sampled evaluation leaves the training trajectory unchanged
            seed=cfg.seed + 104_729 * (self.counters.step + 1) + self.dist.rank,
            logprobs=False,
        )  # fmt: skip
        texts: list[str] = []
        with self.ready_engine() as engine:
            for begin in range(0, len(prompts), cfg.eval_batch_size):
                chunk = prompts[begin : begin + cfg.eval_batch_size]
                texts += engine.generate(chunk, replace(settings, seed=settings.seed + begin)).texts
        k = cfg.eval_samples
        scores = score_responses(self.task, [(t, problems[i // k]) for i, t in enumerate(texts)])
        return self.dist.sum(sum(scores)) / max(len(self.eval_problems) * k, 1)

    def reincarnate(self, step: int) -> None:
        """π_base ← π_θ, empty the buffer, continue on-policy (DESIGN §3.4)."""
        if self.cfg.lora_rank:  # merge the adapter into the base, start a fresh one
            from remix_rft.engines import lora

            lora.reincarnate(self.policy)
        elif self.reference is not None:  # None: nothing uses π_base (β = 0, no kl/base)
            copy_weights(self.policy, self.reference)
        # The new phase starts like a run from a new base: fresh AdamW moments on both paths
        # (full finetuning and LoRA). The learning-rate schedule keeps counting across the run.
        reset_optimizer_state(self.optimizer)
        self.buffer.clear()
        self.counters.reincarnated_at = step
        self.schedule_total = self.cfg.planned_updates(reincarnated_at=step)
        self.set_peak_lr(self.phase().lr)  # from here on the on-policy method's lr
        log.info("policy reincarnation at step %d: reference <- policy, buffer emptied", step)

    def should_reincarnate(self, step: int, evaluated: bool) -> bool:
        cfg = self.cfg
        if not cfg.is_remix or self.reincarnated:
            return False
        if cfg.reincarnation_step and step == cfg.reincarnation_step:
            return True
        patience = cfg.reincarnation_patience
        return bool(patience and evaluated and self.counters.evals_since_best >= patience)

    def record_eval(self, accuracy: float) -> None:
        c = self.counters
        c.last_eval_accuracy = accuracy
        if accuracy > c.best_eval_accuracy:
            c.best_eval_accuracy, c.evals_since_best = accuracy, 0
        else:
            c.evals_since_best += 1

    # ---- checkpoints -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "counters": asdict(self.counters),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "buffer": self.buffer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle_rng.get_state(),
        }
        if self.critic is not None:
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def save(self, step: int) -> None:
        if self.dist.enabled:  # sharded DCP checkpoint
            ranks.save_checkpoint(self, step)
            return
        models: dict[str, Any] = {"policy": _WithTokenizer(self.policy, self.tokenizer)}
        if self.cfg.lora_rank:  # merged HF model + base and adapter (the reference is the base)
            from remix_rft.engines import lora

            models = lora.checkpoint_models(self.policy, self.tokenizer)
        elif self.reincarnated and self.reference is not None:
            models["reference"] = self.reference
        if self.critic is not None:
            models["critic"] = self.critic
        ckpt.save_checkpoint(
            self.run_dir, step, models, self.state_dict(), keep=self.cfg.keep_checkpoints
        )

    def load(self, checkpoint: Path) -> None:
        if self.dist.enabled or (checkpoint / ranks.DCP_DIR).is_dir():
            ranks.load_checkpoint(self, checkpoint)  # refuses another world size
            return
        state = ckpt.load_state(checkpoint)
        self.counters = Counters(**state["counters"])
        if self.cfg.lora_rank:
            from remix_rft.engines import lora

            lora.load_checkpoint(self.policy, checkpoint)
        else:
            _load_weights(self.policy, checkpoint / "policy")
        if self.reincarnated and self.reference is not None and not self.cfg.lora_rank:
            if not (checkpoint / "reference").is_dir():
                raise ValueError(
                    f"checkpoint {checkpoint} was reincarnated without keeping π_base (kl_coef 0, "
                    "log_kl_base off), so this run cannot use it: resume with kl_coef=0 "
                    "log_kl_base=false"
                )
            _load_weights(self.reference, checkpoint / "reference")
        if self.critic is not None:
            loaded = ValueModel.from_pretrained(str(checkpoint / "critic"), dtype=self.cfg.dtype)
            self.critic.load_state_dict(loaded.state_dict())
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.buffer.load_state_dict(state["buffer"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.shuffle_rng.set_state(state["shuffle_rng"])

    # ---- the loop ----------------------------------------------------------------
    def iteration(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        started = time.perf_counter()
        fresh, gen, _ = self.collect(step)
        train_samples = self.mixed_batch(fresh, step)
        batch = collate(train_samples, self.pad_id)
        pre = self.precompute(batch, len(fresh), step)
        skipped_before = self.counters.skipped_updates
        stats = self.dist.merge_stats(self.update(batch, pre, step))
        for i, s in enumerate(fresh):  # store μ = log π_k: the no-grad pass or the update's forward
            s.behavior_logprobs = batch.behavior_logprobs[i, : s.response_ids.numel()].clone()
        self.buffer.add(fresh)
        self.buffer.evict(step)
        c = self.counters
        c.step = step
        c.rollouts += len(fresh) * self.dist.world_size  # every rank samples as many
        c.tokens += self.dist.sum_int(gen.num_tokens())
        lengths = [float(s.response_ids.numel()) for s in fresh]
        row: dict[str, Any] = {
            "step": step,
            "rollouts": c.rollouts,
            "tokens": c.tokens,
            "updates": c.updates,
            "utd": self.phase().updates(len(batch) * self.dist.world_size),
            "reward/mean": sum(s.reward for s in fresh) / len(fresh),
            "response_length/mean": sum(lengths) / len(lengths),
            "response_length/max": max(lengths),
            "finished/frac": sum(s.finished for s in fresh) / len(fresh),
            "reflection/rate": reflection_rate(gen.texts, cfg.reflection_words),
            **group_signal((s.reward for s in fresh), (s.group for s in fresh)),
            "offpolicy/fraction": (len(batch) - len(fresh)) / len(batch),
            "offpolicy/samples": len(batch) - len(fresh),
            "buffer/versions": len(self.buffer.versions()),
            "lr": self.scheduler.get_last_lr()[0],
            "nonfinite/skipped_updates": self.counters.skipped_updates - skipped_before,
            "time/gen_s": gen.seconds,
            "time/gen_tokens_per_s": gen.stats["time/gen_tokens_per_s"],
        }
        row.update(pre.get("gen_mismatch", {}))
        row.update(stats.means())
        row["time/step_s"] = time.perf_counter() - started
        return self.dist.reduce_row(row)

    def run(self, on_step: StepCallback | None = None) -> dict[str, Any]:
        cfg = self.cfg
        c = self.counters
        session_start = time.perf_counter()
        wall_before = c.wall_time_s
        self.schedule_total = cfg.planned_updates(c.reincarnated_at)  # a resumed run's phase

        def wall() -> float:
            return wall_before + time.perf_counter() - session_start

        if c.step == 0 and c.base_eval_accuracy is None and self.eval_problems:
            started = time.perf_counter()
            accuracy = self.evaluate()
            c.base_eval_accuracy = accuracy
            self.record_eval(accuracy)
            row0 = {"step": 0, "rollouts": 0, "tokens": 0, "eval/accuracy": accuracy,
                    "time/step_s": time.perf_counter() - started, "time/total_s": wall()}  # fmt: skip
            self.metrics.append(row0)
            if on_step:
                on_step(row0)
        for step in range(c.step + 1, cfg.steps + 1):
            row = self.iteration(step)
            evaluated = bool(self.eval_problems) and (
                step % cfg.eval_every == 0 or step == cfg.steps
            )
            if evaluated:
                row["eval/accuracy"] = self.evaluate()
                self.record_eval(row["eval/accuracy"])
            if self.should_reincarnate(step, evaluated):
                self.reincarnate(step)
                row["reincarnated"] = True
            c.wall_time_s = wall()
            row["time/total_s"] = c.wall_time_s
            self.metrics.append(row)
            if step % cfg.save_every == 0 or step == cfg.steps:
                self.save(step)
            if on_step:
                on_step(row)
        self.metrics.close()  # trackers flush and finish
        summary = self.summary()
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    def close(self) -> None:
        """Release the rollout engine (last: vLLM's shutdown also ends the process group)."""
        self.engine.close()

    def summary(self) -> dict[str, Any]:
        c = self.counters
        return {
            "algorithm": self.cfg.algorithm,
            "name": self.cfg.name,
            "base_eval_accuracy": c.base_eval_accuracy,
            "final_eval_accuracy": c.last_eval_accuracy,
            "best_eval_accuracy": c.best_eval_accuracy,
            "rollouts": c.rollouts,
            "tokens": c.tokens,
            "updates": c.updates,
            "steps": c.step,
            "reincarnated_at": c.reincarnated_at or None,
            "wall_time_s": c.wall_time_s,
        }


def logprob_mismatch(
    engine: torch.Tensor, trainer: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """|log μ_engine − log π_trainer| over response tokens: how far the sampling engine's
    log-probs are from the trainer's recomputation of the same weights (empty when the
    engine recorded none)."""
    diff = (engine - trainer)[mask.bool()].abs()
    if not diff.numel() or not bool(torch.isfinite(diff).all()):
        return {}
    return {"gen/logprob_diff_mean": float(diff.mean()), "gen/logprob_diff_max": float(diff.max())}


@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Zero every per-parameter state (AdamW: step, exp_avg, exp_avg_sq): the next step is
    exactly a fresh optimizer's first, and the state keeps its layout, which sharded (DCP)
    checkpoints need; an emptied state would be refilled there by a zero-gradient step."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()
            elif isinstance(value, int | float):
                state[key] = type(value)(0)


class _WithTokenizer:
    """Saves a policy together with its tokenizer, so a checkpoint is a loadable HF model."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def save_pretrained(self, out_dir: Path) -> None:
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def _load_weights(model: Any, path: Path) -> None:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint {path} holds no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings are saved once; anything else missing means a wrong checkpoint.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


# ---- entry points ----------------------------------------------------------------
def prepare_run_dir(cfg: TrainConfig) -> Path:
    run_dir = cfg.resolved_out_dir()
    if (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(
            f"run directory {run_dir} already holds a run; resume it with "
            f"`remix train --resume {run_dir}` or choose another out_dir="
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    return run_dir


def train(cfg: TrainConfig, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Start a new run in ``cfg.out_dir`` and train it to ``cfg.steps``."""
    resolve_model_path(cfg.model)  # a missing model fails before the run directory exists
    env = distributed.setup(cfg.device)
    ranks.check_config(cfg, env.world_size)
    run_dir = env.on_main(lambda: prepare_run_dir(cfg))  # rank 0 writes; errors reach all ranks
    trainer = Trainer(cfg, run_dir)
    try:
        return trainer.run(on_step)
    finally:
        trainer.close()


def resume(run_dir: Path, cfg: TrainConfig, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Continue a run from its last checkpoint (or from the start if it has none)."""
    env = distributed.setup(cfg.device)
    checkpoint = ckpt.latest_checkpoint(run_dir)
    if checkpoint is not None:  # another world size is refused before any model is loaded
        ranks.check_resume(checkpoint, env.world_size, env.enabled)
    trainer = Trainer(cfg, run_dir)
    if checkpoint is not None:
        trainer.load(checkpoint)
        if trainer.reincarnated:  # the config's post-reincarnation lr, also for older checkpoints
            trainer.set_peak_lr(trainer.phase().lr)
        log.info("resuming %s from %s (step %d)", run_dir, checkpoint.name, trainer.counters.step)
    trainer.metrics.truncate_after(trainer.counters.step if checkpoint else -1)
    if trainer.dist.is_main:
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    try:
        return trainer.run(on_step)
    finally:
        trainer.close()
