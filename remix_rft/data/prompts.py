"""Prompts go through the tokenizer's chat template, as the model saw them in training."""

from __future__ import annotations

from typing import Any

# The DeepSeek-R1-distill convention for math problems.
DEFAULT_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def user_message(problem: str, instruction: str | None) -> str:
    """The user turn: the problem, then the instruction on its own line when there is one."""
    if not instruction:
        return problem
    return f"{problem}\n{instruction}"


def format_prompt(tokenizer: Any, problem: str, instruction: str | None = None) -> str:
    """Render one problem as the text the model continues (generation prompt included)."""
    messages = [{"role": "user", "content": user_message(problem, instruction)}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Base models without a template see the plain text.
    return messages[0]["content"]
