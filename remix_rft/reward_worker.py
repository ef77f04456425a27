"""The worker side of :mod:`remix_rft.reward_pool`: the process that imports a reward
function by its spec and grades one item at a time (``python -m remix_rft.reward_worker
--serve SPEC LIMIT``), and the per-item call with its time limit and checks, which the pool
also uses in-process (``workers=0``)."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
from contextlib import nullcontext, suppress
from typing import Any, TextIO

from remix_rft.reward_fns import (
    RewardFn,
    call_reward,
    failure_site,
    load_reward_fn,
    one_line,
    score_problem,
)
from remix_rft.rewards import verify

# The verifier of the embedded and math tasks, as a spec (run by name in the workers).
MATH_REWARD_SPEC = "remix_rft.reward_pool:math_score"
MAX_MESSAGE_CHARS = 2_000
SERVE_FLAG = "--serve"


def call_item(
    fn: RewardFn,
    response: str,
    problem: Any,
    time_limit_s: float,
    truncated: bool = False,
    completion_ids: list[int] | None = None,
) -> dict[str, Any]:
    """One item under the time limit, as the reply a worker sends (also used in-process)."""
    guard = nullcontext() if math.isinf(time_limit_s) else verify._time_limit(time_limit_s)
    try:
        with guard:
            value = call_reward(fn, response, problem, truncated, completion_ids)
    except verify.VerifyTimeout:
        return {"timeout": True}
    except MemoryError:  # over the worker's memory limit: a property of this response
        return {"crash": "MemoryError (over the worker's memory limit)"}
    except Exception as exc:
        return {
            "error": one_line(f"{type(exc).__name__}: {exc}", MAX_MESSAGE_CHARS),
            "at": failure_site(exc.__traceback__, fn),
        }
    checked = score_problem(value)
    if isinstance(checked, str):
        return {"bad": checked}
    return {"score": checked}


def _warm_up_math() -> None:
    """Import math-verify and sympy, and run a symbolic comparison once, before any clock
    starts: sympy's first simplification takes ~2 s of CPU (lazy imports and caches), which
    on a busy machine would run a worker's first real item past its limit."""
    verify._warm_up()
    verify._equal("x^2+2x+1", "(x+1)^2")


def _serve(spec: str, time_limit_s: float) -> int:
    """Worker loop: a JSON request per line on stdin, a JSON reply per line on the
    original stdout. Whatever the reward function prints goes to stderr instead."""
    replies: TextIO = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import resource

        limit = verify.WORKER_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    verify.VERIFY_ISOLATION = "inline"  # this process is the one that gets killed
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        fn = load_reward_fn(spec)
        if spec == MATH_REWARD_SPEC:
            _warm_up_math()
    except Exception as exc:
        replies.write(json.dumps({"fatal": str(exc)[:MAX_MESSAGE_CHARS]}) + "\n")
        return 1
    replies.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        reply = call_item(
            fn, request["response"], request["problem"], time_limit_s,
            bool(request.get("truncated", False)), request.get("completion_ids"),
        )  # fmt: skip
        replies.write(json.dumps(reply) + "\n")
    # stdin closed: the pool closed, or its process died (SIGKILL included). Processes the
    # function started are in this worker's group: end them with it.
    if os.getpgrp() == os.getpid():  # started by a RewardPool, as its group's leader
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with suppress(OSError):
            os.killpg(0, signal.SIGTERM)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == [SERVE_FLAG]:
    sys.exit(_serve(sys.argv[2], float(sys.argv[3])))
