"""TRL's ``GRPOConfig`` to a :class:`TrainConfig` and back (issue #35), by the verl/TRL key
table (docs/algorithms.md, "The same things in the frameworks you may come from").

Read by attribute, so nothing here imports TRL except :func:`to_trl`. What one iteration is
differs: TRL counts optimizer steps (``max_steps``), each of ``per_device_train_batch_size ×
gradient_accumulation_steps`` samples, and generates ``generation_batch_size`` completions
every ``steps_per_generation`` steps, reused ``num_iterations`` times; we count iterations
(``steps``), each generating ``prompts_per_step × group_size`` and training ``epochs`` passes
in minibatches of ``minibatch_size``. TRL keys set away from their defaults that have no
counterpart are named in one warning.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from remix_rft.trainer.config_fields import TrainConfig

log = logging.getLogger(__name__)

# TRL key -> ours, values carried unchanged
SAME_VALUE = {
    "learning_rate": "lr", "weight_decay": "weight_decay", "adam_beta1": "adam_beta1",
    "adam_beta2": "adam_beta2", "max_grad_norm": "max_grad_norm", "seed": "seed",
    "warmup_steps": "warmup_updates", "num_generations": "group_size",
    "max_completion_length": "max_new_tokens", "temperature": "temperature", "top_p": "top_p",
    "beta": "kl_coef", "epsilon": "clip_eps_low", "num_iterations": "epochs",
    "mask_truncated_completions": "mask_truncated", "gradient_checkpointing":
    "gradient_checkpointing", "vllm_gpu_memory_utilization": "vllm_gpu_memory_utilization",
    "output_dir": "out_dir", "run_name": "name",
}  # fmt: skip
LOSS_TYPES = {  # TRL loss_type -> (policy_loss, loss_agg)
    "dapo": ("mix-ppg", "token-mean"), "bnpo": ("mix-ppg", "token-mean"),
    "grpo": ("mix-ppg", "seq-mean-token-mean"), "dr_grpo": ("mix-ppg", "seq-mean-token-sum-norm"),
    "cispo": ("cispo", "token-mean"),
}  # fmt: skip
IS_MODES = {  # vllm_importance_sampling_mode -> (rollout_correction, level)
    "token_truncate": ("tis", "token"), "token_mask": ("mis", "token"),
    "sequence_truncate": ("tis", "sequence"), "sequence_mask": ("mis", "sequence"),
}  # fmt: skip
# TRL keys read below, or HF Trainer plumbing with no effect on what is learned
HANDLED = {
    "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "steps_per_generation", "generation_batch_size", "epsilon_high", "loss_type",
    "importance_sampling_level", "scale_rewards", "lr_scheduler_type", "use_vllm",
    "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
    "vllm_importance_sampling_cap", "report_to", "save_steps", "top_k", "use_cpu", "bf16",
    "fp16", "logging_steps", "logging_dir", "logging_strategy", "save_strategy", "disable_tqdm",
    "log_completions", "dataloader_num_workers", "optim", "overwrite_output_dir", "do_train",
    "num_completions_to_print", "remove_unused_columns", "vllm_mode", "push_to_hub",
    # normalised by TrainingArguments.__post_init__ (differ from the field default unset)
    "accelerator_config", "activation_checkpointing", "debug", "dataloader_pin_memory",
    "pad_to_multiple_of",
}  # fmt: skip


def _defaults(trl_cfg: Any) -> dict[str, Any]:
    """The GRPOConfig class's field defaults (what a user did not set)."""
    out = {}
    for f in dataclasses.fields(trl_cfg):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _batch_keys(trl_cfg: Any, group_size: int) -> dict[str, Any]:
    """Prompts per iteration, minibatch and iterations from TRL's step accounting."""
    per_update = int(trl_cfg.per_device_train_batch_size) * int(
        getattr(trl_cfg, "gradient_accumulation_steps", 1) or 1
    )
    gen_batch = getattr(trl_cfg, "generation_batch_size", None) or per_update * int(
        getattr(trl_cfg, "steps_per_generation", None) or 1
    )
    out: dict[str, Any] = {
        "prompts_per_step": max(int(gen_batch) // group_size, 1),
        "minibatch_size": per_update,
    }
    max_steps = int(getattr(trl_cfg, "max_steps", -1) or -1)
    if max_steps > 0:  # optimizer steps -> generation rounds
        epochs = int(getattr(trl_cfg, "num_iterations", 1) or 1)
        updates_per_iteration = max(math.ceil(gen_batch / per_update) * epochs, 1)
        out["steps"] = max(math.ceil(max_steps / updates_per_iteration), 1)
    return out


def _loss_keys(trl_cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    loss_type = getattr(trl_cfg, "loss_type", "dapo")
    if loss_type in LOSS_TYPES:
        out["policy_loss"], out["loss_agg"] = LOSS_TYPES[loss_type]
    if getattr(trl_cfg, "importance_sampling_level", "token") == "sequence":
        out["policy_loss"] = "gspo"
    high = getattr(trl_cfg, "epsilon_high", None)
    out["clip_eps_high"] = float(trl_cfg.epsilon if high is None else high)
    scale = getattr(trl_cfg, "scale_rewards", "group")
    out["scale_adv_by_std"] = scale not in (False, "none", "false")
    if getattr(trl_cfg, "beta", 0.0):
        out["kl_lambda"], out["kl_estimator"] = 1.0, "k3"  # TRL: k3 to the reference model
    schedule = str(getattr(trl_cfg, "lr_scheduler_type", "linear")).split(".")[-1].lower()
    if schedule in ("constant", "cosine", "linear", "constant_with_warmup"):
        out["lr_schedule"] = "constant" if schedule.startswith("constant") else schedule
    return out


def _engine_keys(trl_cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(trl_cfg, "use_vllm", False):
        out["rollout_engine"] = "vllm"
        if getattr(trl_cfg, "vllm_importance_sampling_correction", False):
            mode = getattr(trl_cfg, "vllm_importance_sampling_mode", "sequence_mask")
            if mode in IS_MODES:
                out["rollout_correction"], out["rollout_correction_level"] = IS_MODES[mode]
            out["rollout_correction_threshold"] = float(
                getattr(trl_cfg, "vllm_importance_sampling_cap", 2.0)
            )
    report = getattr(trl_cfg, "report_to", None)
    if isinstance(report, str):
        report = [report]
    if report is not None:
        out["report_to"] = [r for r in report if r not in ("none", "all")]
    return out


def from_trl(trl_cfg: Any, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig (from ``base``, default: the defaults) with every TRL key that has a
    counterpart carried over; the rest, when set away from TRL's default, in one warning."""
    from remix_rft.trainer.config import build_config

    values = {ours: getattr(trl_cfg, theirs) for theirs, ours in SAME_VALUE.items()
              if hasattr(trl_cfg, theirs)}  # fmt: skip
    values = {k: v for k, v in values.items() if v is not None}
    group = int(values.get("group_size", (base or TrainConfig()).group_size))
    values.update(_batch_keys(trl_cfg, group))
    values.update(_loss_keys(trl_cfg))
    values.update(_engine_keys(trl_cfg))
    defaults = _defaults(trl_cfg)
    ignored = sorted(
        k for k, default in defaults.items()
        if k not in SAME_VALUE and k not in HANDLED and getattr(trl_cfg, k, default) != default
    )  # fmt: skip
    if ignored:
        log.warning("TrainConfig.from_trl: these GRPOConfig keys have no remix-rft counterpart "
                    "and are ignored: %s", ", ".join(ignored))  # fmt: skip
    data = (base or TrainConfig()).to_dict()
    data.update(values)
    return build_config(data)


def to_trl_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """GRPOConfig keyword arguments for the keys with a TRL counterpart (one generation
    round of ``prompts_per_step × group_size`` per iteration, as ``benchmarks/vs_trl.py``)."""
    kwargs = {theirs: getattr(cfg, ours) for theirs, ours in SAME_VALUE.items()
              if theirs not in ("output_dir", "run_name")}  # fmt: skip
    kwargs.update(output_dir=str(cfg.resolved_out_dir()), run_name=cfg.name)
    agg_to_loss = {agg: name for name, (loss, agg) in LOSS_TYPES.items()
                   if loss == "mix-ppg" and name != "bnpo"}  # fmt: skip
    kwargs["loss_type"] = "cispo" if cfg.policy_loss == "cispo" else agg_to_loss[cfg.loss_agg]
    kwargs["importance_sampling_level"] = "sequence" if cfg.policy_loss == "gspo" else "token"
    kwargs["epsilon_high"] = cfg.clip_eps_high
    kwargs["scale_rewards"] = "group" if cfg.scale_adv_by_std else "none"
    kwargs["lr_scheduler_type"] = cfg.lr_schedule
    generation = cfg.fresh_batch_size()
    kwargs["per_device_train_batch_size"] = cfg.minibatch_size
    kwargs["steps_per_generation"] = max(generation // cfg.minibatch_size, 1)
    kwargs["max_steps"] = cfg.steps * kwargs["steps_per_generation"] * cfg.epochs
    kwargs["use_vllm"] = cfg.rollout_engine == "vllm"
    kwargs["report_to"] = list(cfg.report_to) or "none"
    return kwargs


def to_trl(cfg: TrainConfig) -> Any:
    """``trl.GRPOConfig`` of :func:`to_trl_kwargs` (needs TRL: ``pip install remix-rft[trl]``)."""
    import torch
    import trl

    kwargs = to_trl_kwargs(cfg)
    on_gpu = cfg.device != "cpu" and torch.cuda.is_available()
    kwargs.update(use_cpu=not on_gpu, bf16=on_gpu and cfg.dtype == "bfloat16")
    if "activation_checkpointing" in getattr(trl.GRPOConfig, "__dataclass_fields__", {}):
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")  # new name
    return trl.GRPOConfig(**kwargs)
