"""How a TOML table becomes a typed rules object: the field types *are* the schema.

Each rules class is a frozen, keyword-only dataclass. :func:`build` reads a TOML table into it
by looking at each field's annotation:

==============================================  ============================================
annotation                                      accepted in TOML
==============================================  ============================================
``bool`` / ``int`` / ``str``                    that type (a boolean is never an integer)
``float``                                       an integer or a float
``Literal["a", "b"]``                           one of those strings
``Fraction``                                    a decimal ratio: ``"0.075"``, ``2``, ``0.5``
``int | None``                                  an integer, or the string ``"none"``
``X | None`` (other X)                          X; absent means None
``tuple[str, ...]``                             a list of strings
``Mapping[str, Fraction]``                      a table of name = ratio
``Mapping[str, str]``                           a table of strings
``Mapping[str, str | int | float | bool]``      a table of scalars
==============================================  ============================================

A field without a default is required. ``setting(..., behaviour=False)`` marks configuration
(prices, timings, adapter settings) that a relay profile may change without declaring a
deviation; every other field is behaviour (see :mod:`relaygate.profiles.deviations`).

Exceptions: :class:`ProfileError` - the message names the file, the key path and what was
expected; :class:`NotApplicable` - a profile says an area does not apply (the suite skips).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "NotApplicable",
    "ProfileError",
    "build",
    "check_keys",
    "convert",
    "is_behaviour",
    "setting",
    "toml_fields",
]


class ProfileError(Exception):
    """A profile is missing or invalid. The message names the file, the key path and the fix."""


class NotApplicable(Exception):
    """The profile says an area does not apply to this relay; ``reason`` says why (a skip)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_NOT_FROM_TOML = "not_from_toml"
_BEHAVIOUR = "behaviour"


def setting(
    default: Any = dataclasses.MISSING, *, behaviour: bool = True, from_toml: bool = True
) -> Any:
    """A rules field: its default (none = required), and whether it is behaviour."""
    metadata = {_BEHAVIOUR: behaviour, _NOT_FROM_TOML: not from_toml}
    if isinstance(default, dict | list):
        frozen = types.MappingProxyType(dict(default)) if isinstance(default, dict) else ()
        return dataclasses.field(default_factory=lambda: frozen, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_behaviour(field: dataclasses.Field[Any]) -> bool:
    return bool(field.metadata.get(_BEHAVIOUR, True))


def toml_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` a TOML table may set, in declaration order."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get(_NOT_FROM_TOML)]


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def error(path: Path, key: str, expected: str) -> ProfileError:
    return ProfileError(f"{path}: key `{key}`: {expected}")


def check_keys(data: Mapping[str, Any], allowed: frozenset[str], path: Path, where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        shown = ", ".join(f"`{where}{k}`" for k in unknown)
        raise ProfileError(
            f"{path}: unknown key(s) {shown}; allowed here: {', '.join(sorted(allowed))}"
        )


def build(cls: type[Any], data: Mapping[str, Any], path: Path, where: str, **extra: Any) -> Any:
    """``cls(**extra, **fields read from data)``; ``where`` is the key path prefix (``"stream."``).

    Keys of ``data`` that are not fields of ``cls`` must have been checked by the caller.
    """
    values: dict[str, Any] = dict(extra)
    hints = _hints(cls)
    for field in toml_fields(cls):
        key = f"{where}{field.name}"
        if field.name in data:
            value = convert(hints[field.name], data[field.name], path, key)
            _check_range(field.name, value, path, key)
            values[field.name] = value
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise error(path, key, "required but missing")
    return cls(**values)


def _check_range(name: str, value: Any, path: Path, key: str) -> None:
    """Numbers in a profile are counts, sizes, times or HTTP statuses: none is negative, and a
    status is a real one (100-599)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if name == "status" or name.endswith("_status"):
        if not 100 <= value <= 599:
            raise error(path, key, f"expected an HTTP status (100-599), got {value!r}")
    elif value < 0:
        raise error(path, key, f"cannot be negative, got {value!r}")


def ratio(value: Any, path: Path, key: str) -> Fraction:
    """A decimal ratio, exact (``"0.075"`` is 3/40, never a binary float)."""
    expected = f'expected a decimal ratio such as "0.075", got {value!r}'
    # bool is an int subclass; `true` is never a ratio.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise error(path, key, expected)
    try:
        # str(float) is the shortest repr ("0.075"), so TOML floats stay exact decimals too.
        result = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise error(path, key, expected) from None
    if result < 0:
        raise error(path, key, f"a ratio cannot be negative, got {value!r}")
    return result


def convert(annotation: Any, value: Any, path: Path, key: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is types.UnionType or origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        if inner == [int]:
            if value == "none":
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise error(path, key, f'expected an integer or "none", got {value!r}')
            return value
        (only,) = inner
        return convert(only, value, path, key)
    if origin is Literal:
        if not isinstance(value, str) or value not in args:
            raise error(path, key, f"expected one of {', '.join(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise error(path, key, "expected a list of strings")
        return tuple(value)
    if origin is Mapping:
        return _mapping(args[1], value, path, key)
    if annotation is Fraction:
        return ratio(value, path, key)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise error(path, key, f"expected int or float, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation in (bool, int, str):
        if not isinstance(value, annotation) or (isinstance(value, bool) and annotation is int):
            name = annotation.__name__
            raise error(path, key, f"expected {name}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"profile field {key}: unsupported annotation {annotation!r}")


def _mapping(value_type: Any, value: Any, path: Path, key: str) -> Mapping[str, Any]:
    if value_type is Fraction:
        if not isinstance(value, dict):
            raise error(path, key, "expected a table of name = ratio")
        return types.MappingProxyType({k: ratio(v, path, f"{key}.{k}") for k, v in value.items()})
    scalars = typing.get_args(value_type) or (value_type,)
    if not isinstance(value, dict) or not all(isinstance(v, scalars) for v in value.values()):
        what = "strings" if scalars == (str,) else "strings, numbers or booleans"
        raise error(path, key, f"expected a table whose values are {what}")
    return types.MappingProxyType(dict(value))
