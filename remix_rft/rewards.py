"""Verifiable rewards for math: the last ``\\boxed{}`` of a response against the ground truth.

``math_reward`` is the verifier the trainer and ``remix eval`` use. It is built for
untrusted model text:

* plain integers on both sides are compared directly, without math-verify (the fast
  path the embedded arithmetic task relies on);
* only the LaTeX parser of math-verify ever sees the text (never ``eval``/``sympify``
  of what the model wrote);
* oversized responses and boxed answers, long digit runs, deep nesting and numeric
  power towers or huge factorials score 0 before any parsing;
* each call has a hard wall-clock limit, ``CALL_TIME_LIMIT_S``: math-verify runs in a
  child process that is killed when a call overruns, which works in any thread and
  also stops C-level big-integer work that no signal can interrupt. Starting that
  process (once, and again after a kill) is not counted against the limit. With
  ``REMIX_VERIFY_ISOLATION=inline`` it runs in-process instead, under SIGALRM in the
  main thread and under the static guards alone elsewhere.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

MAX_RESPONSE_CHARS = 200_000
MAX_BOXED_CHARS = 4_000  # a final answer longer than this is not an answer
MAX_DIGIT_RUN = 300  # longer runs of digits are rejected before parsing
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

BOX_COMMANDS = ("\\boxed", "\\fbox")

AnswerLike = str | int | float | Sequence[str | int | float]

_INT_RE = re.compile(r"[+-]?\d+")
_DIGIT_RUN_RE = re.compile(rf"\d{{{MAX_DIGIT_RUN + 1}}}")


class VerifyTimeout(BaseException):
    """Raised inside a call that ran past ``CALL_TIME_LIMIT_S`` (a BaseException so that
    no ``except Exception`` inside math-verify swallows it)."""


# ---------------------------------------------------------------------------- extraction


def _brace_group_end(text: str, open_at: int) -> int | None:
    """Index just past the ``}`` matching the ``{`` at ``open_at``; None if unbalanced."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":  # an escaped character (\{ \} \\) never counts as a brace
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _last_box_start(text: str) -> tuple[int, str] | None:
    """Position and command of the last ``\\boxed``/``\\fbox`` that is a whole command."""
    best: tuple[int, str] | None = None
    for cmd in BOX_COMMANDS:
        pos = len(text)
        while True:
            pos = text.rfind(cmd, 0, pos)
            if pos < 0:
                break
            after = pos + len(cmd)
            # \boxedfoo is another command; \boxed{, \boxed 5 and \boxed\frac are ours
            if after >= len(text) or not text[after].isalpha():
                if best is None or pos > best[0]:
                    best = (pos, cmd)
                break
    return best


def extract_last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Brace matching is a single linear scan. ``\\boxed 5`` (no braces) yields ``5``.
    Returns None when there is no box, its braces are unbalanced, or it is empty.
    """
    found = _last_box_start(text)
    if found is None:
        return None
    pos, cmd = found
    i = pos + len(cmd)
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        end = _brace_group_end(text, i)
        if end is None:
            return None
        content = text[i + 1 : end - 1]
    else:
        # \boxed 5 -- the argument runs to the end of the math or the line
        m = re.match(r"[^$\n]*", text[i : i + MAX_BOXED_CHARS + 1])
        content = m.group(0) if m else ""
    content = content.strip()
    return content or None


def format_reward(response: str) -> float:
    """1.0 when the response holds exactly one boxed answer (balanced and non-empty)."""
    if len(response) > MAX_RESPONSE_CHARS:
        return 0.0
    count = sum(len(re.findall(re.escape(cmd) + r"(?![A-Za-z])", response)) for cmd in BOX_COMMANDS)
    if count != 1:
        return 0.0
    return 1.0 if extract_last_boxed(response) is not None else 0.0


# ---------------------------------------------------------------------------- normalisation

_UNIT_WORD_RE = re.compile(
    r"^(?:[a-zA-Z]{1,3}(?:\^?-?\d)?|units?|degrees?|dollars?|cents?|meters?|cm|km|inches?|"
    r"feet|foot|miles?|seconds?|minutes?|hours?|days?|years?|grams?|kg|liters?|"
    r"square\s+\w+|cubic\s+\w+|sq\s+\w+|\w+\s+per\s+\w+|[a-zA-Z]+/[a-zA-Z]+(?:\^?\d)?)$"
)
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_THOUSANDS_LATEX_RE = re.compile(r"(?<=\d)\{,\}(?=\d{3})")
# MATH writes thousands as 10,\! 080 (a comma and a negative thin space)
_THOUSANDS_THIN_RE = re.compile(r"(?<=\d),\s*\\!\s*(?=\d{3}(?!\d))")
# x_{1} is x_1 and 10^{8} is 10^8: one character needs no braces (E_1 is not parsed by
# math-verify, so only the text comparison can tell E_{1} and E_1 apart)
_ONE_CHAR_SCRIPT_RE = re.compile(r"([_^])\{\s*([A-Za-z0-9])\s*\}")
_SPACE_THOUSANDS_RE = re.compile(r"(?<=\d)(?:\\[,;: !]|\\ |~)(?=\d{3}\b)")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\^\s*\{\s*\\text\{\s*o\s*\}\s*\}|\\degree|°")
_SCI_E_RE = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*[eE]\s*([+-]?\d{1,3})")
_SPACING_RE = re.compile(r"\\[,;:!]|\\quad|\\qquad|~")


def normalize_answer(text: str) -> str:
    """Strip presentation that math-verify should not see: ``\\text{}`` units, degrees,
    ``\\%``, ``\\$``, ``\\left``/``\\right``, display styles, thousands separators."""
    s = text.strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\displaystyle", "")
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\$", "").replace("$", "")
    s = _THOUSANDS_LATEX_RE.sub("", s)
    s = _THOUSANDS_THIN_RE.sub(",", s)
    s = _SPACE_THOUSANDS_RE.sub("", s)
    s = _ONE_CHAR_SCRIPT_RE.sub(r"\1\2", s)
    s = _SPACING_RE.sub(" ", s)
    s = _strip_text_units(s)
    s = s.strip().rstrip(".").strip()
    sci = _SCI_E_RE.fullmatch(s)
    if sci:  # 8.7e8 (the LaTeX parser would read e as Euler's number)
        s = f"{sci.group(1)}\\times 10^{{{sci.group(2)}}}"
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    return s


def _strip_text_units(s: str) -> str:
    """Drop a trailing ``\\text{unit}`` when something mathematical precedes it, and unwrap
    a ``\\text{}`` that is the whole answer."""
    m = re.fullmatch(r"(.*?)\s*\\(?:text|mbox|mathrm)\s*\{\s*([^{}]*)\}\s*", s, flags=re.S)
    if m and m.group(1).strip() and _UNIT_WORD_RE.match(m.group(2).strip()):
        return m.group(1)
    m = re.fullmatch(r"\s*\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}\s*", s)
    if m:
        return m.group(1)
    return s


# A control word with the whitespace after it, any other control symbol, or whitespace.
_LATEX_TOKEN_RE = re.compile(r"\\(?:[A-Za-z]+\s*|.)|\s+", re.S)
# Groups whose spaces are text: kept as they are.
_TEXT_GROUP_RE = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|operatorname)\s*\{[^{}]*\}")


def _squeeze(s: str) -> str:
    """Whitespace is not significant in LaTeX math (``e^{i t}`` is ``e^{it}``): drop it,
    except where it ends a control word before a letter (``\\pi r``) and inside
    ``\\text{}``-like groups."""
    out, last = [], 0
    for m in _TEXT_GROUP_RE.finditer(s):
        out += [_squeeze_math(s[last : m.start()]), m.group(0)]
        last = m.end()
    return "".join(out) + _squeeze_math(s[last:])


def _squeeze_math(s: str) -> str:
    def token(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok[0] != "\\":
            return ""  # plain whitespace
        if not tok[1:2].isalpha():
            return tok  # a control symbol (\{, \\, a backslash-space) as written
        word = tok.rstrip()
        if word != tok and s[m.end() : m.end() + 1].isalpha():
            return word + " "  # pi r must not become a control word pir
        return word

    return _LATEX_TOKEN_RE.sub(token, s)


def _as_plain_int(s: str) -> int | None:
    """The integer a string spells (spaces ignored), or None. Bounded by MAX_DIGIT_RUN."""
    t = s.replace(" ", "")
    if len(t) > MAX_DIGIT_RUN or not _INT_RE.fullmatch(t):
        return None
    return int(t)


def answer_strings(answer: AnswerLike) -> list[str]:
    """Ground truth as a list of acceptable strings (whole floats become integers)."""
    if isinstance(answer, (list, tuple)):
        out: list[str] = []
        for a in answer:
            out.extend(answer_strings(a))
        return out
    if isinstance(answer, bool):
        return [str(int(answer))]
    if isinstance(answer, int):
        return [str(answer)]
    if isinstance(answer, float):
        if answer.is_integer():
            return [str(int(answer))]
        return [repr(answer)]
    s = str(answer).strip()
    if re.fullmatch(r"[+-]?\d+\.0+", s):
        s = s.split(".")[0]
    return [s] if s else []


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
    than the main one; killing a process can. The child runs this file (stdlib imports
    only at the top, so it needs no package import), answers one JSON request per
    line, and exits when its stdin closes. After a kill, a replacement is started at
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


# ---------------------------------------------------------------------------- the reward


def _quick_match(pred: str, gold: str) -> bool | tuple[str, str]:
    """True/False when cheap checks decide; else the normalised pair for math-verify."""
    if pred == gold:
        return True
    pred_n, gold_n = normalize_answer(pred), normalize_answer(gold)
    if not pred_n or not gold_n:
        return False
    p_int, g_int = _as_plain_int(pred_n), _as_plain_int(gold_n)
    if p_int is not None and g_int is not None:
        return p_int == g_int
    if pred_n == gold_n:
        return True
    pred_n, gold_n = _squeeze(pred_n), _squeeze(gold_n)  # math-verify sees the same spacing
    if pred_n == gold_n:
        return True
    if not (_is_verifiable(pred_n) and _is_verifiable(gold_n)):
        return False
    return (pred_n, gold_n)


def math_reward(response: str, answer: AnswerLike) -> float:
    """1.0 if the last boxed answer of ``response`` equals ``answer`` (or any of a list)."""
    if not isinstance(response, str) or len(response) > MAX_RESPONSE_CHARS:
        return 0.0
    pred = extract_last_boxed(response)
    if pred is None or len(pred) > MAX_BOXED_CHARS:
        return 0.0
    golds = answer_strings(answer)
    if not golds:
        return 0.0
    # fast path: integers on both sides, no math-verify
    p_int = _as_plain_int(pred)
    if p_int is not None and all(_as_plain_int(g) is not None for g in golds):
        return 1.0 if any(p_int == _as_plain_int(g) for g in golds) else 0.0
    pending: list[tuple[str, str]] = []
    for gold in golds:
        verdict = _quick_match(pred, gold)
        if verdict is True:
            return 1.0
        if isinstance(verdict, tuple):
            pending.append(verdict)
    return 1.0 if pending and _verify(pending) else 0.0


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
