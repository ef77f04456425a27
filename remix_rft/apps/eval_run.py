"""`remix eval --run RUN_DIR [--step N]`: a run's checkpoint on the run's own held-out
problems and reward, exactly as the trainer evaluates it (``eval/accuracy``: the share of
responses whose reward is at least ``task.accuracy_threshold``; ``eval/reward_mean``).

The run's ``config.yaml`` gives the task (its ``eval_path``, or the rows held out of
``train_path``), the reward function, the prompt format and the evaluation settings; the
checkpoint (the newest, or ``--step N``) gives the policy. Every response, with its reward,
goes to ``RUN_DIR/eval/step_NNNNNN.responses.jsonl``, the numbers to ``step_NNNNNN.json``
(or ``--out``).

Library functions log; only :func:`run` (the CLI entry point) prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from remix_rft.apps.eval_results import EvalError
from remix_rft.engines.models import model_context
from remix_rft.trainer.checkpoint import checkpoint_root, checkpoint_step, list_checkpoints

EXIT_OK = 0
EXIT_USAGE = 2


def pick_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The newest checkpoint of ``run_dir``, or the one of ``step``."""
    if not (run_dir / "config.yaml").is_file():
        raise EvalError(f"--run: {run_dir} holds no config.yaml (not a run directory)")
    found = list_checkpoints(checkpoint_root(run_dir))
    if not found:
        raise EvalError(f"--run: {run_dir} holds no checkpoint (checkpoints/step_NNNNNN)")
    if step is None:
        return found[-1]
    for path in found:
        if checkpoint_step(path) == step:
            return path
    steps = ", ".join(str(checkpoint_step(p)) for p in found)
    raise EvalError(f"--step {step}: {run_dir} has checkpoints of steps {steps} only")


def response_budget(
    requested: int | None, default: int, context: int | None, longest_prompt: int
) -> tuple[int, str]:
    """New tokens per response: ``requested`` (else ``default``), never beyond what the
    model's context leaves after the longest prompt; and a note when it was lowered (or when
    a prompt alone fills the context, where the budget is kept, at most the context)."""
    wanted = requested if requested is not None else default
    if context is None:
        return wanted, ""
    room = context - longest_prompt
    if room < 1:
        budget = min(wanted, context)
        return budget, (
            f"the longest prompt takes {longest_prompt} tokens, more than the model's context "
            f"({context} positions): responses to it are unreliable ({budget} new tokens)"
        )
    if wanted <= room:
        return wanted, ""
    return room, (
        f"max new tokens lowered from {wanted} to {room}: the model's context is {context} "
        f"positions and the longest prompt takes {longest_prompt}"
    )


def _load(cfg: Any, checkpoint: Path, engine_name: str) -> tuple[Any, Any]:
    """(rollout engine, tokenizer) of the checkpoint's policy, on the run's device."""
    import torch

    from remix_rft.engines.catalog import build_engine
    from remix_rft.engines.policy import load_policy, load_tokenizer
    from remix_rft.trainer.setup import engine_options

    if (checkpoint / "dcp").is_dir():
        raise EvalError(
            f"{checkpoint} is a sharded (torchrun) checkpoint: evaluate it under torchrun "
            "with remix train's own evaluation, or convert it to an HF model first"
        )
    policy_dir = str(checkpoint / "policy")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    tokenizer = load_tokenizer(policy_dir)
    model = load_policy(policy_dir, dtype=cfg.dtype).to("cuda" if cuda else "cpu")
    model.eval()
    options = replace(engine_options(cfg, 0, lambda: [0]), model_path=policy_dir)
    return build_engine(engine_name, policy=model, tokenizer=tokenizer, options=options), tokenizer


def evaluate_run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the checkpoint; the results (also written to the results file)."""
    from remix_rft.engines import distributed
    from remix_rft.trainer.config import ConfigError, build_config, inherit, read_yaml
    from remix_rft.trainer.producer import PromptFormatter
    from remix_rft.trainer.tasks import build_task, held_out_eval

    run_dir = Path(args.run)
    checkpoint = pick_checkpoint(run_dir, args.step)
    step = checkpoint_step(checkpoint) or 0
    try:
        cfg = build_config(read_yaml(run_dir / "config.yaml"))
    except ConfigError as err:
        raise EvalError(str(err)) from None
    task = build_task(cfg.task, cfg.model, announce=False)
    try:
        problems = list(task.eval_problems())[: cfg.eval_problems]
        if not problems:
            raise EvalError(f"run {run_dir} has no held-out problems (task.eval_path)")
        engine, tokenizer = _load(cfg, checkpoint, args.engine or cfg.rollout_engine)
        prompt_text = PromptFormatter(tokenizer, cfg.task.instruction)
        longest = max(len(tokenizer(prompt_text(p), add_special_tokens=False)["input_ids"])
                      for p in problems)  # fmt: skip
        default = inherit(cfg.eval_max_new_tokens, cfg.max_new_tokens)
        budget, note = response_budget(
            args.max_new_tokens, default, model_context(str(checkpoint / "policy")), longest
        )
        if note:
            print(f"note: {note}", file=sys.stderr)
        cfg = replace(cfg, eval_max_new_tokens=budget)
        held_out = held_out_eval(
            cfg, task, problems, prompt_text, engine, distributed.setup("cpu"), step,
            keep=len(problems),
        )  # fmt: skip
    finally:
        task.close()
    return write_results(args, run_dir, step, cfg, held_out)


def write_results(
    args: argparse.Namespace, run_dir: Path, step: int, cfg: Any, held_out: Any
) -> dict[str, Any]:
    """``--out`` (default ``RUN_DIR/eval/step_NNNNNN.json``) and every response beside it."""
    out = Path(args.out) if args.out else run_dir / "eval" / f"step_{step:06d}.json"
    results = {
        "run": str(run_dir), "step": step,
        "problems": len(held_out.responses) // cfg.eval_samples,
        "accuracy": held_out.accuracy, "reward_mean": held_out.reward_mean,
        "accuracy_threshold": cfg.task.accuracy_threshold,
        "max_new_tokens": cfg.eval_max_new_tokens, "temperature": cfg.eval_temperature,
        "samples": cfg.eval_samples,
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    responses = out.with_name(out.stem + ".responses.jsonl")
    with responses.open("w", encoding="utf-8") as fh:
        for r in held_out.responses:
            row = {**asdict(r), "problem": r.problem.id}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    results["out"], results["responses"] = str(out), str(responses)
    return results


def run(args: argparse.Namespace) -> int:
    """``remix eval --run``; returns the exit code."""
    try:
        results = evaluate_run(args)
    except (EvalError, FileNotFoundError, OSError, ValueError) as err:
        print(f"remix eval: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    mode = "greedy" if results["temperature"] == 0 else f"avg@{results['samples']}"
    print(
        f"held-out accuracy {results['accuracy']:.4f} (share of rewards >= "
        f"{results['accuracy_threshold']:g}), mean reward {results['reward_mean']:.4f}: "
        f"{results['problems']} problems, step {results['step']}, {mode}, "
        f"max {results['max_new_tokens']} new tokens"
    )
    print(f"results: {results['out']}\nresponses: {results['responses']}")
    return EXIT_OK
