"""Typed configs from plain data: dataclasses filled from dicts, with errors that name the field.

Every config in Heist is a frozen dataclass. `parse(cls, data, path)` builds one from a dict
(parsed YAML, a Tune config, keyword arguments), checks each value against the field's type and
collects every problem as `path: message` (e.g. `attacks[0].budget: expected an integer >= 1, got 0`)
before raising one `ConfigError` — so a user sees all mistakes at once, before work starts.

`load_yaml(path)` is the one YAML reader of every command: UTF-8 only, a duplicate key is an error (not
last-wins), `1e-3` is a number (YAML 1.2), and every syntax error names `file:line:column`.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

INT_MAX = 2**63 - 1         # every integer a config holds fits a signed 64-bit integer (numpy, torch, sqlite)


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
        if len(others) == 1 and others[0] in (int, float, str) and isinstance(value, others[0]) \
                and not isinstance(value, bool):
            return _coerce(others[0], value, path, errors)        # right type, wrong value: its own message
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
    if tp in (dict, list) and not isinstance(value, tp):
        errors.append(f"{path}: expected {'a mapping' if tp is dict else 'a list'}, got {value!r}")
        return None
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
        elif abs(value) > INT_MAX:
            errors.append(f"{path}: {value} is too large for an integer (at most {INT_MAX})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected a number, got {value!r}")
            return value
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            errors.append(f"{path}: expected a number, got {value!r}" if isinstance(value, float)
                          else f"{path}: {value} is too large for a number")
            return value
        return number
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


# ------------------------------------------------------------------------------------------------ YAML
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with duplicate keys rejected and YAML 1.2 floats such as `1e-3`."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":    # `<<: *defaults` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:                                   # unhashable: PyYAML reports it below
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first.line + 1}, column "
                                    f"{first.column + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def parse_yaml(text: str | bytes, source: str) -> Any:
    """A YAML document as plain data; ConfigError `source:line:column: problem` when it is not valid."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            before = text[:e.start]
            line, column = before.count(b"\n") + 1, e.start - (before.rfind(b"\n") + 1) + 1
            raise ConfigError(f"{source}:{line}:{column}: not UTF-8 text (byte 0x{text[e.start]:02x}); "
                              f"save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        where = (f" ({e.context} at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
                 if e.context and e.problem and e.context_mark else "")
        raise ConfigError(f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}{where}") from None
    except yaml.YAMLError as e:     # the reader: a character YAML does not allow (it names its position)
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None


def load_yaml(path: str | os.PathLike) -> Any:
    """Read and parse a YAML file (see `parse_yaml`); ConfigError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_yaml(raw, str(path))


def knob(default, help: str, valid: str | None = None):
    """A Params field with its meaning (`help`) and valid range (`valid`, e.g. ">= 0", "[0, 1]") as metadata:
    `heist describe` and docs/reference.md show them beside the default."""
    return dataclasses.field(default=default, metadata={"help": help, **({"valid": valid} if valid else {})})
