"""Rewards graded in a pool of worker processes: per-item time limit, order kept, dead
workers replaced.

A reward function is named by a spec, ``path/to/file.py:function`` or
``package.module:function``, and called as ``function(response: str, problem: dict)``
with the problem's ``id``, ``prompt``, ``answer`` and every other field of its dataset
row, plus ``truncated=`` (whether the response was cut at ``max_new_tokens``) when it takes
that keyword, and ``completion_ids=`` (the response's generated token ids) when the caller
gives them and it takes that keyword (:func:`remix_rft.reward_fns.call_reward`). It must return a finite number (a
bool counts as 0/1); a function that cannot be called so fails when the pool loads it.

:class:`RewardPool` runs it in ``workers`` child processes, one item per worker at a
time, so that grading a step's responses uses several cores, and so that no response
can hang or crash training:

* an item that runs past ``time_limit_s`` scores 0 with a warning. The worker first
  tries to stop it with SIGALRM; when that cannot work (C code, a blocked signal) the
  parent kills the worker at ``time_limit_s + KILL_GRACE_S`` and starts another;
* a worker that dies on an item (segfault, ``os._exit``, out of memory, a MemoryError)
  costs only that item: it scores 0 with a warning naming the function, the item and the
  exit status, and a new worker takes its place. Each worker leads its own process group,
  killed as a whole: processes the function started die with their worker. Chosen over an error because a crash is a property
  of one response (a pathological expression), like a hang;
* an exception raised by the function, or a return value that is not a finite number,
  is a bug in the function: :class:`RewardError` names the function, the item and the
  problem id, after the rest of the batch has been graded (so no reply is left in flight).

``workers=0`` grades in the calling process (for debugging: breakpoints work), with the
same checks; the time limit then holds only in the main thread (SIGALRM).

Workers are started on the first :meth:`RewardPool.score` and reused; starting them
(importing the function and, for the math verifier, math-verify) is not counted against
any item's limit. Inside a worker the math verifier runs math-verify in-process: the
worker itself is the process that gets killed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from remix_rft import rewards
from remix_rft.reward_fns import (
    COMPLETION_IDS_KEYWORD,
    RewardError,
    RewardFn,
    absolute_spec,
    accepts_keyword,
    check_signature,
    load_reward_fn,
    where_defined,
)
from remix_rft.reward_worker import MATH_REWARD_SPEC, SERVE_FLAG, call_item

logger = logging.getLogger(__name__)

ScoreItem = tuple[str, Mapping[str, Any]]  # (response, problem as a dict)

DEFAULT_TIME_LIMIT_S = 5.0  # above math-verify's own CALL_TIME_LIMIT_S, which fires first
KILL_GRACE_S = 1.0  # time the worker's own alarm gets before the parent kills it
STARTUP_TIMEOUT_S = 120.0


def math_score(response: str, problem: Mapping[str, Any]) -> float:
    """The boxed-answer verifier (:func:`remix_rft.rewards.math_reward`) on a problem dict."""
    return rewards.math_reward(response, problem["answer"])


def default_workers(local_processes: int = 1) -> int:
    """min(4, CPUs available to this process / processes sharing the machine), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // max(local_processes, 1)))


@dataclass
class _Worker:
    proc: subprocess.Popen[str]
    ready: bool = False
    item: int | None = None  # index of the item it is grading
    deadline: float = math.inf  # monotonic time by which it must answer
    started: float = field(default_factory=time.monotonic)

    def send(
        self,
        index: int,
        item: ScoreItem,
        limit_s: float,
        truncated: bool = False,
        completion_ids: list[int] | None = None,
    ) -> bool:
        assert self.proc.stdin is not None
        response, problem = item
        request = {"response": response, "problem": problem, "truncated": truncated}
        if completion_ids is not None:
            request["completion_ids"] = completion_ids
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:  # it died while idle; the caller replaces it
            return False
        self.item, self.deadline = index, time.monotonic() + limit_s + KILL_GRACE_S
        return True

    def kill(self) -> None:
        """The worker and every process it (the reward function) started: its group."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with suppress(OSError):  # a half-written request to a dead worker
                    stream.close()


def _worker_env() -> dict[str, str]:
    """The parent's import path, so that workers import remix_rft and user modules alike."""
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _describe(problem: Mapping[str, Any]) -> str:
    pid = problem.get("id") if isinstance(problem, Mapping) else None
    return f" (problem id {pid!r})" if pid is not None else ""


class RewardPool:
    """Grades (response, problem) items with one reward function in worker processes."""

    def __init__(
        self,
        spec: str = MATH_REWARD_SPEC,
        workers: int | None = None,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    ) -> None:
        if time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
        self.spec = absolute_spec(spec)
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        self.time_limit_s = time_limit_s
        self._fn: RewardFn | None = None
        self._procs: list[_Worker] = []
        self._pid = os.getpid()
        # Close the workers when the pool is dropped or the interpreter exits.
        self._finalizer = weakref.finalize(self, _close_all, self._procs)
        self.replaced = 0  # workers that died or were killed and replaced

    def load_fn(self) -> RewardFn:
        """The function itself, imported in this process (so a bad spec, or a function that
        cannot be called as ``fn(response, problem)``, fails early)."""
        if self._fn is None:
            fn = load_reward_fn(self.spec)
            check_signature(fn, self.spec)
            self._fn = fn
        return self._fn

    # ---- public -------------------------------------------------------------------
    def score(
        self,
        items: Sequence[ScoreItem],
        truncated: Sequence[bool] | None = None,
        completion_ids: Sequence[list[int]] | None = None,
    ) -> list[float]:
        """Scores in the order of ``items``; ``truncated[i]``: whether response i was cut,
        ``completion_ids[i]``: its generated token ids (each passed on to a function that
        takes the keyword). RewardError for a faulty function."""
        if not items:
            return []
        cut = [False] * len(items) if truncated is None else [bool(t) for t in truncated]
        ids: list[list[int] | None] = [None] * len(items)
        if completion_ids is not None and accepts_keyword(self.load_fn(), COMPLETION_IDS_KEYWORD):
            ids = [list(c) for c in completion_ids]  # sent only to a function that takes them
        if self.workers == 0:
            # The math verifier has its own hard limits (a killable child process); an
            # alarm around it could leave that child's reply in flight, so it gets none.
            limit = math.inf if self.spec == MATH_REWARD_SPEC else self.time_limit_s
            fn = self.load_fn()
            replies = [
                call_item(fn, r, p, limit, t, c)
                for (r, p), t, c in zip(items, cut, ids, strict=True)
            ]
        else:
            replies = self._score_in_workers(items, cut, ids)
        return self._collect(items, replies)

    def close(self) -> None:
        _close_all(self._procs)

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- replies to scores ------------------------------------------------------------
    def _collect(self, items: Sequence[ScoreItem], replies: list[dict[str, Any]]) -> list[float]:
        scores: list[float] = []
        first_error: str | None = None
        for index, reply in enumerate(replies):
            where = f"item {index}{_describe(items[index][1])}"
            if "score" in reply:
                scores.append(float(reply["score"]))
                continue
            scores.append(0.0)
            if "timeout" in reply:
                logger.warning(
                    "reward function %s ran past %.1fs on %s; scored 0%s",
                    self.spec, self.time_limit_s, where,
                    " (its worker did not stop: killed and replaced)" if "killed" in reply else "",
                )  # fmt: skip
            elif "crash" in reply:
                logger.warning(
                    "reward worker died on %s (%s); scored 0, worker replaced",
                    where,
                    reply["crash"],
                )
            elif first_error is None:
                what = (
                    f"raised {reply['error']} at {reply.get('at', '?')}"
                    if "error" in reply
                    else f"returned {reply['bad']}"
                )
                first_error = (
                    f"reward function {self.spec} ({where_defined(self.load_fn())}) {what} "
                    f"on {where}; it must return a finite number (int, float or bool)"
                )
        if first_error is not None:
            raise RewardError(first_error)
        return scores

    # ---- the pool -------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        proc = subprocess.Popen(
            [sys.executable, "-m", "remix_rft.reward_worker", SERVE_FLAG, self.spec,
             repr(self.time_limit_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
            bufsize=1, env=_worker_env(), process_group=0,  # killed as a group (#36.11)
        )  # fmt: skip
        return _Worker(proc)

    def _ensure_workers(self) -> None:
        if self._pid != os.getpid():  # a forked child must not share its parent's pipes
            self._procs.clear()
            self._pid = os.getpid()
        self.load_fn()  # a bad spec fails here, with its import error, not in N workers
        while len(self._procs) < self.workers:
            self._procs.append(self._spawn())

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._procs[self._procs.index(worker)] = self._spawn()
        self.replaced += 1

    def _score_in_workers(
        self,
        items: Sequence[ScoreItem],
        truncated: Sequence[bool],
        completion_ids: Sequence[list[int] | None],
    ) -> list[dict[str, Any]]:
        self._ensure_workers()
        replies: list[dict[str, Any] | None] = [None] * len(items)
        todo = deque(range(len(items)))
        try:
            while todo or any(w.item is not None for w in self._procs):
                self._dispatch(items, todo, truncated, completion_ids)
                self._wait(replies, todo)
        except BaseException:
            # Ctrl-C or a bug: replies still in flight would be read as the next batch's.
            for w in list(self._procs):
                if w.item is not None:
                    w.kill()
                    self._procs.remove(w)
            raise
        return [r if r is not None else {"crash": "no reply"} for r in replies]

    def _dispatch(
        self,
        items: Sequence[ScoreItem],
        todo: deque[int],
        truncated: Sequence[bool],
        completion_ids: Sequence[list[int] | None],
    ) -> None:
        for w in list(self._procs):
            if w.ready and w.item is None and todo:
                index = todo.popleft()
                sent = w.send(
                    index, items[index], self.time_limit_s, truncated[index], completion_ids[index]
                )
                if not sent:
                    todo.appendleft(index)  # it died while idle: a new one gets the item
                    self._replace(w)

    def _wait(self, replies: list[dict[str, Any] | None], todo: deque[int]) -> None:
        """Block until a worker answers, starts, dies or overruns; handle each."""
        now = time.monotonic()
        waiting = [w for w in self._procs if w.item is not None or not w.ready]
        deadlines = [w.deadline if w.ready else w.started + STARTUP_TIMEOUT_S for w in waiting]
        timeout = max(0.0, min(deadlines, default=now) - now)
        streams = {w.proc.stdout: w for w in waiting}
        readable, _, _ = select.select(list(streams), [], [], timeout)
        for stream in readable:
            self._read(streams[stream], replies, todo)
        now = time.monotonic()
        for w in list(self._procs):
            if w.item is not None and now > w.deadline:
                logger.debug("killing reward worker %d: item %d overran", w.proc.pid, w.item)
                replies[w.item] = {"timeout": True, "killed": True}
                self._replace(w)
            elif not w.ready and now > w.started + STARTUP_TIMEOUT_S:
                w.kill()
                raise RewardError(
                    f"reward worker for {self.spec} did not start in {STARTUP_TIMEOUT_S:.0f}s"
                )

    def _read(self, w: _Worker, replies: list[dict[str, Any] | None], todo: deque[int]) -> None:
        assert w.proc.stdout is not None
        line = w.proc.stdout.readline()
        if not line:  # EOF: the worker died
            status = w.proc.wait()
            if not w.ready:
                raise RewardError(
                    f"reward worker for {self.spec} exited with status {status} while starting"
                )
            assert w.item is not None
            replies[w.item] = {"crash": f"exit status {status}"}
            self._replace(w)
            return
        if not w.ready:
            if line.strip() == "ready":
                w.ready = True
                return
            fatal = json.loads(line).get("fatal", line.strip())
            w.kill()
            raise RewardError(f"reward worker for {self.spec} could not start: {fatal}")
        assert w.item is not None
        replies[w.item] = json.loads(line)
        w.item, w.deadline = None, math.inf


def _close_all(procs: list[_Worker]) -> None:
    for w in procs:
        w.kill()
    procs.clear()
