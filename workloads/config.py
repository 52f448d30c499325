"""Typed configs from plain data: dataclasses filled from dicts, with errors that name the field.

Every config in Heist is a frozen dataclass. `parse(cls, data, path)` builds one from a dict
(parsed YAML, a Tune config, keyword arguments), checks each value against the field's type and
collects every problem as `path: message` (e.g. `attacks[0].budget: expected an integer >= 1, got 0`)
before raising one `ConfigError` — so a user sees all mistakes at once, before work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Union


class ConfigError(ValueError):
    """One or more invalid config values; `errors` lists `path: message` lines."""

    def __init__(self, errors: list[str] | str):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_choice(path: str, value: Any, choices) -> None:
    """Raise ConfigError unless value is one of choices, with a did-you-mean hint."""
    if value not in choices:
        raise ConfigError(f"{path}: unknown value {value!r}{did_you_mean(value, choices)}; "
                          f"expected one of {sorted(choices)}")


def _describe(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp).replace("typing.", "")))


def _coerce(tp, value, path: str, errors: list[str]):
    """Return value checked against type tp; append to errors and return None when it does not fit."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and others[0] not in (int, float, str, bool):  # a structure: keep its own messages
            return _coerce(others[0], value, path, errors)
        for arg in (a for a in args if a is not type(None)):
            trial: list[str] = []
            out = _coerce(arg, value, path, trial)
            if not trial:
                return out
        errors.append(f"{path}: expected {' or '.join(_describe(a) for a in args)}, got {value!r}")
        return None
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            errors.append(f"{path}: expected one of {list(allowed)}, got {value!r}{did_you_mean(value, allowed)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{path}: expected a list, got {value!r}")
            return None
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(item_tp, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return None
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {k: _coerce(val_tp, v, f"{path}.{k}", errors) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return None
        return _build(tp, value, path, errors)
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            errors.append(f"{path}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _explicit(default) -> dict:
    """The fields a default instance sets away from its class's own defaults, e.g. {epochs: 30, batch_size: 64,
    lr: 0.002} for TrainConfig(epochs=30, batch_size=64, lr=2e-3): what a partial mapping for it keeps.
    (Fields that the class's __post_init__ derives, such as a sampler chosen from the algorithm, stay derived.)"""
    fields = [f.name for f in dataclasses.fields(default) if f.init]
    try:
        plain = type(default)()
    except (TypeError, ConfigError):       # no class defaults to compare with: keep every field
        return {name: getattr(default, name) for name in fields}
    return {name: getattr(default, name) for name in fields if getattr(default, name) != getattr(plain, name)}


def _build(cls, data: dict, path: str, errors: list[str], base: dict | None = None):
    """Build `cls` from `data`; keys `data` leaves out take their value from `base`, else the field's default.
    A partial mapping for a field whose default is a dataclass instance (e.g. `train: {epochs: 5}` where the
    default is TrainConfig(epochs=30, batch_size=64, lr=2e-3)) is merged into that instance, so the documented
    defaults of its siblings stay."""
    first_error = len(errors)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    base = base or {}
    for key in data:
        if key not in fields:
            errors.append(f"{prefix}{key}: unknown key{did_you_mean(key, fields)}")
    kwargs = {}
    for name, f in fields.items():
        default = base.get(name, f.default)
        if name in data:
            value = data[name]
            if dataclasses.is_dataclass(default) and not isinstance(default, type) and isinstance(value, dict):
                kwargs[name] = _build(type(default), value, f"{prefix}{name}", errors, base=_explicit(default))
            else:
                kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}", errors)
        elif name in base:
            kwargs[name] = base[name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{prefix}{name}: required")
    if len(errors) > first_error:
        return None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        errors.extend(e.errors if not path else [f"{prefix}{m}" for m in e.errors])
        return None


def parse(cls, data: dict | None, path: str = ""):
    """Build dataclass `cls` from `data`, raising ConfigError listing every invalid field."""
    errors: list[str] = []
    out = _build(cls, dict(data or {}), path, errors)
    if errors:
        raise ConfigError(errors)
    return out


def positive(path: str, value, minimum=1) -> None:
    """Raise ConfigError when value < minimum (used in __post_init__ checks)."""
    if value < minimum:
        raise ConfigError(f"{path}: expected >= {minimum}, got {value!r}")


def above(path: str, value, bound=0) -> None:
    """Raise ConfigError unless value > bound."""
    if not value > bound:
        raise ConfigError(f"{path}: expected a number > {bound}, got {value!r}")


def in_range(path: str, value, low, high) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{path}: expected a value in [{low}, {high}], got {value!r}")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def knob(default, help: str, valid: str | None = None):
    """A Params field with its meaning (`help`) and valid range (`valid`, e.g. ">= 0", "[0, 1]") as metadata:
    `heist describe` and docs/reference.md show them beside the default."""
    return dataclasses.field(default=default, metadata={"help": help, **({"valid": valid} if valid else {})})
