"""The ``remix`` command: train, eval, compare, demo, build-tiny."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Container
from pathlib import Path
from typing import Any

from remix_rft import __version__
from remix_rft.apps.hub import offline_unless_hub_reachable
from remix_rft.apps.progress import TrainProgress, fmt

EXIT_USAGE = 2


def _train_command(args: argparse.Namespace) -> int:
    from remix_rft.trainer.preemption import (  # imports nothing heavy
        PREEMPTED_EXIT_CODE,
        PreemptionHandler,
        handled_signals,
    )

    # A preemption notice is recorded, not fatal, from the first moment: the imports and the
    # config take seconds (torch), and a notice then must still end in a clean exit 75.
    with PreemptionHandler() as early:
        if args.startup_signal:  # while main() built the parser
            early.requested, early.signal_name = True, args.startup_signal
        parsed = _train_config(args)
    early_signal = signal.Signals[early.signal_name] if early.signal_name else None
    if isinstance(parsed, int) or args.dry_run:
        if early_signal is not None:  # nothing to checkpoint: what the signal would have done
            signal.raise_signal(early_signal)
        if isinstance(parsed, int):
            return parsed
        from remix_rft.trainer.plan import print_plan

        return print_plan(parsed, _plan_hardware(args, parsed))
    cfg = parsed
    handled = handled_signals(cfg.preempt_signals)
    if early_signal is not None and early_signal not in handled:
        signal.raise_signal(early_signal)  # this run's config does not treat it as preemption
    with PreemptionHandler(cfg.preempt_signals) as preemption:  # train/resume nest theirs here
        if early_signal is not None:
            preemption.requested, preemption.signal_name = True, early_signal.name
        code = _train_run(args, cfg)
    if code == PREEMPTED_EXIT_CODE:
        for sig in handled:  # a repeated notice must not turn 75 into 143 while we exit
            signal.signal(sig, signal.SIG_IGN)
    return code


def _train_config(args: argparse.Namespace) -> Any:
    """The run's config, or the exit status when there is none to train with."""
    from remix_rft.trainer import loop  # noqa: F401  (torch, transformers: the slow imports)
    from remix_rft.trainer.config import (
        ConfigError,
        build_config,
        load_config,
        parse_overrides,
        read_yaml,
    )

    if args.help_config:
        return _print_config_help()
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                raise ConfigError(f"--resume: {run_dir} holds no config.yaml (not a run directory)")
            overrides = parse_overrides(([args.config] if args.config else []) + args.overrides)
            return build_config(read_yaml(run_dir / "config.yaml"), overrides)
        if not args.config:
            raise ConfigError(
                "give a CONFIG.yaml (e.g. configs/tiny-grpo.yaml) or --resume RUN_DIR"
            )
        return load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"remix train: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _train_run(args: argparse.Namespace, cfg: Any) -> int:
    from remix_rft.api import Trainer
    from remix_rft.engines.distributed import shutdown
    from remix_rft.engines.rollout import EngineError
    from remix_rft.trainer.checkpoint import CheckpointWriteError
    from remix_rft.trainer.loop import NonFiniteTrainingError
    from remix_rft.trainer.metrics import MetricsWriteError
    from remix_rft.trainer.preemption import PREEMPTED_EXIT_CODE, resume_hint
    from remix_rft.trainer.rollouts import ProducerError

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 shows progress
    progress = TrainProgress(cfg.steps, 0, cfg.name) if main_rank else None
    try:
        # the Python API's Trainer: the command line is one of its callers (issue #35)
        result = Trainer(args=cfg, on_step=progress).train(
            resume=args.resume, allow_config_change=args.allow_config_change
        )
        summary = result.summary.to_dict()
    except KeyboardInterrupt:  # a third Ctrl-C: the step in progress is not saved
        if progress is not None:
            progress.close()
        print("remix train: interrupted; the last complete checkpoint is kept (resume with "
              "--resume)", file=sys.stderr)  # fmt: skip
        shutdown()
        return 130  # 128 + SIGINT, as a shell reports an interrupted command
    except (CheckpointWriteError, MetricsWriteError, ProducerError) as err:
        # a full disk or a failing device: the previous checkpoint and metrics.jsonl are valid;
        # a dead producer: the run stops at the step it waited for, the checkpoint is valid
        if progress is not None:
            progress.close()
        print(f"remix train: error: {err}", file=sys.stderr)
        shutdown()
        return 1
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
    shutdown(barrier=True)
    if progress is not None:
        progress.close()
    if summary.get("preempted"):  # checkpointed at this step; the scheduler may requeue on 75
        if main_rank:
            run_dir = Path(args.resume) if args.resume else cfg.resolved_out_dir()
            hint = resume_hint(run_dir, summary["steps"] or None)
            print(f"remix train: {hint}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if progress is None:
        return 0
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
        "--allow-config-change", metavar="KEY[,KEY]", default=None,
        help="with --resume: accept changes to these keys that change what the run is "
        "(model, task, seed, algorithm, batch geometry); other changes are only listed",
    )  # fmt: skip
    p.add_argument(
        "--dry-run", action="store_true", help="validate config, data and tokenizer; print the plan"
    )
    _add_plan_flags(p)
    p.add_argument(
        "--help-config", action="store_true",
        help="print every config key, by section, with its type, default and help",
    )  # fmt: skip
    p.set_defaults(func=_train_command)


def _add_plan_flags(p: argparse.ArgumentParser) -> None:
    """The memory plan's hardware (``--dry-run`` only; not config keys)."""
    g = p.add_argument_group("memory plan (with --dry-run; docs/scale-out.md, Memory plan)")
    g.add_argument("--gpu-memory-gb", type=float, default=80.0,
                   help="memory per GPU in GiB (per process on --device cpu); default 80")
    g.add_argument("--gpus", type=int, default=8, help="data-parallel ranks; default 8")
    g.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="plan per GPU (default) or per CPU process (config device: cpu)")
    g.add_argument("--prompt-tokens", type=int, default=766,
                   help="longest prompt in tokens; default 766 (the paper's cap)")
    g.add_argument("--push", choices=("full", "streamed"), default=None,
                   help="weight push to model; default: what this version does")


def _plan_hardware(args: argparse.Namespace, cfg: Any) -> Any:
    from remix_rft.trainer.memory_plan import Hardware

    if args.gpus < 1 or args.gpu_memory_gb <= 0 or args.prompt_tokens < 1:
        return None  # print_plan reports the bad flag
    device = args.device or ("cpu" if cfg.device == "cpu" else "cuda")
    return Hardware(args.gpu_memory_gb, args.gpus, device, args.prompt_tokens, args.push or "")


def _print_config_help() -> int:
    from remix_rft.trainer.config import TrainConfig
    from remix_rft.trainer.config_checks import choice_keys
    from remix_rft.trainer.config_sections import help_lines

    print("Config keys: flat (lr: 1e-5) or in their section (optim: {lr: 1e-5}); key=value")
    print("overrides take either spelling (optim.lr=1e-5). Relative paths in a config file are")
    print("relative to the file's directory; on the command line, to the working directory.\n")
    print("\n".join(help_lines(TrainConfig, TrainConfig(), choice_keys())))
    return 0


# The subcommands of remix_rft/apps: module and one-line help (the module's own, checked by
# tests/test_config.py). A module (torch, transformers: seconds) is imported only to run its
# command or show that command's --help, so `remix --help` and `remix train --help` are instant.
APP_COMMANDS: dict[str, tuple[str, str]] = {
    "eval": (
        "remix_rft.apps.evaluate",
        "a run's checkpoint on its own held-out data, or a model on the math benchmarks",
    ),
    "compare": (
        "remix_rft.apps.compare", "compare runs: rollouts and wall-clock to a target accuracy"
    ),
    "demo": (
        "remix_rft.apps.demo",
        "on-policy GRPO vs ReMix-GRPO on the embedded model: table and plot",
    ),
    "build-tiny": (
        "remix_rft.apps.build_tiny",
        "rebuild the embedded tiny base model (SFT on arithmetic, some solutions sloppy)",
    ),
}  # fmt: skip


def build_parser(load: Container[str] | None = None) -> argparse.ArgumentParser:
    """The ``remix`` parser; of the apps' commands only those in ``load`` (None: all) are
    complete, the others are listed by name and help."""
    parser = argparse.ArgumentParser(
        prog="remix", description="Rollout-efficient RL finetuning: GRPO, PPO and ReMix."
    )
    parser.add_argument("--version", action="version", version=f"remix-rft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    for name, (module, help_text) in APP_COMMANDS.items():
        if load is None or name in load:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv``: its first word (remix's own options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


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
    from remix_rft.trainer.preemption import PreemptionHandler

    # Building an app's parser imports torch (seconds): a preemption notice meanwhile is held
    # for `remix train` (which then exits 75) and re-raised for the other commands.
    with PreemptionHandler() as startup:
        parser = build_parser(load={_command(argv)} - {None})
        args = parser.parse_args(_normalise_argv(argv))
    args.startup_signal = startup.signal_name
    if startup.signal_name and getattr(args, "func", None) is not _train_command:
        signal.raise_signal(signal.Signals[startup.signal_name])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    # before transformers/datasets are imported: offline, their retries cost a minute a run
    offline_unless_hub_reachable()
    _quiet_library_progress()
    return int(args.func(args) or 0)


if __name__ == "__main__":  # `python -m remix_rft.cli` as well as `python -m remix_rft`
    sys.exit(main())
