"""TRL's reward protocol on remix-rft's reward pool (issue #35).

A TRL reward function is ``fn(prompts, completions, completion_ids, **columns) ->
list[float | None]``: called on a batch, every argument a list with one entry per completion,
the dataset's other columns arriving as keyword arguments, ``None`` meaning "does not apply
to this sample"; it may be ``async``. Several are combined with weights, TRL's way: the
weighted sum over the functions that did not return None (all None: 0).

remix-rft's pool (:mod:`remix_rft.reward_pool`) runs one function per item,
``fn(response, problem_dict)``, in worker processes that import it by a spec string. This
module bridges the two without touching the pool: the functions, weights and the dataset
layout are encoded into the *name* of a function of this module
(``remix_rft.reward_protocol:trl_<hex JSON>``), which the module-level ``__getattr__`` turns
back into a :class:`TrlRewardAdapter` in whichever process imports it. So the spec is a
plain string a config file (``task.reward_funcs``) and ``remix train --resume`` can carry,
and the workers still isolate the user's code (time limit, crashes).

Each item is one call with lists of length 1: the pool grades items in parallel workers.
``completion_ids`` are the token ids the policy generated for the completion, passed by the
trainer through the pool (``RewardPool.score(..., completion_ids=)``): the EOS token
included when the response ended with one, no padding, as TRL's GRPOTrainer gives them (it
keeps completion tokens up to and including the first EOS, and tells a truncated completion
by its last id not being EOS). A caller without the generated ids (held-out evaluation,
``remix eval``, a direct pool call) gets the completion re-tokenized with the run's
tokenizer instead (the text the function sees, without special tokens, so no EOS).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remix_rft.reward_fns import RewardError, load_reward_fn, parse_reward_spec, score_problem

SPEC_MODULE = __name__
SPEC_PREFIX = "trl_"
_SPEC_RE = re.compile(re.escape(SPEC_MODULE) + r":" + SPEC_PREFIX + r"[0-9a-f]+")
# keys of a problem dict that are not dataset columns (data/tasks.py Problem.as_dict)
_PROBLEM_KEYS = ("id", "prompt", "answer")
HOW_TO_PASS = (
    "define it with `def` at the top level of an importable module or of your script "
    '(guard the script\'s training code with `if __name__ == "__main__":`, the reward '
    "workers import the script), or pass it as 'module:function' / 'path/to/file.py:function'"
)


@dataclass(frozen=True)
class RewardFuncs:
    """TRL-protocol reward functions by spec, their weights, and how rows are laid out."""

    funcs: tuple[str, ...]
    weights: tuple[float, ...]
    answer_key: str = ""  # the column that became Problem.answer ("" : none did)
    tokenizer: str = ""  # model directory (or hub id) whose tokenizer gives completion_ids

    def spec(self) -> str:
        """This as a pool spec: a function name of this module that encodes it."""
        payload = json.dumps(
            {"funcs": list(self.funcs), "weights": list(self.weights),
             "answer_key": self.answer_key, "tokenizer": self.tokenizer},
            sort_keys=True, separators=(",", ":"),
        )  # fmt: skip
        return f"{SPEC_MODULE}:{SPEC_PREFIX}{payload.encode().hex()}"

    @classmethod
    def from_name(cls, name: str) -> RewardFuncs:
        data = json.loads(bytes.fromhex(name.removeprefix(SPEC_PREFIX)).decode())
        return cls(
            tuple(data["funcs"]), tuple(float(w) for w in data["weights"]),
            data.get("answer_key", ""), data.get("tokenizer", ""),
        )  # fmt: skip

    def describe(self) -> str:
        return "reward_funcs [" + ", ".join(self.funcs) + "]"


def readable(message: str) -> str:
    """An error message with every encoded spec replaced by the functions it names."""

    def name(match: re.Match[str]) -> str:
        return RewardFuncs.from_name(match.group(0).rpartition(":")[2]).describe()

    return _SPEC_RE.sub(name, message)


def __getattr__(name: str) -> Any:
    """``trl_<hex>``: the adapter that spec encodes (how a worker's import finds it)."""
    if name.startswith(SPEC_PREFIX):
        return _adapter(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _adapter(name: str) -> TrlRewardAdapter:
    return TrlRewardAdapter(RewardFuncs.from_name(name))


class TrlRewardAdapter:
    """``(response, problem) -> float`` over TRL-protocol functions, one item at a time."""

    def __init__(self, spec: RewardFuncs) -> None:
        self.spec = spec
        self.fns = [load_reward_fn(s) for s in spec.funcs]
        # loaded now, in the worker's start-up, not inside an item's time limit
        self._encode = _encoder(spec.tokenizer) if spec.tokenizer else None

    def completion_ids(self, text: str) -> list[int]:
        return [] if self._encode is None else self._encode(text)

    def columns(self, problem: Mapping[str, Any]) -> dict[str, list[Any]]:
        """The dataset's other columns, as TRL passes them: one list entry per completion."""
        out = {k: [v] for k, v in problem.items() if k not in _PROBLEM_KEYS}
        answer = problem.get("answer", "")
        if self.spec.answer_key:  # the column that became the (normalised) answer
            out[self.spec.answer_key] = [answer]
        elif answer != "":  # answer_key "": the row's own "answer" column, unchanged
            out["answer"] = [answer]
        return out

    def __call__(
        self,
        response: str,
        problem: Mapping[str, Any],
        completion_ids: list[int] | None = None,
    ) -> float:
        """``completion_ids``: the generated ids; None: ``response`` re-tokenized."""
        kwargs = self.columns(problem)
        ids = self.completion_ids(response) if completion_ids is None else list(completion_ids)
        total, seen = 0.0, False
        for spec, fn, weight in zip(self.spec.funcs, self.fns, self.spec.weights, strict=True):
            value = call_reward_fn(
                spec, fn, prompts=[problem.get("prompt")], completions=[response],
                completion_ids=[ids], **kwargs,
            )  # fmt: skip
            if value is not None:
                total, seen = total + weight * value, True
        return total if seen else 0.0  # TRL: nansum over functions, all None gives 0


def _encoder(model: str) -> Callable[[str], list[int]]:
    """Text -> token ids without special tokens: the light ``tokenizers`` library on the
    model's ``tokenizer.json`` (a reward worker has a memory cap and a start-up budget),
    transformers' AutoTokenizer for a model without one."""
    path = Path(model)
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(path / "tokenizer.json"))
        return lambda text: list(fast.encode(text, add_special_tokens=False).ids)
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(str(path))
    return lambda text: list(slow(text, add_special_tokens=False)["input_ids"])


def call_reward_fn(name: str, fn: Callable[..., Any], **kwargs: Any) -> float | None:
    """One TRL-protocol call on a batch of one; its value, None, or RewardError naming it."""
    try:
        out = fn(**kwargs)
        if inspect.isawaitable(out):
            out = asyncio.run(_awaited(out))
    except Exception as exc:  # the user's bug: name the function and the cause
        raise RewardError(f"reward function {name} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, Sequence) or isinstance(out, str) or len(out) != 1:
        shown = repr(out)[:80]
        raise RewardError(
            f"reward function {name} returned {shown}; a TRL reward function returns a list "
            "with one float (or None) per completion"
        )
    if out[0] is None:
        return None
    checked = score_problem(out[0])
    if isinstance(checked, str):
        raise RewardError(f"reward function {name} returned {checked}")
    return checked


async def _awaited(value: Any) -> Any:
    return await value


# ---- callables to specs (what the workers can import) -------------------------------------
def callable_spec(fn: Callable[..., Any] | str) -> str:
    """A spec the reward workers can import ``fn`` by, or RewardError saying how to pass it.

    Workers are separate processes: they get the function by its import path, not by
    pickling. A top-level ``def`` of a module is ``module:name``; one of the running script
    (``__main__``) is ``/path/to/script.py:name``. Lambdas, closures, bound methods and
    partials have no import path."""
    if isinstance(fn, str):
        parse_reward_spec(fn)  # RewardError for a malformed spec
        return fn
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not callable(fn) or not module or not name.isidentifier() or inspect.ismethod(fn):
        raise RewardError(f"reward function {fn!r} cannot be sent to the reward workers: "
                          + HOW_TO_PASS)  # fmt: skip
    if module == "__main__":
        script = getattr(sys.modules["__main__"], "__file__", None)
        if not script:  # an interactive session: there is no file to import
            raise RewardError(
                f"reward function {name} is defined interactively; the reward workers "
                "cannot import it: " + HOW_TO_PASS
            )
        return f"{Path(script).resolve()}:{name}"
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        found = None
    if found is not fn and getattr(found, "__wrapped__", None) is not fn:
        raise RewardError(
            f"reward function {module}.{name} is not importable under that name: " + HOW_TO_PASS
        )
    return f"{module}:{name}"


def check_signature(fn: Callable[..., Any], name: str, columns: Sequence[str]) -> None:
    """RewardError unless ``fn`` accepts TRL's call: keywords prompts, completions,
    completion_ids and one per dataset column (``**kwargs`` takes the rest)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    names = ["prompts", "completions", "completion_ids", *columns]
    try:
        sig.bind(**dict.fromkeys(names))
    except TypeError as err:
        raise RewardError(
            f"reward function {name} cannot be called as TRL calls it, "
            f"fn(prompts=..., completions=..., completion_ids=..., **columns) with columns "
            f"{list(columns)}: {err}; give it a `**kwargs` parameter"
        ) from None
