"""Key masking: a key never appears whole in a report, log line, ``repr`` or assertion message.

:func:`mask_key` is the one mask (``sk-abc…xyz``); :func:`mask_secrets` applies it to text;
:func:`masked_repr` gives a class a ``repr`` that masks its secret fields, so a traceback with
locals (``pytest -l``) or a log line showing the object never shows a key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["mask_key", "mask_secrets", "mask_value", "masked_repr", "sensitive_header"]

_KEY_RE = re.compile(r"\b(sk|fk|rk|pk)-[A-Za-z0-9_\-]{8,}")
# Header names whose values are credentials whatever they look like (x-api-key, api-key,
# x-goog-api-key, proxy-authorization, cookie, x-admin-token, ...).
_SENSITIVE_HEADER_RE = re.compile(r"auth|key|token|secret|cookie|passw", re.IGNORECASE)

_T = TypeVar("_T")


def mask_key(key: str | None) -> str:
    """``sk-abc…xyz``: enough to tell keys apart, never enough to use one."""
    if not key:
        return "<none>"
    if len(key) <= 10:
        return key[:3] + "…"
    return f"{key[:6]}…{key[-3:]}"


def mask_secrets(text: str, *secrets: str | None) -> str:
    """Mask every given secret and anything shaped like an API key inside ``text``."""
    # Longest first: a secret that contains another is masked whole, not half.
    for secret in sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True):
        text = text.replace(secret, mask_key(secret))
    return _KEY_RE.sub(lambda m: mask_key(m.group(0)), text)


def sensitive_header(name: str) -> bool:
    """True for a header whose value is a credential (``Authorization``, ``X-Api-Key``, …)."""
    return bool(_SENSITIVE_HEADER_RE.search(name))


def mask_value(value: Any) -> Any:
    """A secret field's value for a ``repr``: strings masked, mappings' values masked."""
    if isinstance(value, str):
        return mask_key(value)
    if isinstance(value, Mapping):
        return {k: mask_key(str(v)) for k, v in value.items()}
    if isinstance(value, Iterable):
        return [mask_key(str(v)) for v in value]
    return value


def masked_repr(*fields: str) -> Callable[[type[_T]], type[_T]]:
    """Class decorator for a dataclass: its ``repr`` shows ``fields`` masked (:func:`mask_value`).

    Put it above ``@dataclass`` so it replaces the generated ``__repr__``. Values of the other
    fields still pass through :func:`mask_secrets`, which catches key-shaped text anywhere.
    """

    def decorate(cls: type[_T]) -> type[_T]:
        names = [f.name for f in dataclasses.fields(cls) if f.repr]  # type: ignore[arg-type]

        def __repr__(self: Any) -> str:
            parts = []
            for name in names:
                value = getattr(self, name)
                shown = mask_value(value) if name in fields and value is not None else value
                parts.append(f"{name}={shown!r}")
            return mask_secrets(f"{type(self).__qualname__}({', '.join(parts)})")

        cls.__repr__ = __repr__  # type: ignore[method-assign]
        return cls

    return decorate
