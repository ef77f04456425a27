"""`remix build-tiny`: build the embedded tiny base model shipped in ``remix_rft/assets/tiny``.

The embedded model is a ~0.8M-parameter ``Qwen2ForCausalLM`` over a character-level
tokenizer (``tiny_architecture.py``).

The model is trained by supervised finetuning on the worked solutions of the embedded
arithmetic task's train split (loss on the response tokens only, the final ``<|end|>``
included), with AdamW and a warmup + cosine-decay learning rate, **to convergence**.
The imperfection that leaves room for RL is in the data, not in an early stop: some
solutions are sloppy -- they box the sum inside the parentheses and skip the final
multiplication -- 15% of them when the final factor is 1-3 and 75% when it is 4-9
(``--shortcut-rates``). The base model therefore knows every step but, greedily, takes
the shortcut whenever the final factor is large, and the shortcut is right only when
that factor is 1. RL has to learn that finishing the work pays. (An early-stopped base -- still bad at the arithmetic
itself -- gave RL far less to work with: 0.36 -> 0.51 in 250 GRPO iterations.)

The saved files are reloaded from disk and evaluated again, and ``build_info.json``
records the seed, steps, accuracies (greedy on 200 and 500 held-out problems, sampled
at temperature 1, the share of complete chains), time and size. Training is
deterministic given the seed (no dropout, a fixed batch order).

Library functions log; only :func:`run` (the CLI entry point) prints and shows progress.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remix_rft.apps.args import add_seed, fraction, positive_float, positive_int
from remix_rft.apps.tiny_architecture import (
    build_model,
    build_tokenizer,
    num_parameters,
    save_tokenizer,
)
from remix_rft.apps.tiny_sft import (
    SFTSettings,
    evaluate,
    greedy_responses,
    response_stats,
    train_sft,
)
from remix_rft.data.arithmetic import ArithmeticSpec, ArithmeticTask
from remix_rft.data.tasks import Problem
from remix_rft.engines.models import EMBEDDED_HARD_MODEL_DIR, EMBEDDED_MODEL_DIR

log = logging.getLogger(__name__)


# Defaults of the build (the shipped model was built with these; see build_info.json).
DEFAULT_STEPS = 1500  # to convergence: the complete chain is learned (~0.97 greedy)
# Chance of a sloppy SFT solution for a small / large final factor (see sft_examples).
DEFAULT_SHORTCUT_RATES = (0.15, 0.75)
ACCEPT_BAND = (0.15, 0.50)  # the promise about the shipped base (whole held-out split)
HARD_SHORTCUT_RATES = (0.5, 0.98)
HARD_ACCEPT_BAND = (0.05, 0.35)
EVAL_PROBLEMS = 200


@dataclass(frozen=True)
class BuildPreset:
    """A shipped base: where it goes, its SFT mixture and the band its accuracy must fall in."""

    out_dir: Path
    shortcut_rates: tuple[float, float]
    accept_band: tuple[float, float]
    about: str


PRESETS = {
    "default": BuildPreset(
        EMBEDDED_MODEL_DIR,
        DEFAULT_SHORTCUT_RATES,
        ACCEPT_BAND,
        "model: embedded -- RL only has to break the habit of skipping the last step",
    ),  # fmt: skip
    # The harder setting: with a large final factor the base finishes the work only
    # HARD_RATES[1]-rarely, so at temperature 1 most prompt groups of 8 are all wrong
    # (no group-relative signal) and on-policy GRPO needs 100+ updates to plateau.
    "hard": BuildPreset(
        EMBEDDED_HARD_MODEL_DIR,
        HARD_SHORTCUT_RATES,
        HARD_ACCEPT_BAND,
        "model: embedded-hard -- sparse reward: the base almost never finishes the work "
        "when the final factor is large",
    ),  # fmt: skip
}


# ----------------------------------------------------------------------------------- build


def _check_window(name: str, window: Sequence[float]) -> tuple[float, float]:
    low, high = (float(x) for x in window)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= low <= high <= 1, got ({low}, {high})")
    return low, high


def build_tiny(
    out_dir: str | Path = EMBEDDED_MODEL_DIR,
    *,
    seed: int = 0,
    shortcut_rates: Sequence[float] = DEFAULT_SHORTCUT_RATES,
    accept_band: Sequence[float] = ACCEPT_BAND,
    steps: int = DEFAULT_STEPS,
    lr: float = 3e-3,
    warmup_steps: int = 50,
    min_lr_ratio: float = 0.05,
    weight_decay: float = 0.01,
    batch_size: int = 64,
    eval_every: int = 250,
    eval_problems: int = EVAL_PROBLEMS,
    spec: ArithmeticSpec | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the tiny base model to convergence on the SFT mixture, save and verify it.

    Returns the build metrics (also written to ``out_dir/build_info.json``), among them
    ``accuracy_200`` and ``accuracy_500`` (greedy pass@1 of the reloaded files on the
    first 200 and on all held-out problems), ``sampled_accuracy_200`` (temperature 1)
    and ``complete_rate_200`` (share of greedy answers that finish the work). Raises
    ``RuntimeError`` -- and leaves ``out_dir`` untouched -- if the greedy accuracy on the
    whole held-out split is outside ``accept_band``. ``recipe`` (how it was asked for: the
    preset, the command line) is recorded in ``build_info.json`` as it is.
    """
    accept_low, accept_high = _check_window("accept_band", accept_band)
    rates = (float(shortcut_rates[0]), float(shortcut_rates[1]))
    hp = SFTSettings(steps, lr, warmup_steps, min_lr_ratio, weight_decay, batch_size, eval_every)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    torch.manual_seed(seed)

    task = ArithmeticTask(spec)
    held_out = task.eval_problems()
    eval_set = held_out[:eval_problems]
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    n_params = num_parameters(model)
    log.info("tiny model: %d parameters, vocabulary %d", n_params, len(tokenizer))
    examples = task.sft_examples(rates, seed=seed)
    loss_value, history = train_sft(model, tokenizer, task, examples, eval_set, hp, seed,
                                     progress)  # fmt: skip
    info: dict[str, Any] = {
        "seed": seed, "steps": steps, "parameters": n_params, "final_loss": loss_value,
        "train_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "accept_band": [accept_low, accept_high], "shortcut_rates": list(rates),
        "hyperparameters": hp.record(),
        "task": {"name": task.name, **vars(task.spec)},
        "recipe": dict(recipe or {}),
        "history": history,
    }  # fmt: skip
    info = _save_verified(model, tokenizer, task, eval_set, out_dir, info, started)
    log.info(
        "built %s: %d steps, accuracy %.3f (%d) / %.3f (%d), sampled %.3f, %.0fs",
        out_dir, steps, info["accuracy_200"], len(eval_set), info["accuracy_500"],
        len(held_out), info["sampled_accuracy_200"], info["total_seconds"],
    )  # fmt: skip
    return info


def _save_verified(
    model: Any,
    tokenizer: Any,
    task: ArithmeticTask,
    eval_set: Sequence[Problem],
    out_dir: Path,
    info: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """Save next to ``out_dir``, measure the files as reloaded from disk, and move them in
    place only if the greedy accuracy on the whole held-out split is in the accept band."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    held_out = task.eval_problems()
    accept_low, accept_high = info["accept_band"]
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-tiny-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        save_tokenizer(tokenizer, staging)
        reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32)
        reloaded_tok = AutoTokenizer.from_pretrained(staging)
        # One greedy pass over the held-out split; the first problems are its head.
        texts = greedy_responses(reloaded, reloaded_tok, held_out)
        first = response_stats(task, texts[: len(eval_set)], eval_set)
        accuracy_all = response_stats(task, texts, held_out)["accuracy"]
        sampled = evaluate(reloaded, reloaded_tok, task, eval_set, temperature=1.0,
                           seed=info["seed"])  # fmt: skip
        # Keys with "_200"/"_500" name the nominal sizes; the counts are recorded beside them.
        info = {
            **info,
            "weights_bytes": (staging / "model.safetensors").stat().st_size,
            "accuracy_200": first["accuracy"], "complete_rate_200": first["complete_rate"],
            "accuracy_complete_200": first["accuracy_complete"], "accuracy_500": accuracy_all,
            "eval_problems": len(eval_set), "final_eval_problems": len(held_out),
            "sampled_accuracy_200": sampled,
            "total_seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        (staging / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
        if not accept_low <= accuracy_all <= accept_high:
            raise RuntimeError(
                f"the built model's greedy accuracy on {len(held_out)} held-out problems is "
                f"{accuracy_all:.3f}, outside [{accept_low}, {accept_high}]; "
                f"nothing was written to {out_dir} (try other --shortcut-rates or another --seed)"
            )
        for path in sorted(staging.iterdir()):
            path.chmod(0o644)  # package data: readable by everyone
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


# ------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    """Add the ``build-tiny`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "build-tiny",
        help="rebuild the embedded tiny base model (SFT on arithmetic, some solutions sloppy)",
        description=(
            "Train the embedded ~0.8M-parameter Qwen2 model to convergence on the arithmetic "
            "task's worked solutions, a fraction of which stop before the final "
            "multiplication; then verify the saved files on the whole held-out split "
            "and write build_info.json."
        ),
    )
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="default",
        help="which shipped base: "
        + "; ".join(f"{name} ({p.about})" for name, p in PRESETS.items())
        + ". It sets the defaults of --out, --shortcut-rates and --accept",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output directory (default: the preset's directory in the package)",
    )
    add_seed(parser)
    _add_mixture_arguments(parser)
    _add_sft_arguments(parser)
    parser.set_defaults(func=run)


def _add_mixture_arguments(parser: argparse.ArgumentParser) -> None:
    """What the base is made of and what it must score: the preset's values by default."""
    parser.add_argument(
        "--shortcut-rates",
        type=fraction,
        nargs=2,
        default=None,
        metavar=("SMALL", "LARGE"),
        help="chance that an SFT solution skips the final multiplication when the final "
        "factor is small (1-3) / large (default: the preset's, "
        + ", ".join(f"{n} {list(p.shortcut_rates)}" for n, p in PRESETS.items())
        + ")",
    )
    parser.add_argument(
        "--accept",
        type=fraction,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="required greedy accuracy on the whole held-out split (default: the preset's, "
        + ", ".join(f"{n} {list(p.accept_band)}" for n, p in PRESETS.items())
        + ")",
    )


def _add_sft_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=DEFAULT_STEPS,
        help="SFT steps; the LR decays to 5%% over them (default: %(default)s)",
    )
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=50, help="linear LR warmup steps")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="SFT batch size")
    parser.add_argument(
        "--eval-every", type=positive_int, default=250, help="steps between evaluations"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's own choice)",
    )
    parser.add_argument(
        "--eval-problems",
        type=positive_int,
        default=EVAL_PROBLEMS,
        help="held-out problems of the periodic evaluations (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``remix build-tiny``; returns the exit code."""
    from tqdm import tqdm

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    out_dir = args.out or preset.out_dir
    bar = tqdm(total=args.steps, desc="build-tiny", unit="step", dynamic_ncols=True)
    postfix: dict[str, str] = {}

    def progress(step: int, metrics: dict[str, float]) -> None:
        bar.n = step
        postfix["loss"] = f"{metrics['loss']:.3f}"
        if "accuracy" in metrics:
            postfix["acc"] = f"{metrics['accuracy']:.3f}"
            postfix["complete"] = f"{metrics['complete_rate']:.2f}"
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    try:
        info = build_tiny(
            out_dir,
            seed=args.seed,
            shortcut_rates=args.shortcut_rates or preset.shortcut_rates,
            accept_band=args.accept or preset.accept_band,
            steps=args.steps,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            batch_size=args.batch_size,
            eval_every=args.eval_every,
            eval_problems=args.eval_problems,
            progress=progress,
            recipe={
                "preset": args.preset,
                "command": "remix build-tiny " + " ".join(sys.argv[2:]),
                "torch": torch.__version__,
                "cpu_count": os.cpu_count(),
            },
        )
    except (RuntimeError, ValueError) as exc:
        bar.close()
        print(f"remix build-tiny: error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    print(
        f"built {out_dir}: {info['parameters']:,} parameters "
        f"({info['weights_bytes'] / 1e6:.1f} MB), {info['steps']} steps, "
        f"{info['total_seconds']:.0f}s\n"
        f"greedy pass@1: {info['accuracy_200']:.3f} on {info['eval_problems']} held-out, "
        f"{info['accuracy_500']:.3f} on {info['final_eval_problems']}; "
        f"sampled (T=1): {info['sampled_accuracy_200']:.3f} on {info['eval_problems']}\n"
        f"greedy answers doing every step: {info['complete_rate_200']:.2f}, "
        f"of which correct: {info['accuracy_complete_200']:.3f}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m remix_rft.apps.build_tiny``, usable before the ``remix`` CLI wires it."""
    parser = argparse.ArgumentParser(prog="remix")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["build-tiny", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
