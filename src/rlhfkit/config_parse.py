"""Settings from a YAML file and the command line, read into the typed stage configs of :mod:`rlhfkit.config`.

The command line is generated from each dataclass (``learning_rate`` becomes ``--learning-rate``).
Precedence: dataclass default < ``--recipe`` preset < YAML file < command line. An unknown key or a value
of the wrong type is a :class:`~rlhfkit.config.ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import ConfigError, describe_bounds

# ---------------------------------------------------------------------------------------------------
# Reading and checking values


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            tp.__name__, tp.__name__
        )
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names) + " (or null)"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s".replace("as ", "")
    if origin is dict or tp is dict:
        return "a mapping of keys to values"
    return str(tp)


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the field type ``tp``; return it (numbers widened, numeric strings read)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}': expected {_type_name(tp)}, got {value!r}")
        return [coerce(v, item_tp, key, where) for v in value]
    if origin is dict or tp is dict:  # a mapping of settings (checked by its user, e.g. the loop's sections)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: key '{key}': expected {_type_name(tp)}, got {value!r}")
        return dict(value)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool) or tp is str and isinstance(value, str):
        return value
    if tp is int and is_number and isinstance(value, int):
        return value
    if tp is float and is_number:
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: key '{key}': expected {_type_name(tp)}, got {value!r}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_known_key(key: str, known: Collection[str], where: str, allowed: Collection[str] | None = None) -> None:
    """A :class:`ConfigError` when ``key`` is not one of ``known``, naming ``where`` (the file, and the
    section if any), the key, the nearest known key, and the keys ``allowed`` (default: ``known``)."""
    if key in known:
        return
    hint = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    listed = sorted(known if allowed is None else allowed)
    raise ConfigError(f"{where}: unknown key '{key}'{suggestion}; known keys: {', '.join(listed)}")


def read_yaml_config(path: str | Path, cls: type) -> dict[str, Any]:
    """Read a YAML config file and check its keys and types against ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(raw).__name__}")
    types_ = _field_types(cls)
    values = {}
    for key, value in raw.items():
        name = str(key)
        check_known_key(name, types_, str(path))
        values[name] = coerce(value, types_[name], name, str(path))
    return values


def build_config(cls: type, file_values: dict[str, Any], cli_values: dict[str, Any]):
    """Merge defaults < file < command line into ``cls``; missing required fields are errors."""
    merged = {**file_values, **cli_values}
    config = cls(**merged)
    for name, value in merged.items():  # a value given explicitly wins over a --recipe preset
        setattr(config, name, value)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.metadata.get("required") and getattr(config, f.name) in ("", None)
    ]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ConfigError(f"missing required setting(s): {flags} (on the command line or in --config)")
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


# ---------------------------------------------------------------------------------------------------
# The command line, generated from the dataclass


def _cli_type(tp: Any, key: str):
    def parse(text: str):
        if tp is str:
            return text
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        return coerce(value, tp, key, "command line")

    parse.__name__ = _type_name(tp)
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config`` and one flag per dataclass field; unset flags are left out of the namespace."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings (flags override it).")
    group = parser.add_argument_group(f"{cls.__name__} settings (YAML keys use underscores)")
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help strings
        if f.metadata.get("choices"):
            help_text += f" Choices: {', '.join(f.metadata['choices'])}."
        if f.metadata.get("bounds"):
            help_text += f" Allowed: {describe_bounds(f.metadata['bounds'])}.".replace("%", "%%")
        if f.metadata.get("required"):
            help_text += " (required)"
        elif f.default is not dataclasses.MISSING:
            help_text += f" (default: {f.default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(tp)
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if origin is list:
            (item_tp,) = typing.get_args(tp)
            kwargs.update(nargs="+", type=_cli_type(item_tp, f.name))
        else:
            kwargs.update(type=_cli_type(tp, f.name), metavar=f.name.upper())
        group.add_argument(flag, **kwargs)


def config_from_args(cls: type, args: argparse.Namespace):
    """Build the stage config from parsed arguments (``--config`` file, then flags)."""
    names = {f.name for f in dataclasses.fields(cls)}
    cli_values = {k: v for k, v in vars(args).items() if k in names}
    file_values = read_yaml_config(args.config, cls) if getattr(args, "config", None) else {}
    return build_config(cls, file_values, cli_values)
