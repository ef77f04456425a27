"""The TRL side of ``vs_trl.py``: TRL's ``GRPOTrainer`` (or, ``trl-remix``,
``remix_rft.integrations.trl.ReMixGRPOTrainer``) configured like our tiny-grpo run, with the
same held-out evaluation and timings as ``vs_trl_runs.run_ours``."""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from vs_trl_runs import (
    CONFIGS,
    EVAL_KEY,
    WALL_KEY,
    HeldOut,
    Row,
    RunResult,
    model_path,
    progress,
    with_training_clock,
)

from remix_rft.data.arithmetic import ArithmeticTask
from remix_rft.data.prompts import format_prompt
from remix_rft.engines.generation import eos_token_ids

TRL_MISSING = "TRL is not installed; install the benchmark extra: pip install -e .[bench]"

log = logging.getLogger("vs_trl")


def import_trl() -> Any:
    try:
        import trl
    except ImportError as err:
        raise SystemExit(TRL_MISSING) from err
    if not hasattr(trl, "GRPOTrainer") or not hasattr(trl, "GRPOConfig"):
        raise SystemExit(
            f"TRL {getattr(trl, '__version__', '?')} has no GRPOTrainer; "
            "pip install -e .[bench] for a recent TRL"
        )
    return trl


def trl_config(trl: Any, cfg: Any, seed: int, args: argparse.Namespace, out_dir: Path) -> Any:
    """GRPOConfig matching our config; fields this TRL version lacks are dropped with a note."""
    fields = {
        "output_dir": str(out_dir),
        "seed": seed,
        "max_steps": args.steps,
        "learning_rate": cfg.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": cfg.weight_decay,
        "adam_beta1": cfg.adam_beta1,
        "adam_beta2": cfg.adam_beta2,
        "max_grad_norm": cfg.max_grad_norm,
        "optim": "adamw_torch",  # ours: torch.optim.AdamW
        # one iteration = 16 prompts x 8 = 128 rollouts = one optimizer update on all of them
        "per_device_train_batch_size": cfg.fresh_batch_size(),
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,
        "num_iterations": 1,
        "num_generations": cfg.group_size,
        "max_completion_length": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "beta": cfg.kl_coef,
        "epsilon": cfg.clip_eps_low,
        "epsilon_high": cfg.clip_eps_high,
        "loss_type": "dapo",  # token-mean over the whole (global) batch
        "scale_rewards": "group" if cfg.scale_adv_by_std else "none",
        "mask_truncated_completions": False,
        "gradient_checkpointing": False,
        "bf16": False,
        "fp16": False,
        "use_cpu": not torch.cuda.is_available(),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "log_completions": False,
    }
    known = getattr(trl.GRPOConfig, "__dataclass_fields__", {})
    dropped = sorted(k for k in fields if known and k not in known)
    if "steps_per_generation" in dropped:  # older TRL: one generation per optimizer step anyway
        dropped.remove("steps_per_generation")
    if dropped:
        log.warning("this TRL's GRPOConfig lacks %s; using its defaults", ", ".join(dropped))
    kwargs = {k: v for k, v in fields.items() if not known or k in known}
    scale = known.get("scale_rewards")
    if scale is not None and "bool" in str(scale.type) and "str" not in str(scale.type):
        kwargs["scale_rewards"] = cfg.scale_adv_by_std  # TRL < 0.22: a bool
    if "loss_type" in dropped:
        raise SystemExit("this TRL has no loss_type; token-mean aggregation cannot be matched")
    return trl.GRPOConfig(**kwargs)


def run_trl(
    seed: int, rnd: int, args: argparse.Namespace, work: Path, method: str = "trl"
) -> RunResult:
    """TRL's GRPOTrainer, or (``trl-remix``) remix_rft.integrations.trl.ReMixGRPOTrainer with
    tiny-remix-grpo's ReMix keys on TRL's generation, rewards and optimizer."""
    trl = import_trl()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remix_rft.trainer.config import load_config

    cfg = load_config(CONFIGS[method], [f"seed={seed}"])
    path = model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    task = ArithmeticTask()
    problems, dataset = _arithmetic_dataset(task, tokenizer)
    res = RunResult(method, seed, rnd, cfg.fresh_batch_size())
    reward = _arithmetic_reward(task, problems, eos_token_ids(model, tokenizer), res)
    evaluate = HeldOut(task, tokenizer, args.eval_problems, cfg.max_new_tokens)
    raw: list[Row] = []
    step_s: dict[int, float] = {}
    clock: dict[str, float] = {"begin": 0.0, "gen": 0.0, "train_begin": 0.0}
    timing = _timing_callback(res, evaluate, args, raw, step_s, clock)

    extra: dict[str, Any] = {}
    trainer_cls = trl.GRPOTrainer
    if method == "trl-remix":
        from remix_rft.integrations.trl import ReMixGRPOTrainer

        trainer_cls, extra = ReMixGRPOTrainer, {"remix": cfg}
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward,
        args=trl_config(trl, cfg, seed, args, work / f"{method}-s{seed}-r{rnd}"),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timing],
        **extra,
    )
    try:  # no per-step log dicts on stdout; our progress lines say enough
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    except ImportError:
        pass
    timing.gen_wrapped = _time_generation(trainer, clock)
    started = time.perf_counter()
    trainer.train()
    res.run_s = time.perf_counter() - started
    res.rows = with_training_clock(raw, step_s)
    if not timing.gen_wrapped:
        res.notes = "generation time not measured (TRL internals differ)"
    return res


def _arithmetic_dataset(task: ArithmeticTask, tokenizer: Any) -> tuple[list[Any], Any]:
    """The task's training problems and TRL's dataset of them: the formatted prompt and the
    problem's index, which TRL hands back to the reward function."""
    from datasets import Dataset

    problems = list(task.train_problems())
    dataset = Dataset.from_dict(
        {
            "prompt": [format_prompt(tokenizer, p.prompt) for p in problems],
            "problem_index": list(range(len(problems))),
        }
    )
    return problems, dataset


def _arithmetic_reward(
    task: ArithmeticTask, problems: Sequence[Any], eos_ids: Any, res: RunResult
) -> Callable[..., list[float]]:
    """TRL's reward function for the task; it also records each batch's mean reward in
    ``res.rewards``. (TRL names its reward metrics after this inner function.)"""

    def arithmetic_reward(
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        problem_index: Sequence[int],
        **_: Any,
    ) -> list[float]:
        rewards = []
        for text, ids, idx in zip(completions, completion_ids, problem_index, strict=True):
            finished = len(ids) > 0 and int(ids[-1]) in eos_ids  # TRL cuts after the first EOS
            rewards.append(task.reward(text, problems[idx]) if finished else 0.0)
        res.rewards.append(sum(rewards) / max(len(rewards), 1))
        return rewards

    return arithmetic_reward


def _timing_callback(
    res: RunResult,
    evaluate: HeldOut,
    args: argparse.Namespace,
    raw: list[Row],
    step_s: dict[int, float],
    clock: dict[str, float],
) -> Any:
    """A TrainerCallback that times every iteration into ``res``/``step_s`` and evaluates at
    the start and every ``--eval-every`` steps, as our trainer does. Its ``gen_wrapped`` is
    set once the trainer exists (whether ``clock['gen']`` measures generation)."""
    from transformers import TrainerCallback

    method, seed = res.method, res.seed

    class Timing(TrainerCallback):  # type: ignore[misc]
        gen_wrapped = False

        def _eval(self, model: Any, step: int) -> None:
            started = time.perf_counter()
            acc = evaluate(model)
            res.eval_s += time.perf_counter() - started
            raw[-1][EVAL_KEY] = acc
            raw[-1][WALL_KEY] = time.perf_counter() - clock["train_begin"]
            progress(method, seed, step, args.steps, acc, step_s.get(step))

        def on_train_begin(self, a: Any, state: Any, control: Any, model: Any = None, **kw: Any):
            res.threads = torch.get_num_threads()
            clock["train_begin"] = time.perf_counter()
            raw.append({"step": 0, "rollouts": 0})
            self._eval(model, 0)

        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any):
            clock["gen"] = 0.0
            clock["begin"] = time.perf_counter()

        def on_step_end(self, a: Any, state: Any, control: Any, model: Any = None, **kw: Any):
            step = int(state.global_step)
            step_s[step] = time.perf_counter() - clock["begin"]
            res.step_s.append(step_s[step])
            res.gen_s.append(clock["gen"] if self.gen_wrapped else math.nan)
            raw.append({"step": step, "rollouts": step * res.rollouts_per_iter,
                        WALL_KEY: time.perf_counter() - clock["train_begin"]})  # fmt: skip
            if step % args.eval_every == 0 or step == args.steps:
                self._eval(model, step)
            else:
                progress(method, seed, step, args.steps, None, step_s[step])

    return Timing()


def _time_generation(trainer: Any, clock: dict[str, float]) -> bool:
    """Accumulate the time of TRL's generate call into ``clock['gen']`` (best effort)."""
    for name in ("_generate_single_turn", "_generate"):
        inner: Callable[..., Any] | None = getattr(trainer, name, None)
        if inner is None:
            continue

        def timed(*a: Any, _inner: Callable[..., Any] = inner, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                clock["gen"] += time.perf_counter() - started

        setattr(trainer, name, timed)
        return True
    return False
