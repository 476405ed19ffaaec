"""Generic attrs validators that raise :class:`ConfigError` naming the field.

A nested config class (``BatchConfig``, ``CircuitBreakerConfig``, ...) sets a
``_config_prefix`` class variable, so its errors read ``batch.max_records: ...``.
"""

from __future__ import annotations

from typing import Any

import attrs

from .errors import ConfigError


def field_name(inst: object, attr: attrs.Attribute[Any]) -> str:
    """``attr.name``, prefixed with the owning class's ``_config_prefix`` if it has one."""
    prefix = getattr(type(inst), "_config_prefix", None)
    return f"{prefix}.{attr.name}" if prefix else attr.name


def positive(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(field_name(inst, attr), f"must be a positive number, got {value!r}")


def positive_int(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(field_name(inst, attr), f"must be a positive int, got {value!r}")


def non_negative(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(field_name(inst, attr), f"must be a number >= 0, got {value!r}")


def non_negative_int(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(field_name(inst, attr), f"must be an int >= 0, got {value!r}")


def optional(validator: Any) -> Any:
    def check(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None:
            validator(inst, attr, value)

    return check


def one_of(*choices: str) -> Any:
    def check(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ConfigError(
                field_name(inst, attr), f"must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )

    return check


def instance_of(cls: type) -> Any:
    def check(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, cls):
            raise ConfigError(field_name(inst, attr), f"must be a {cls.__name__}, got {type(value).__name__}")

    return check


def non_empty_str(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(field_name(inst, attr), f"must be a non-empty str, got {value!r}")


def callable_(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise ConfigError(field_name(inst, attr), f"must be callable, got {type(value).__name__}")


def boolean(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(field_name(inst, attr), f"must be True or False, got {value!r}")
