"""Verifiable rewards for math: the last ``\\boxed{}`` of a response against the ground truth.

``math_reward`` is the verifier the trainer and ``remix eval`` use. It is built for
untrusted model text:

* plain integers on both sides are compared directly, without math-verify (the fast
  path the embedded arithmetic task relies on);
* only the LaTeX parser of math-verify ever sees the text (never ``eval``/``sympify``
  of what the model wrote);
* oversized responses and boxed answers, long digit runs, deep nesting and numeric
  power towers or huge factorials score 0 before any parsing;
* each call has a hard wall-clock limit, ``verify.CALL_TIME_LIMIT_S``: math-verify runs
  in a child process that is killed when a call overruns, which works in any thread and
  also stops C-level big-integer work that no signal can interrupt. Starting that
  process (once, and again after a kill) is not counted against the limit. With
  ``REMIX_VERIFY_ISOLATION=inline`` it runs in-process instead, under SIGALRM in the
  main thread and under the static guards alone elsewhere.

The parts: :mod:`.answers` extracts and normalises answers as text, :mod:`.verify` runs
math-verify under the guards and the time limit; this module decides with both. Settings
(``CALL_TIME_LIMIT_S``, ``VERIFY_ISOLATION``, ...) are read where they live, in ``verify``.
"""

from __future__ import annotations

from remix_rft.rewards.answers import (
    MAX_BOXED_CHARS,
    MAX_RESPONSE_CHARS,
    AnswerLike,
    _as_plain_int,
    _squeeze,
    answer_strings,
    extract_last_boxed,
    format_reward,
    normalize_answer,
)
from remix_rft.rewards.verify import VerifyTimeout, _is_verifiable, _verify

__all__ = [
    "VerifyTimeout",
    "answer_strings",
    "extract_last_boxed",
    "format_reward",
    "math_reward",
    "normalize_answer",
]


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
