"""Countdown reward: does the response's expression reach the target with the given numbers?

``score(response, problem)`` is a remix-rft reward function (``task.reward_fn:
examples/countdown/verifier.py:score``). ``problem`` is the dataset row: ``numbers``
(the numbers to use, each exactly once), ``target``, and remix-rft's ``id``/``prompt``/
``answer``. The answer is the last ``<answer>...</answer>`` of the response or, failing
that, its last ``\\boxed{...}``.

The expression is model output, so it is never given to ``eval``: a tokenizer that knows
only integers, ``+ - * /`` (also ``×``, ``÷``, ``\\times``, ``\\cdot``, ``\\div``) and
parentheses, and a recursive-descent parser over exact fractions. Anything else -- a
name, ``**``, a huge number, deep nesting, an over-long answer -- scores 0 before any
arithmetic is done.

Scores: 1.0 for a correct expression; 0.1 for a well-formed expression that uses exactly
the given numbers but misses the target (a format reward, as in TinyZero's Countdown);
0.0 otherwise.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from remix_rft.rewards import extract_last_boxed

FORMAT_SCORE = 0.1
MAX_EXPRESSION_CHARS = 100  # four numbers and their operators fit many times over
MAX_NUMBER_DIGITS = 4  # the numbers of a problem are at most 100
MAX_DEPTH = 8  # parentheses nested deeper than this are not an answer
# The answer closes the response: only its tail is searched, so that a megabyte of text
# costs no more than a short response.
SEARCHED_TAIL_CHARS = 10_000

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_TOKEN_RE = re.compile(r"\s*(?:(\d+)|(\\times|\\cdot|\\div|[-+*/×÷()]))")
_OPERATORS = {"\\times": "*", "\\cdot": "*", "×": "*", "\\div": "/", "÷": "/"}


class Rejected(ValueError):
    """The answer is not a well-formed Countdown expression."""


def extract_expression(response: str) -> str | None:
    """The last ``<answer>`` tag's content, else the last ``\\boxed{}``'s; None if neither."""
    tail = response[-SEARCHED_TAIL_CHARS:]
    tags = _ANSWER_TAG_RE.findall(tail)
    if tags:
        return tags[-1].strip()
    return extract_last_boxed(tail)


def tokenize(text: str) -> list[str]:
    """Integers, the four operators (normalised to + - * /) and parentheses; else Rejected."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise Rejected("too long")
    tokens: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise Rejected(f"unexpected character {text[pos]!r}")
        number, operator = m.groups()
        if number is not None and len(number) > MAX_NUMBER_DIGITS:
            raise Rejected("number too long")
        tokens.append(number if number is not None else _OPERATORS.get(operator, operator))
        pos = m.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
    factor := INTEGER | '(' expr ')'. No unary minus, as in the game."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise Rejected("unexpected end")
        self.pos += 1
        return token

    def parse(self) -> Fraction:
        value = self.expr(0)
        if self.peek() is not None:
            raise Rejected(f"unexpected {self.peek()!r}")
        return value

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.term(depth)
            value = value + right if op == "+" else value - right
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            right = self.factor(depth)
            if op == "*":
                value *= right
            elif right == 0:
                raise Rejected("division by zero")
            else:
                value /= right
        return value

    def factor(self, depth: int) -> Fraction:
        token = self.take()
        if token == "(":
            if depth >= MAX_DEPTH:
                raise Rejected("nested too deeply")
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise Rejected("unbalanced parentheses")
            return value
        if not token.isdigit():
            raise Rejected(f"expected a number, got {token!r}")
        self.numbers.append(int(token))
        return Fraction(int(token))


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
    """Value and the numbers used, of a whitelisted arithmetic expression; else Rejected."""
    parser = _Parser(tokenize(expression))
    return parser.parse(), parser.numbers


def score(response: str, problem: Mapping[str, Any], truncated: bool = False) -> float:
    if truncated:  # cut at max_new_tokens: no credit for an answer it may not have finished
        return 0.0
    expression = extract_expression(response)
    if not expression:
        return 0.0
    try:
        value, used = evaluate(expression)
    except Rejected:
        return 0.0
    if Counter(used) != Counter(int(n) for n in problem["numbers"]):
        return 0.0
    return 1.0 if value == int(problem["target"]) else FORMAT_SCORE
