"""Answers as text: the last ``\\boxed{}`` of a response, and an answer's presentation
stripped so that both sides of a comparison read alike.

Pure string work on untrusted model text: linear scans and bounded regexes, nothing that
parses or evaluates. Everything that compares meanings is in :mod:`remix_rft.rewards.verify`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from remix_rft.rewards.verify import MAX_DIGIT_RUN

MAX_RESPONSE_CHARS = 200_000
MAX_BOXED_CHARS = 4_000  # a final answer longer than this is not an answer

BOX_COMMANDS = ("\\boxed", "\\fbox")

AnswerLike = str | int | float | Sequence[str | int | float]

_INT_RE = re.compile(r"[+-]?\d+")


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


_UNIT_COMMANDS = ("\\text", "\\mbox", "\\mathrm")


def _trailing_unit(s: str) -> tuple[str, str] | None:
    """(what precedes, the unit) of a trailing ``\\text{unit}``; None if there is none.

    String scans, not a regex: a lazy ``(.*?)\\s*\\text`` retries the whitespace run at every
    position, O(n²) on an answer with a long one (issue #36.9)."""
    body = s.rstrip()
    brace = body.rfind("{")
    if not body.endswith("}") or brace < 0 or "}" in body[brace + 1 : -1]:
        return None
    head = body[:brace].rstrip()
    command = next((c for c in _UNIT_COMMANDS if head.endswith(c)), None)
    if command is None:
        return None
    return head[: -len(command)].rstrip(), body[brace + 1 : -1]


def _strip_text_units(s: str) -> str:
    """Drop a trailing ``\\text{unit}`` when something mathematical precedes it, and unwrap
    a ``\\text{}`` that is the whole answer."""
    unit = _trailing_unit(s)
    if unit and unit[0].strip() and _UNIT_WORD_RE.match(unit[1].strip()):
        return unit[0]
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
