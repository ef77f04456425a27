"""Typed run configuration: YAML file + ``key=value`` overrides, validated with clear errors.

Every key lives in :class:`TrainConfig` (task keys under ``task.``). An unknown key,
a value of the wrong type or an out-of-range value raises :class:`ConfigError`,
whose message names the key and what is allowed; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from remix_rft.trainer.config_checks import LEGACY_UNSET, check, validate
from remix_rft.trainer.config_fields import (
    ConfigError,
    PhaseSettings,
    TaskConfig,
    TrainConfig,
    inherit,
)
from remix_rft.trainer.config_paths import resolve_config_paths
from remix_rft.trainer.config_sections import flat_key, flatten, section_table

# the configuration's public names, whichever module defines them
__all__ = [
    "ConfigError", "PhaseSettings", "TaskConfig", "TrainConfig", "build_config",
    "dump_config", "load_config", "parse_overrides", "read_yaml", "resolve_config_path",
    "validate", "PACKAGED_CONFIGS", "inherit",
]  # fmt: skip
log = logging.getLogger(__name__)

# old name -> new name: an old key still loads, with a warning naming the new one
RENAMED_KEYS = {
    "generation_backend": "rollout_engine",
    "warmup_steps": "warmup_updates",  # it counts optimizer updates, not iterations (steps)
}


# ---- loading ----------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    """A close match is all the user needs; without one, the allowed keys (of the task
    section: a short list; of the top level: ~130, so the pointer to --help-config)."""
    close = difflib.get_close_matches(key, known, n=3) or difflib.get_close_matches(
        key.split(".")[-1], known, n=3
    )
    if close:
        return ConfigError(
            f"unknown config key '{key}'; did you mean {', '.join(close)}? "
            "(every key: remix train --help-config)"
        )
    if len(known) > 40:
        return ConfigError(f"unknown config key '{key}' (every key: remix train --help-config)")
    return ConfigError(f"unknown config key '{key}' (allowed: {', '.join(sorted(known))})")


def _coerce_number(key: str, value: Any, cast: type, accepted: Any, allowed: str) -> Any:
    """A number from YAML, or parsed from a command-line string; bools are not numbers."""
    if isinstance(value, str):
        try:
            return cast(value)
        except ValueError:
            pass
    check(isinstance(value, accepted) and not isinstance(value, bool), key, allowed, value)
    return cast(value)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or explain why not."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None  # unset: the setting inherits (see the field's comment)
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
        origin = typing.get_origin(typ)
    if origin is list:
        if isinstance(value, str) and value.strip().startswith("["):  # report_to=[a, b]
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise ConfigError(f"config key '{key}': {value!r} is not a list: {err}") from None
        elif isinstance(value, str):
            value = [w.strip() for w in value.split(",") if w.strip()]
        check(isinstance(value, list), key, "a list", value)
        item = (typing.get_args(typ) or (str,))[0]
        if item is float:  # reward_weights=[1, 0.5]: numbers, checked one by one
            return [_coerce_number(f"{key}[{i}]", v, float, int | float, "a number")
                    for i, v in enumerate(value)]  # fmt: skip
        return [str(v) for v in value]
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        check(isinstance(value, bool), key, "true or false", value)
        return value
    if typ is int:
        return _coerce_number(key, value, int, int, "an integer")
    if typ is float:
        return _coerce_number(key, value, float, int | float, "a number")
    if typ is str:
        check(
            isinstance(value, str | int | float) and not isinstance(value, bool),
            key,
            "a string",
            value,
        )
        return str(value) if value is not None else ""
    return value


def _apply(target: Any, key: str, value: Any, prefix: str = "") -> None:
    if not prefix and key in RENAMED_KEYS:
        log.warning("config key '%s' is now '%s'", key, RENAMED_KEYS[key])
        key = RENAMED_KEYS[key]
    types_ = _field_types(type(target))
    head, _, rest = key.partition(".")
    if head not in types_:
        raise _unknown_key(prefix + key, [prefix + k for k in types_])
    typ = types_[head]
    if dataclasses.is_dataclass(typ):
        sub = getattr(target, head)
        if rest:
            _apply(sub, rest, value, prefix + head + ".")
            return
        check(isinstance(value, dict), prefix + head, "a mapping of keys", value)
        for k, v in value.items():
            _apply(sub, str(k), v, prefix + head + ".")
        return
    if rest:
        raise _unknown_key(prefix + key, [prefix + k for k in types_])
    value = _coerce(prefix + head, value, typ)
    if not prefix and head in LEGACY_UNSET and value == LEGACY_UNSET[head]:
        log.warning(
            "config key '%s': %s for 'unset' is deprecated; write null (or leave it out)",
            head, value,
        )  # fmt: skip
        value = None
    setattr(target, head, value)


def parse_overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A file path, or the name of a config shipped with the package (``tiny-grpo``)."""
    path = Path(path)
    if path.is_file():
        return path
    yaml_name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    packaged = PACKAGED_CONFIGS / yaml_name  # "r1-distill-1.5b-grpo": ".5b-grpo" is no suffix
    if packaged.is_file():
        return packaged
    shipped = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file {path} does not exist (shipped configs: {shipped})")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = resolve_config_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, got {type(data).__name__}"
        )
    return data


def build_config(
    data: dict[str, Any], overrides: dict[str, str] | None = None, base: Path | None = None
) -> TrainConfig:
    """``data`` (a config file's keys) then ``overrides``; with ``base`` (the file's
    directory) the relative paths of ``data``, not of the overrides, resolve against it."""
    cfg = TrainConfig()
    table = section_table(TrainConfig)  # the sectioned spelling (rollout.mode, ...) too
    for key, value in flatten(data, TrainConfig, ConfigError).items():
        _apply(cfg, str(key), value)
    flat_overrides = {flat_key(k, table, ConfigError): v for k, v in (overrides or {}).items()}
    if base is not None:  # a path the command line replaces is not looked for
        resolve_config_paths(cfg, base, skip=set(flat_overrides))
    for key, value in flat_overrides.items():
        _apply(cfg, key, value)
    return validate(cfg)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or start from defaults) and apply ``key=value`` overrides."""
    if not path:
        return build_config({}, parse_overrides(overrides or []))
    resolved = resolve_config_path(path)
    return build_config(read_yaml(resolved), parse_overrides(overrides or []), resolved.parent)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
