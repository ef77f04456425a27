"""User reward functions named by a spec, ``path/to/file.py:function`` or
``package.module:function``: parsing and loading the spec, and checking what the function
returned. :mod:`remix_rft.reward_pool` runs them in its workers; the config checks use the
spec parser to name a bad ``task.reward_fn`` before a run starts."""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RewardFn = Callable[[str, Any], Any]
# Rewards become float32 tensors (max 3.4e38): group means and standard deviations of values
# above ~1e19 overflow to inf and NaN, and the run would stop blaming the learning rate
# (issue #36.10). 1e15 leaves room for squares summed over any batch.
MAX_REWARD_MAGNITUDE = 1e15


class RewardError(ValueError):
    """A reward function that cannot be loaded, raised, or returned something not a number."""


def parse_reward_spec(spec: str) -> tuple[str, str]:
    """``"file.py:fn"`` or ``"module:fn"`` -> (file or module, function name)."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise RewardError(
            f"reward function {spec!r}: expected path/to/file.py:function or module:function"
        )
    return target, name


def is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def load_reward_fn(spec: str) -> RewardFn:
    """Import the function a spec names; errors name the spec and what is wrong."""
    target, name = parse_reward_spec(spec)
    try:
        if is_file_spec(target):
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise RewardError(f"reward function {spec!r}: file {path} does not exist")
            module_name = f"remix_user_reward_{abs(hash(str(path)))}"
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module  # dataclasses and pickling look it up
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except RewardError:
        raise
    except Exception as exc:  # the user's module failed to import: say so, with the cause
        raise RewardError(
            f"reward function {spec!r}: importing {target} failed: {type(exc).__name__}: {exc}"
        ) from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardError(f"reward function {spec!r}: {target} has no function {name!r}")
    return fn


def absolute_spec(spec: str) -> str:
    """A file spec with its path made absolute, so that workers (and a resumed run started
    from another directory) find the same file."""
    target, name = parse_reward_spec(spec)
    if not is_file_spec(target):
        return spec
    return f"{Path(target).expanduser().resolve()}:{name}"


def score_problem(value: Any) -> float | str:
    """A reward function's return value as a float, or why it is not one (the caller
    names the function and the item)."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, numbers.Real):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{shown} ({type(value).__name__}, not a number)"
    score = float(value)
    if not math.isfinite(score):
        return f"{score!r} (not a finite number)"
    if abs(score) > MAX_REWARD_MAGNITUDE:
        return (
            f"{score!r} (finite, but beyond ±{MAX_REWARD_MAGNITUDE:.0e}: rewards are float32 in "
            "training, where sums and squares of such values overflow to inf and NaN)"
        )
    return score
