"""Argument types and shared options of the ``remix`` subcommands.

A bad value is an ``argparse`` error (exit status 2) that names the flag and the value.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _number(cast: Callable[[str], float], what: str, text: str) -> float:
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def positive_int(text: str) -> int:
    value = int(_number(int, "an integer", text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(int, "an integer", text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, "a number", text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(float, "a number", text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def add_report_to(parser: argparse.ArgumentParser, what: str) -> None:
    """``--report-to tensorboard,wandb``: send ``what`` to experiment trackers too."""
    from remix_rft.trainer.trackers import TrackerError, parse_report_to

    def report_to(text: str) -> list[str]:
        try:
            return parse_report_to(text)
        except TrackerError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parser.add_argument(
        "--report-to", type=report_to, default=[], metavar="TRACKERS",
        help=f"comma-separated trackers (tensorboard, wandb): {what}",
    )  # fmt: skip
