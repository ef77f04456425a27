"""ReMix as a drop-in TRL trainer (issue #35): ``ReMixGRPOTrainer(GRPOTrainer)``.

TRL keeps everything it does (launch, generation, vLLM modes, rewards, advantages, logging,
callbacks); this subclass adds only what ReMix needs (docs/design.md §2):

* a versioned replay buffer (``data/buffer.py``): every fresh completion is stored with its
  generation version, its advantage as computed then, and its behaviour log-probs μ (TRL's
  own generation log-probs: vLLM's sampling log-probs, else TRL's ``old_per_token_logps``,
  else the first update's detached forward, which equals π_k = μ for fresh data);
* the mixed batch: ``offpolicy_fraction`` of each generation batch drawn from the last
  ``window − 1`` versions;
* the loss: our registered Mix-PPG (``algorithm/objective.py``, the same function our
  trainer calls) with the clip centred on π_k/μ and ReMix's ε for reused rows, plus
  KL-Convex with the λ schedule, aggregated as TRL's ``loss_type`` does;
* policy reincarnation as a callback: reference reset to the current policy, buffer
  cleared, replay off, β and lr switched to the ``post_reincarnation_*`` values (TRL's
  batch size is fixed by its dataloader, so the fresh batch does not change);
* its state in TRL's checkpoints: each ``checkpoint-N`` gets ``remix_replay.pt`` (buffer,
  version counter, this round's samples awaiting the buffer, reincarnation, β) and, once
  reincarnated with β > 0, ``remix_reference.pt`` (π_base); ``train(resume_from_checkpoint=)``
  restores them (``remix_state_dict``, ``_save_checkpoint``, ``_load_optimizer_and_scheduler``).

The ReMix settings come from a remix-rft :class:`TrainConfig` (``remix=``, a YAML path or a
shipped config name); TRL's ``GRPOConfig`` keeps its own keys. Text-only, single-turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SUPPORTED_TRL = ("1.16.0", "1.17.0")  # [tested, next minor): the extra remix-rft[trl]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit())


def _check_trl() -> Any:
    try:
        import trl
    except ImportError as err:  # pragma: no cover - the message is the point
        raise ImportError(
            "remix_rft.integrations.trl needs TRL: pip install 'remix-rft[trl]'"
        ) from err
    low, high = SUPPORTED_TRL
    if not _version_tuple(low) <= _version_tuple(trl.__version__) < _version_tuple(high):
        raise ImportError(
            f"remix_rft.integrations.trl supports TRL >={low},<{high}; found TRL "
            f"{trl.__version__} (pip install 'remix-rft[trl]')"
        )
    return trl


trl = _check_trl()

from transformers import TrainerCallback  # noqa: E402  (after the TRL check)

from remix_rft.algorithm.objective import assemble_policy_objective  # noqa: E402
from remix_rft.data.buffer import ReplayBuffer, Sample  # noqa: E402
from remix_rft.integrations.trl_checkpoint import REPLAY_FILE, ReplayCheckpointMixin  # noqa: E402,F401
from remix_rft.trainer.config import TrainConfig, inherit, load_config  # noqa: E402

# TRL loss_type -> (our aggregation, whether TRL divides it by gradient accumulation)
AGGREGATIONS = {
    "dapo": "token-mean", "bnpo": "token-mean", "grpo": "seq-mean-token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
}  # fmt: skip


@dataclass
class ReplayStats:
    """One generation round's replay: logged as ``remix/*`` and kept in ``trainer.replay_log``."""

    version: int
    fresh: int
    replayed: int
    ages: list[int] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.replayed / max(self.fresh + self.replayed, 1)


class ReMixGRPOTrainer(ReplayCheckpointMixin, trl.GRPOTrainer):  # type: ignore[misc]
    """TRL's ``GRPOTrainer`` with ReMix's replay, Mix-PPG loss, KL-Convex and reincarnation.

    Arguments are GRPOTrainer's, plus ``remix``: a remix-rft ``TrainConfig`` (or YAML path /
    shipped config name) whose ReMix keys are used: ``window``, ``offpolicy_fraction``,
    ``clip_centre``, ``offpolicy_clip_eps_low/high``, ``kl_lambda`` (+ schedule),
    ``kl_estimator``, ``reincarnation_step``, ``post_reincarnation_lr/kl_coef``.
    """

    def __init__(self, *args: Any, remix: TrainConfig | str | Path | None = None, **kw: Any):
        cfg = remix if isinstance(remix, TrainConfig) else load_config(remix or "tiny-remix-grpo")
        self.remix = cfg
        super().__init__(*args, **kw)
        if self.loss_type not in AGGREGATIONS:
            raise ValueError(f"ReMixGRPOTrainer: loss_type {self.loss_type!r} is not supported; "
                             f"use one of {sorted(AGGREGATIONS)}")  # fmt: skip
        self.buffer = ReplayBuffer(max(cfg.window, 1), seed=int(self.args.seed) + 1)
        self.replay_log: list[ReplayStats] = []
        self.reincarnated = False
        self._version = 0
        self._pending: dict[int, Sample] = {}  # this round's fresh samples awaiting μ
        self.add_callback(ReincarnationCallback(self))

    # ---- the mixed batch ------------------------------------------------------------------
    def offpolicy_count(self, fresh: int) -> int:
        f, cfg = self.remix.offpolicy_fraction, self.remix
        if self.reincarnated or cfg.window <= 1 or f <= 0:
            return 0
        return round(fresh * f / (1.0 - f))

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:  # evaluation: TRL's own, no replay
            return out
        unsupported = {"tool_mask", "pixel_values", "num_images"} & set(out)
        if unsupported:
            raise NotImplementedError(f"ReMixGRPOTrainer: {sorted(unsupported)} (tools, images) "
                                      "are not supported")  # fmt: skip
        self._store_pending()  # last round's fresh samples, μ now known
        self._version += 1
        self.buffer.evict(self._version)
        fresh = len(out["advantages"])
        past = self.buffer.sample_past(self.offpolicy_count(fresh), self._version)
        self._pending = self._fresh_samples(out)
        stats = ReplayStats(
            self._version, fresh, len(past), [self._version - s.version for s in past]
        )
        self._log_replay(stats)
        return self._mixed(out, past)

    def _fresh_samples(self, out: dict[str, Any]) -> dict[int, Sample]:
        """The round's completions as buffer samples; μ filled in now when TRL computed
        generation log-probs, else by the first loss forward (``_compute_loss``)."""
        mu = out.get("sampling_per_token_logps", out.get("old_per_token_logps"))
        samples = {}
        for i in range(len(out["advantages"])):
            n = int(out["completion_mask"][i].sum())
            if n == 0:  # masked out entirely (truncated with mask_truncated_completions)
                continue
            prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()]
            samples[i] = Sample(
                prompt_ids=prompt.detach().cpu(), response_ids=out["completion_ids"][i, :n].cpu(),
                behavior_logprobs=mu[i, :n].detach().float().cpu() if mu is not None else None,
                reward=0.0, advantage=float(out["advantages"][i]), version=self._version,
                group=i // self.num_generations, finished=True,
            )  # fmt: skip
        return samples

    def _store_pending(self) -> None:
        ready = [s for s in self._pending.values() if s.behavior_logprobs is not None]
        self.buffer.add(ready)
        self._pending = {}

    def _mixed(self, out: dict[str, Any], past: list[Sample]) -> dict[str, Any]:
        """``out`` with the replayed samples appended, re-padded (prompts left, completions
        right), and the per-row ReMix inputs: row id, whether fresh, μ where known."""
        b, dev = len(out["advantages"]), out["prompt_ids"].device
        prompts = [out["prompt_ids"][i][out["prompt_mask"][i].bool()] for i in range(b)]
        comps = [out["completion_ids"][i, : int(out["completion_mask"][i].sum())] for i in range(b)]
        prompts += [s.prompt_ids.to(dev) for s in past]
        comps += [s.response_ids.to(dev) for s in past]
        pad = int(self.processing_class.pad_token_id or 0)
        p_len = max(int(p.numel()) for p in prompts)
        c_len = max(out["completion_ids"].size(1), max((int(c.numel()) for c in comps), default=0))
        mixed = dict(out)
        mixed["prompt_ids"], mixed["prompt_mask"] = _pad(prompts, p_len, pad, left=True)
        mixed["completion_ids"], mixed["completion_mask"] = _pad(comps, c_len, pad, left=False)
        past_adv = torch.tensor([s.advantage for s in past], dtype=out["advantages"].dtype)
        mixed["advantages"] = torch.cat([out["advantages"], past_adv.to(dev)])
        mu = torch.zeros(b + len(past), c_len, device=dev)
        for j, s in enumerate(past):
            mu[b + j, : s.behavior_logprobs.numel()] = s.behavior_logprobs.to(dev)
        mixed["remix_behavior"] = mu
        mixed["remix_fresh"] = torch.arange(b + len(past), device=dev) < b
        mixed["remix_row"] = torch.arange(b + len(past), device=dev)
        mixed["remix_version"] = torch.full((b + len(past),), self._version, device=dev)
        mixed["num_items_in_batch"] = self.accelerator.gather(mixed["completion_mask"].sum()).sum()
        for key in ("old_per_token_logps", "ref_per_token_logps", "sampling_per_token_logps"):
            if key in out:  # the replayed rows' values from the current π_k / the reference
                mixed[key] = self._extended(key, out[key], mixed, b, past)
        mixed.pop("importance_sampling_ratio", None)  # μ (vLLM's) is in Mix-PPG's ratio already
        return mixed

    @torch.no_grad()
    def _extended(self, key: str, fresh: torch.Tensor, mixed: dict[str, Any], b: int,
                  past: list[Sample]) -> torch.Tensor:  # fmt: skip
        c_len = mixed["completion_ids"].size(1)
        values = torch.zeros(b + len(past), c_len, device=fresh.device, dtype=fresh.dtype)
        values[:b, : fresh.size(1)] = fresh
        if not past:
            return values
        if key == "sampling_per_token_logps":
            values[b:] = mixed["remix_behavior"][b:]
            return values
        model = self.model if key == "old_per_token_logps" else self.ref_model
        if model is None:
            raise NotImplementedError("ReMixGRPOTrainer: KL to a PEFT reference is not supported")
        ids = torch.cat([mixed["prompt_ids"][b:], mixed["completion_ids"][b:]], dim=1)
        mask = torch.cat([mixed["prompt_mask"][b:], mixed["completion_mask"][b:]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, mask, c_len)
        values[b:] = logps
        return values

    def _log_replay(self, stats: ReplayStats) -> None:
        self.replay_log.append(stats)
        metrics = self._metrics["train"]
        metrics["remix/replay_share"].append(stats.share)
        metrics["remix/replay_age_mean"].append(sum(stats.ages) / max(len(stats.ages), 1))
        metrics["remix/replay_age_max"].append(float(max(stats.ages, default=0)))
        metrics["remix/buffer_versions"].append(float(len(self.buffer.versions())))

    # ---- the loss -----------------------------------------------------------------------
    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if "remix_fresh" not in inputs:  # evaluation batches: TRL's own loss
            return super()._compute_loss(model, inputs)
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        mask = inputs["completion_mask"]
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention = torch.cat([inputs["prompt_mask"], mask], dim=1)
        logprob, _, _ = self._get_per_token_logps_and_entropies(model, ids, attention,
                                                                completion_ids.size(1))  # fmt: skip
        objective = self.remix_objective(logprob, inputs)
        self._capture_behavior(logprob, inputs)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["remix/clip_ratio"].append(
            float((objective.policy.clipped_low | objective.policy.clipped_high).float().mean())
        )
        return objective.loss

    def remix_objective(self, logprob: torch.Tensor, inputs: dict[str, Any]) -> Any:
        """Our registered Mix-PPG + KL-Convex on TRL's tensors (``assemble_policy_objective``,
        the function our own trainer's update calls), aggregated as TRL's loss_type."""
        mask = inputs["completion_mask"].float()
        precedent = inputs.get("old_per_token_logps")
        precedent = logprob.detach() if precedent is None else precedent
        fresh = inputs["remix_fresh"].bool().unsqueeze(1)
        behavior = inputs.get("sampling_per_token_logps", precedent)
        behavior = torch.where(fresh, behavior, inputs["remix_behavior"])
        cfg = self.remix
        eps_low = torch.where(fresh, self.epsilon_low,
                              inherit(cfg.offpolicy_clip_eps_low, self.epsilon_low))  # fmt: skip
        eps_high = torch.where(fresh, self.epsilon_high,
                               inherit(cfg.offpolicy_clip_eps_high, self.epsilon_high))  # fmt: skip
        accumulation = float(getattr(self, "current_gradient_accumulation_steps",
                                     self.args.gradient_accumulation_steps))  # fmt: skip
        denominator, norm_length, scale = None, 1.0, accumulation
        if self.loss_type == "dapo":  # TRL: tokens of the generation batch per micro-step
            denominator = float(inputs["num_items_in_batch"].clamp(min=1.0))
            denominator /= self.accelerator.num_processes
            denominator *= accumulation / self.args.steps_per_generation
            scale = 1.0
        elif self.loss_type == "dr_grpo":
            norm_length = float(self.max_completion_length)
        version = int(inputs["remix_version"][0]) if len(inputs["remix_version"]) else 0
        objective = assemble_policy_objective(
            logprob, behavior, precedent, inputs["advantages"].unsqueeze(1), mask,
            eps_low=eps_low.to(logprob.dtype), eps_high=eps_high.to(logprob.dtype),
            loss="mix-ppg", centre=cfg.clip_centre, agg=AGGREGATIONS[self.loss_type],
            denominator=denominator, norm_length=norm_length, kl_coef=float(self.beta),
            kl_lambda=cfg.kl_lambda_at(version), kl_estimator=cfg.kl_estimator,
            base_logprob=inputs.get("ref_per_token_logps"),
        )  # fmt: skip
        objective.loss = objective.loss / scale
        return objective

    def _capture_behavior(self, logprob: torch.Tensor, inputs: dict[str, Any]) -> None:
        """μ of fresh rows that TRL computed no generation log-probs for: this forward's,
        detached (the first update of the round, so π_θ = π_k = the generating policy)."""
        for i, row in enumerate(inputs["remix_row"].tolist()):
            sample = self._pending.get(row)
            if sample is not None and sample.behavior_logprobs is None:
                n = sample.response_ids.numel()
                sample.behavior_logprobs = logprob[i, :n].detach().float().cpu()

    # ---- policy reincarnation -------------------------------------------------------------
    def reincarnate(self) -> None:
        """π_base := the current policy, buffer cleared, on-policy from now on with the
        ``post_reincarnation_*`` β and lr (docs/design.md: policy reincarnation)."""
        cfg = self.remix
        self.reincarnated = True
        self.buffer.clear()
        self._pending = {}
        if self.ref_model is not None:
            policy = self.accelerator.unwrap_model(self.model)
            self.accelerator.unwrap_model(self.ref_model).load_state_dict(policy.state_dict())
        self.beta = inherit(cfg.post_reincarnation_kl_coef, self.beta)
        if self.beta and self.ref_model is None:
            raise NotImplementedError("ReMixGRPOTrainer: a post-reincarnation KL needs a "
                                      "reference model (start with beta > 0)")  # fmt: skip
        lr = cfg.post_reincarnation_lr
        if lr is not None and self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.lr_scheduler is not None:
                self.lr_scheduler.base_lrs = [lr for _ in self.lr_scheduler.base_lrs]


class ReincarnationCallback(TrainerCallback):  # type: ignore[misc]
    """Reincarnates the trainer after optimizer step ``remix.reincarnation_step``."""

    def __init__(self, trainer: ReMixGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = self.trainer.remix.reincarnation_step
        if step and not self.trainer.reincarnated and state.global_step >= step:
            self.trainer.reincarnate()


def _pad(
    rows: list[torch.Tensor], length: int, pad: int, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), length), pad, dtype=torch.long, device=rows[0].device)
    mask = torch.zeros((len(rows), length), dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        n = int(row.numel())
        if n:
            span = slice(length - n, length) if left else slice(0, n)
            ids[i, span], mask[i, span] = row, 1
    return ids, mask
