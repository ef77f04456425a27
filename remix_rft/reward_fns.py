"""User reward functions named by a spec, ``path/to/file.py:function`` or
``package.module:function``: parsing and loading the spec, and checking what the function
returned. :mod:`remix_rft.reward_pool` runs them in its workers; the config checks use the
spec parser to name a bad ``task.reward_fn`` before a run starts.

The contract (docs/your-own-task.md): ``fn(response: str, problem: dict)`` is called on every
response, those cut at ``max_new_tokens`` included; a function that also takes a ``truncated``
keyword (or ``**kwargs``) gets ``truncated=True`` for a cut response and ``False`` otherwise,
and one that takes ``completion_ids`` gets the token ids the policy generated (EOS included)
where the caller has them (training; not held-out evaluation).
It returns a finite number (a bool counts as 0/1)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
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


# ---------------------------------------------------------------------------- the contract

TRUNCATED_KEYWORD = "truncated"
COMPLETION_IDS_KEYWORD = "completion_ids"


def _signature(fn: RewardFn) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable without one: not checked
        return None


def accepts_truncated(fn: RewardFn) -> bool:
    """Whether ``fn`` takes the ``truncated`` keyword (by name or through ``**kwargs``)."""
    return accepts_keyword(fn, TRUNCATED_KEYWORD)


def accepts_keyword(fn: RewardFn, keyword: str) -> bool:
    """Whether ``fn`` takes ``keyword`` (by name or through ``**kwargs``)."""
    try:
        return _accepts_keyword(fn, keyword)
    except TypeError:  # an unhashable callable: not cached
        return _accepts_keyword.__wrapped__(fn, keyword)


@functools.lru_cache(maxsize=64)  # asked once per graded response
def _accepts_keyword(fn: RewardFn, keyword: str) -> bool:
    sig = _signature(fn)
    if sig is None:
        return False
    for param in sig.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if param.name == keyword and param.kind is not inspect.Parameter.POSITIONAL_ONLY:
            return True
    return False


def call_reward(
    fn: RewardFn,
    response: str,
    problem: Any,
    truncated: bool,
    completion_ids: list[int] | None = None,
) -> Any:
    """``fn(response, problem)``, with ``truncated=`` when ``fn`` takes it, and
    ``completion_ids=`` when given and ``fn`` takes it."""
    kwargs: dict[str, Any] = {}
    if accepts_truncated(fn):
        kwargs[TRUNCATED_KEYWORD] = truncated
    if completion_ids is not None and accepts_keyword(fn, COMPLETION_IDS_KEYWORD):
        kwargs[COMPLETION_IDS_KEYWORD] = completion_ids
    return fn(response, problem, **kwargs)


def where_defined(fn: RewardFn) -> str:
    """``file:line`` of the function's ``def`` (``?`` when Python cannot tell)."""
    target = inspect.unwrap(fn)
    code = getattr(target, "__code__", None)
    if code is None and not inspect.isroutine(target):  # a callable object: its __call__
        code = getattr(type(target).__call__, "__code__", None)
    if code is None:
        return "?"
    return f"{code.co_filename}:{code.co_firstlineno}"


def check_signature(fn: RewardFn, spec: str) -> None:
    """RewardError when ``fn`` cannot be called as ``fn(response, problem)`` (plus the
    ``truncated`` keyword when it names one)."""
    sig = _signature(fn)
    if sig is None:
        return
    kwargs = {TRUNCATED_KEYWORD: False} if accepts_truncated(fn) else {}
    try:
        sig.bind("response", {}, **kwargs)
    except TypeError as exc:
        raise RewardError(
            f"reward function {spec} ({where_defined(fn)}) has the signature {sig}, but is "
            f"called as fn(response: str, problem: dict[, truncated: bool]): {exc}"
        ) from None


def failure_site(tb: TracebackType | None, fn: RewardFn) -> str:
    """``file:line`` where an exception left the user's code: the innermost frame in the
    function's own file, else the innermost frame of all."""
    frames = traceback.extract_tb(tb) if tb is not None else []
    if not frames:
        return where_defined(fn)
    own_file = where_defined(fn).rpartition(":")[0]
    own = [f for f in frames if f.filename == own_file]
    frame = (own or frames)[-1]
    return f"{frame.filename}:{frame.lineno}"


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, shortened to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
