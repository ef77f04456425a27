"""The ``remix`` command: train, eval, compare, demo, build-tiny."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from remix_rft import __version__
from remix_rft.apps.progress import TrainProgress, fmt

EXIT_USAGE = 2


def _train_command(args: argparse.Namespace) -> int:
    from remix_rft.engines.rollout import EngineError
    from remix_rft.trainer.config import (
        ConfigError,
        build_config,
        load_config,
        parse_overrides,
        read_yaml,
    )
    from remix_rft.trainer.loop import NonFiniteTrainingError, resume, train

    if args.help_config:
        return _print_config_help()
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                raise ConfigError(f"--resume: {run_dir} holds no config.yaml (not a run directory)")
            overrides = parse_overrides(([args.config] if args.config else []) + args.overrides)
            cfg = build_config(read_yaml(run_dir / "config.yaml"), overrides)
        else:
            if not args.config:
                raise ConfigError(
                    "give a CONFIG.yaml (e.g. configs/tiny-grpo.yaml) or --resume RUN_DIR"
                )
            cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"remix train: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        from remix_rft.trainer.plan import print_plan

        return print_plan(cfg)
    from remix_rft.engines.distributed import shutdown

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 shows progress
    progress = TrainProgress(cfg.steps, 0, cfg.name) if main_rank else None
    try:
        if args.resume:
            summary = resume(Path(args.resume), cfg, on_step=progress)
        else:
            summary = train(cfg, on_step=progress)
    except (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        NonFiniteTrainingError,
        EngineError,
    ) as err:
        if progress is not None:
            progress.close()
        print(f"remix train: error: {err}", file=sys.stderr)
        shutdown()
        return 1 if isinstance(err, NonFiniteTrainingError) else EXIT_USAGE
    shutdown()
    if progress is None:
        return 0
    progress.close()
    print(
        f"{summary['algorithm']}: held-out accuracy {fmt(summary['base_eval_accuracy'])} -> "
        f"{fmt(summary['final_eval_accuracy'])} after {summary['steps']} steps, "
        f"{summary['rollouts']} rollouts, {summary['wall_time_s']:.0f} s  "
        f"(run: {cfg.resolved_out_dir()})"
    )
    return 0


def _add_train(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a policy with GRPO, PPO or ReMix")
    p.add_argument("config", nargs="?", help="YAML config, e.g. configs/tiny-grpo.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-5 out_dir=runs/x")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument(
        "--dry-run", action="store_true", help="validate config, data and tokenizer; print the plan"
    )
    p.add_argument(
        "--help-config", action="store_true",
        help="print every config key, by section, with its type, default and help",
    )  # fmt: skip
    p.set_defaults(func=_train_command)


def _print_config_help() -> int:
    from remix_rft.trainer.config import TrainConfig
    from remix_rft.trainer.config_sections import help_lines

    print("Config keys: flat (lr: 1e-5) or in their section (optim: {lr: 1e-5}); key=value")
    print("overrides take either spelling (optim.lr=1e-5).\n")
    print("\n".join(help_lines(TrainConfig, TrainConfig())))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remix", description="Rollout-efficient RL finetuning: GRPO, PPO and ReMix."
    )
    parser.add_argument("--version", action="version", version=f"remix-rft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    from remix_rft.apps import build_tiny, compare, demo, evaluate

    evaluate.add_parser(sub)
    compare.add_parser(sub)
    demo.add_parser(sub)
    build_tiny.add_parser(sub)
    return parser


def _normalise_argv(argv: list[str]) -> list[str]:
    """Accept ``remix train key=value CONFIG`` orderings: a *.yaml argument is the config."""
    if argv[:1] == ["train"]:
        rest = argv[1:]
        yamls = [a for a in rest if a.endswith((".yaml", ".yml")) and "=" not in a]
        if yamls:
            rest = [yamls[0]] + [a for a in rest if a is not yamls[0]]
        return ["train", *rest]
    return argv


def _quiet_library_progress() -> None:
    """transformers draws a bar for every checkpoint write; ours is the one to watch."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_library_progress()
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return int(args.func(args) or 0)


if __name__ == "__main__":  # `python -m remix_rft.cli` as well as `python -m remix_rft`
    sys.exit(main())
