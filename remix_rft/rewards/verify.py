"""math-verify under a hard per-call time limit, and the guards that decide what it may see.

* ``_equal`` asks math-verify's LaTeX parser only (never ``eval``/``sympify`` of what the
  model wrote) whether two normalised answers are the same;
* ``_is_verifiable`` rejects, before any parsing, what could run for minutes: too long,
  long digit runs, deep nesting, many powers, numeric power towers, huge factorials;
* ``_verify`` runs ``_equal`` in a child process (this file, run with ``WORKER_FLAG``)
  that is killed when a call overruns ``CALL_TIME_LIMIT_S``, or in-process with
  ``REMIX_VERIFY_ISOLATION=inline``.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The worker process runs this file as a script with -P: it imports only the standard
# library (math-verify once serving), so it needs neither the package nor sys.path.
MAX_DIGIT_RUN = 300  # longer runs of digits are rejected before parsing

logger = logging.getLogger(__name__)

# What math-verify may see (the five benchmarks' and MATH's ground truths reach 200
# characters, bracket depth 4 and 7 powers): bounds its work where no alarm can.
MAX_VERIFY_CHARS = 1_000
MAX_VERIFY_DEPTH = 10
MAX_VERIFY_POWERS = 30
CALL_TIME_LIMIT_S = 3.0
# "process": math-verify runs in a child process that is killed at the limit (works in
# any thread, stops C-level big-number work too); "inline": in-process, SIGALRM in the
# main thread and only the size guards elsewhere.
VERIFY_ISOLATION = os.environ.get("REMIX_VERIFY_ISOLATION", "process")
WORKER_MEMORY_BYTES = 4 << 30
WORKER_FLAG = "--remix-verify-worker"

_DIGIT_RUN_RE = re.compile(rf"\d{{{MAX_DIGIT_RUN + 1}}}")


class VerifyTimeout(BaseException):
    """Raised inside a call that ran past ``CALL_TIME_LIMIT_S`` (a BaseException so that
    no ``except Exception`` inside math-verify swallows it)."""


# ---------------------------------------------------------------------------- math-verify


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise VerifyTimeout after ``seconds`` -- main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "setitimer"
    ):
        yield
        return

    def _handler(signum: int, frame: Any) -> None:
        raise VerifyTimeout

    old_handler = signal.signal(signal.SIGALRM, _handler)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:  # give an outer alarm back what is left of it (roughly)
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - seconds, 1e-3))


class _DropTimeoutNotice(logging.Filter):
    """math-verify warns once that its own timeout is off; ours (``_time_limit``) is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


@functools.cache
def _latex_config() -> list[Any]:
    from math_verify import LatexExtractionConfig
    from math_verify.parser import NormalizationConfig

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutNotice())
    norm = NormalizationConfig(
        basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all"
    )
    return [LatexExtractionConfig(boxed_match_priority=0, normalization_config=norm)]


def _parse(expr: str) -> list[Any]:
    """Parse one answer with math-verify's LaTeX parser only (never Python eval)."""
    from math_verify import parse

    return parse(
        "\\boxed{" + expr + "}",
        extraction_config=_latex_config(),
        fallback_mode="no_fallback",
        parsing_timeout=None,  # the caller's _time_limit is the timeout
    )


@functools.lru_cache(maxsize=65_536)
def _parse_gold(expr: str) -> tuple[Any, ...]:
    return tuple(_parse(expr))


def _equal(pred: str, gold: str) -> bool:
    from math_verify import verify

    gold_parsed = list(_parse_gold(gold))
    pred_parsed = _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return True
    return _numerically_equal(gold_parsed[0], pred_parsed[0])


def _numerically_equal(a: Any, b: Any, rel_tol: float = 1e-9) -> bool:
    """Two constant sympy numbers with the same value (math-verify misses e.g.
    ``870000000`` against an unevaluated ``8.7*10**8``)."""
    import sympy

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if a.free_symbols or b.free_symbols or not (a.is_number and b.is_number):
        return False
    try:
        x, y = a.evalf(30), b.evalf(30)  # sympy floats: no overflow or underflow
        if not (x.is_finite and y.is_finite):
            return False
        return bool(abs(x - y) <= rel_tol * max(abs(x), abs(y)))
    except (TypeError, ValueError, ArithmeticError):
        return False


# ---------------------------------------------------------------------------- guards


_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")
_BIG_NUMERAL_RE = re.compile(r"\d{5,}")
_OPERATOR_CMDS = frozenset(
    ("\\frac", "\\dfrac", "\\tfrac", "\\cdot", "\\times", "\\left", "\\right", "\\div")
)


def _is_numeric_only(group: str) -> bool:
    """No variables: letters appear only inside arithmetic LaTeX commands."""
    rest = _LATEX_CMD_RE.sub(lambda m: "" if m.group(0) in _OPERATOR_CMDS else "x", group)
    return not any(ch.isalpha() for ch in rest)


def _is_explosive(group: str) -> bool:
    """A numeric operand whose evaluation could run for minutes (in C, past any alarm)."""
    triggers = "^" in group or "!" in group or _BIG_NUMERAL_RE.search(group) is not None
    return triggers and _is_numeric_only(group)


def _bracket_pairs(text: str) -> dict[int, int]:
    """Matching positions of (), [] and {} in both directions, in one linear pass."""
    pairs: dict[int, int] = {}
    stacks: dict[str, list[int]] = {"(": [], "[": [], "{": []}
    closer = {")": "(", "]": "[", "}": "{"}
    for i, ch in enumerate(text):
        if ch in stacks:
            stacks[ch].append(i)
        elif ch in closer and stacks[closer[ch]]:
            j = stacks[closer[ch]].pop()
            pairs[i], pairs[j] = j, i
    return pairs


def _exponent_at(text: str, caret: int, pairs: dict[int, int]) -> str:
    i = caret + 1
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] in "{(":
        return text[i + 1 : pairs.get(i, len(text))]
    m = re.match(r"[+-]?\d+|\\?[A-Za-z]+|.", text[i : i + MAX_DIGIT_RUN + 2])
    return m.group(0) if m else ""


def _factorial_operand(text: str, bang: int, pairs: dict[int, int]) -> str:
    j = bang - 1
    while j >= 0 and text[j] == " ":
        j -= 1
    if j < 0:
        return ""
    if text[j] in ")]}":
        return text[pairs.get(j, -1) + 1 : j]
    m = re.search(r"\d+$", text[max(0, j - MAX_DIGIT_RUN - 1) : j + 1])
    return m.group(0) if m else ""


def _too_expensive(text: str) -> bool:
    """Power towers, huge numeric exponents, factorials of huge numbers."""
    if "^" not in text and "!" not in text:
        return False
    pairs = _bracket_pairs(text)
    for i, ch in enumerate(text):
        if ch == "^" and _is_explosive(_exponent_at(text, i, pairs)):
            return True
        if ch == "!" and _is_explosive(_factorial_operand(text, i, pairs)):
            return True
    return False


def _nesting_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "({[":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")}]":
            depth -= 1
    return deepest


def _is_verifiable(text: str) -> bool:
    """Small and tame enough for math-verify: size, digits, nesting, powers, towers."""
    return (
        len(text) <= MAX_VERIFY_CHARS
        and text.count("^") <= MAX_VERIFY_POWERS
        and _DIGIT_RUN_RE.search(text) is None
        and _nesting_depth(text) <= MAX_VERIFY_DEPTH
        and not _too_expensive(text)
    )


# ---------------------------------------------------------------------------- isolation


class _VerifyWorker:
    """math-verify in a child process that is killed when a call runs past its limit.

    Signals cannot stop a C-level big-integer computation, nor interrupt a thread other
    than the main one; killing a process can. The child runs this file with ``-P`` (so
    this folder does not shadow top-level modules) and imports ``answers`` from the copy
    of the package this file lives in, installed or not. It answers one JSON request per
    line and exits when its stdin closes. After a kill, a replacement is started at
    once and waited for on its first use.
    """

    STARTUP_TIMEOUT_S = 120.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._pid = 0  # the process that owns _proc (a forked child starts its own)
        self._ready = False

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__), WORKER_FLAG],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._pid = os.getpid()
        self._ready = False

    def _readline(self, timeout: float) -> str | None:
        """A line from the child, or None when it is silent for ``timeout`` or dead."""
        assert self._proc is not None and self._proc.stdout is not None
        readable, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not readable:
            return None
        return self._proc.stdout.readline() or None

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def verify(self, pairs: list[tuple[str, str]], timeout: float) -> bool | None:
        """Whether any (pred, gold) pair is equal; None on a timeout or a crash."""
        with self._lock:
            if self._proc is None or self._pid != os.getpid() or self._proc.poll() is not None:
                self._spawn()
            if not self._ready:
                if self._readline(self.STARTUP_TIMEOUT_S) != "ready\n":
                    self._kill()
                    raise RuntimeError("the math-verify worker process did not start")
                self._ready = True
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps(pairs) + "\n")
                self._proc.stdin.flush()
            except OSError:
                self._kill()
                return None
            line = self._readline(timeout)
            if line is None:  # too slow (or died): replace it
                self._kill()
                self._spawn()
                return None
            return line.strip() == "1"

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._pid == os.getpid():
                self._kill()


_WORKER = _VerifyWorker()
atexit.register(_WORKER.close)
_fallback_warned = False


@functools.cache
def _warm_up() -> None:
    """Import math-verify and sympy's lazy parts before any clock starts."""
    _latex_config()
    _equal("\\frac{1}{2}", "0.5")


def _verify_inline(pairs: list[tuple[str, str]], timeout: float) -> bool | None:
    _warm_up()
    try:
        with _time_limit(timeout):
            return any(_equal(p, g) for p, g in pairs)
    except VerifyTimeout:
        return None


def _verify(pairs: list[tuple[str, str]]) -> bool:
    """math-verify on normalised pairs, under the hard per-call limit."""
    global _fallback_warned
    verdict: bool | None
    if VERIFY_ISOLATION == "process":
        try:
            verdict = _WORKER.verify(pairs, CALL_TIME_LIMIT_S)
        except (OSError, RuntimeError) as exc:
            if not _fallback_warned:
                logger.warning("math-verify worker unavailable (%s); verifying in-process", exc)
                _fallback_warned = True
            verdict = _verify_inline(pairs, CALL_TIME_LIMIT_S)
    else:
        verdict = _verify_inline(pairs, CALL_TIME_LIMIT_S)
    if verdict is None:
        logger.debug("verification ran past %.1fs; scored 0", CALL_TIME_LIMIT_S)
    return bool(verdict)


# ---------------------------------------------------------------------------- worker side


def _serve() -> int:
    """The worker loop: a JSON list of [pred, gold] pairs per line in, "1" or "0" out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    _warm_up()
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            pairs = json.loads(line)
            ok = any(_equal(str(p), str(g)) for p, g in pairs)
        except Exception:  # a crash on one answer is a wrong answer
            ok = False
        print("1" if ok else "0", flush=True)
    return 0


if __name__ == "__main__" and sys.argv[1:] == [WORKER_FLAG]:
    sys.exit(_serve())
