"""Key masking: a key never appears whole in a report, log line or assertion message."""

from __future__ import annotations

import re

__all__ = ["mask_key", "mask_secrets"]

_KEY_RE = re.compile(r"\b(sk|fk|rk|pk)-[A-Za-z0-9_\-]{8,}")


def mask_key(key: str | None) -> str:
    """``sk-abc…xyz``: enough to tell keys apart, never enough to use one."""
    if not key:
        return "<none>"
    if len(key) <= 10:
        return key[:3] + "…"
    return f"{key[:6]}…{key[-3:]}"


def mask_secrets(text: str, *secrets: str | None) -> str:
    """Mask every given secret and anything shaped like an API key inside ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, mask_key(secret))
    return _KEY_RE.sub(lambda m: mask_key(m.group(0)), text)
