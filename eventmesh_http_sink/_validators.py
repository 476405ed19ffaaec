"""Generic attrs validators that raise :class:`ConfigError` naming the field.

A nested config class (``BatchConfig``, ``CircuitBreakerConfig``, ...) sets a
``_config_prefix`` class variable, so its errors read ``batch.max_records: ...``.
:func:`known_options` makes a misspelt option name a :class:`ConfigError` too.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any, TypeVar

import attrs

from .errors import ConfigError, UnknownOptionError

_C = TypeVar("_C", bound=type)


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


def known_options(cls: _C) -> _C:
    """Class decorator (above ``@attrs.frozen``): an unknown keyword raises :class:`UnknownOptionError`.

    Python's own ``TypeError: __init__() got an unexpected keyword argument`` names
    neither the class nor the option meant; this names both, with the closest known
    option names (``difflib``) as a suggestion.
    """
    init = vars(cls)["__init__"]  # the attrs-generated one
    known = frozenset(a.alias for a in attrs.fields(cls) if a.init)
    prefix = getattr(cls, "_config_prefix", None)

    @functools.wraps(init)
    def __init__(self: object, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - it is the __init__
        unknown = [name for name in kwargs if name not in known]
        if unknown:
            raise _unknown(cls.__name__, prefix, unknown, known)
        init(self, *args, **kwargs)

    setattr(cls, "__init__", __init__)  # noqa: B010 - mypy refuses assigning to cls.__init__
    return cls


def _unknown(owner: str, prefix: str | None, unknown: list[str], known: frozenset[str]) -> UnknownOptionError:
    name = unknown[0]
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = f"see help({owner}) for the options"
    reason = f"{owner} has no option {name!r}; {hint}"
    if len(unknown) > 1:
        reason += f" (also unknown: {', '.join(map(repr, unknown[1:]))})"
    return UnknownOptionError(f"{prefix}.{name}" if prefix else name, reason)
