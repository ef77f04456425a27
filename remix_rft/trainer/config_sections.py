"""The sectioned form of a config, and ``remix train --help-config``.

``TrainConfig`` keeps flat field names (what the code reads, and what every YAML written so
far uses); a config may also group them in sections::

    rollout: {prompts_per_step: 16, group_size: 8, mode: async}
    remix:   {window: 4, offpolicy_fraction: 0.5}
    post_reincarnation: {lr: 1.0e-4}

Each section maps its short keys onto the flat fields (``rollout.mode`` is ``rollout_mode``,
``post_reincarnation.lr`` is ``post_reincarnation_lr``); ``key=value`` overrides accept both
spellings. A field in no section stays top-level. The help text of every key is the comment
written beside (or just above) its field in ``config.py``, so it cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from typing import Any

# section -> (flat fields it holds, the prefix its short keys drop)
_SECTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "rollout": (
        (
            "prompts_per_step",
            "group_size",
            "max_new_tokens",
            "temperature",
            "top_p",
            "rollout_engine",
            "rollout_mode",
            "max_staleness",
            "rollout_threads",
            "rollout_device",
            "weight_transport",
            "weight_sync_bucket_mb",
            "behavior_logprobs",
            "dynamic_sampling",
            "max_generation_rounds",
            "reflection_words",
        ),
        "rollout_",
    ),  # fmt: skip
    "optim": (
        (
            "lr",
            "critic_lr",
            "weight_decay",
            "adam_beta1",
            "adam_beta2",
            "max_grad_norm",
            "warmup_updates",
            "lr_schedule",
            "minibatch_size",
            "micro_batch_size",
            "micro_batch_tokens",
            "logprob_chunk_tokens",
            "logprob_micro_batch_tokens",
            "epochs",
            "max_nonfinite_updates",
        ),
        "",
    ),  # fmt: skip
    "loss": (
        (
            "advantage_estimator",
            "clip_eps_low",
            "clip_eps_high",
            "loss_agg",
            "norm_length",
            "scale_adv_by_std",
            "kl_coef",
            "kl_estimator",
            "entropy_coef",
            "policy_loss",
            "clip_ratio_c",
            "rollout_correction",
            "rollout_correction_level",
            "rollout_correction_threshold",
            "rollout_correction_min",
            "mask_truncated",
            "overlong_buffer_tokens",
            "overlong_penalty",
            "log_kl_base",
            "gamma",
            "gae_lambda",
            "value_clip",
            "whiten_advantages",
            "critic_warmup_steps",
        ),
        "",
    ),  # fmt: skip
    "remix": (
        (
            "window",
            "offpolicy_fraction",
            "replay_strategy",
            "clip_centre",
            "offpolicy_clip_eps_low",
            "offpolicy_clip_eps_high",
            "kl_lambda",
            "kl_lambda_schedule",
            "kl_lambda_start",
            "kl_lambda_hold_steps",
            "kl_lambda_every",
            "kl_lambda_decrement",
            "reincarnation_step",
            "reincarnation_patience",
        ),
        "",
    ),  # fmt: skip
    "post_reincarnation": ((), "post_reincarnation_"),
    "eval": ((), "eval_"),
    "checkpoint": (("save_every", "keep_checkpoints", "keep_best_checkpoint"), ""),
    "vllm": ((), "vllm_"),
    "lora": ((), "lora_"),
}


def _fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.name != "task"]  # task is its own mapping


def section_table(cls: type) -> dict[str, dict[str, str]]:
    """section -> {short key: flat field}, for the fields ``cls`` really has: the listed
    ones, or (a section that lists none) every field with its prefix."""
    names = [f.name for f in _fields(cls)]
    table: dict[str, dict[str, str]] = {}
    for section, (listed, prefix) in _SECTIONS.items():
        members = [n for n in names if n in listed or (not listed and n.startswith(prefix))]
        table[section] = {_short(n, prefix): n for n in members}
    return table


def _short(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def flatten(data: dict[str, Any], cls: type, error: type[Exception]) -> dict[str, Any]:
    """The flat form of a (possibly) sectioned mapping; an unknown key in a section is
    ``error`` naming ``section.key`` and the keys allowed there."""
    table = section_table(cls)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in table and isinstance(value, dict):
            for short, item in value.items():
                flat[flat_key(f"{key}.{short}", table, error)] = item
        else:
            flat[str(key)] = value
    return flat


def flat_key(key: str, table: dict[str, dict[str, str]], error: type[Exception]) -> str:
    """``rollout.mode`` -> ``rollout_mode``; keys outside the sections unchanged."""
    section, dot, short = key.partition(".")
    if not dot or section not in table:
        return key
    if short not in table[section]:
        allowed = ", ".join(sorted(table[section]))
        raise error(f"unknown config key '{key}'; section '{section}' has: {allowed}")
    return table[section][short]


def sectioned(flat: dict[str, Any], cls: type) -> dict[str, Any]:
    """The sectioned form of a flat mapping (the inverse of :func:`flatten`)."""
    where = {n: (s, short) for s, keys in section_table(cls).items() for short, n in keys.items()}
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in where:
            section, short = where[key]
            out.setdefault(section, {})[short] = value
        else:
            out[key] = value
    return out


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the trailing one, else the block above."""
    source = inspect.getsource(cls)
    comments: dict[str, str] = {}
    block: list[str] = []
    line_tokens: list[tokenize.TokenInfo] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if line_tokens and line_tokens[0].type == tokenize.NAME:
                comments.setdefault(line_tokens[0].string, text)
            else:
                block.append(text)
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            if line_tokens and line_tokens[0].type == tokenize.NAME and len(line_tokens) > 1:
                name = line_tokens[0].string
                # a block of one or two words is a heading ("# engines"), not help
                long_block = len(" ".join(block).split()) > 2
                if line_tokens[1].string == ":" and long_block and name not in comments:
                    comments[name] = " ".join(block)
                block = []
            line_tokens = []
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            line_tokens.append(tok)
    return comments


def help_lines(
    cls: type, defaults: Any, choices: dict[str, tuple[str, ...]] | None = None
) -> list[str]:
    """Every key, by section, with its type, default, allowed values (``choices``, by flat
    key: ``task.name`` for the task's) and help."""
    choices = choices or {}
    comments = field_comments(cls)
    fields = {f.name: f for f in _fields(cls)}
    table = section_table(cls)
    placed = {n for keys in table.values() for n in keys.values()}
    groups = {"(top level)": {n: n for n in fields if n not in placed}, **table}
    lines: list[str] = []
    for section, keys in groups.items():
        if keys:
            lines.append(f"{section}:")
            lines += _key_lines(keys, fields, comments, defaults, choices)
    task = defaults.task  # the task's own keys (task.name, task.max_operand, ...)
    task_fields = {f.name: f for f in dataclasses.fields(type(task))}
    task_choices = {k.removeprefix("task."): v for k, v in choices.items() if k.startswith("task.")}
    lines.append("task:")
    lines += _key_lines(
        {n: n for n in task_fields}, task_fields, field_comments(type(task)), task, task_choices
    )
    return lines


def _key_lines(
    keys: dict[str, str],
    fields: dict[str, dataclasses.Field[Any]],
    comments: dict[str, str],
    defaults: Any,
    choices: dict[str, tuple[str, ...]],
) -> list[str]:
    lines = []
    for short, name in keys.items():
        spelled = short if short == name else f"{short}  (flat: {name})"
        lines.append(f"  {spelled}: {fields[name].type} = {getattr(defaults, name)!r}")
        if name in choices:
            lines.append(f"      one of: {', '.join(choices[name])}")
        if comments.get(name):
            lines.append(f"      {comments[name]}")
    return lines
