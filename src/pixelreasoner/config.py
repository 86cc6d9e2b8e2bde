"""Typed configuration: dataclasses, named YAML recipes, ``key=value`` overrides checked against types.

A stage's config is a dataclass whose defaults run the tiny CPU job. A recipe is a YAML file
naming some of its fields; overrides on the command line (``lr=1e-5 model.freeze_vision=true``
style, dotted for nested dataclasses) are parsed against each field's annotated type, so a typo
or a wrong type is an error before anything runs, never a silently ignored setting.

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo:
...     lr: float = 1e-3
...     steps: int = 10
...     name: str | None = None
>>> apply_overrides(Demo(), ["lr=2e-4", "name=run1"])
Demo(lr=0.0002, steps=10, name='run1')
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or an override does not fit the config's fields or types."""


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _convert(value: Any, annotation: Any, name: str) -> Any:
    """``value`` (from YAML or a command-line string) as the annotated type, or ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{name}: {value!r} fits none of {annotation} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        converted = [_convert(v.strip() if isinstance(v, str) else v, inner, name) for v in items if v != ""]
        return tuple(converted) if origin is tuple else converted
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if annotation is Any:
        return value
    raise ConfigError(f"{name}: unsupported field type {annotation}")


def _fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls) if f.init}


def _set(config: Any, dotted: str, value: Any, source: str) -> Any:
    head, _, rest = dotted.partition(".")
    fields = _fields(type(config))
    if head not in fields:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: {type(config).__name__} has no field {head!r} (fields: {known})")
    annotation, _ = fields[head]
    if rest:
        child = getattr(config, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{source}: {head} is not a section, so {dotted!r} does not exist")
        return dataclasses.replace(config, **{head: _set(child, rest, value, source)})
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {head} is a section; give its fields, e.g. {head}.FIELD=VALUE")
        child = getattr(config, head)
        for key, inner in value.items():
            child = _set(child, str(key), inner, source)
        return dataclasses.replace(config, **{head: child})
    return dataclasses.replace(config, **{head: _convert(value, annotation, f"{source}: {dotted}")})


def apply_mapping(config: T, values: Mapping[str, Any], source: str = "recipe") -> T:
    """Set fields from a (nested) mapping, e.g. a parsed YAML recipe."""
    for key, value in values.items():
        config = _set(config, str(key), value, source)
    return config


def apply_overrides(config: T, overrides: Sequence[str]) -> T:
    """Apply ``key=value`` strings (dotted keys for sections)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        config = _set(config, key.strip(), value.strip(), f"override {item!r}")
    return config


def load_config(cls: type[T], recipe: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``cls``, then the YAML ``recipe`` (if any), then ``overrides``."""
    config = cls()
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist")
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"recipe {path} must be a mapping of field: value")
        config = apply_mapping(config, values, source=str(path))
    return apply_overrides(config, overrides)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (for saving beside checkpoints and in logs)."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
