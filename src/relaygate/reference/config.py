"""Start-up configuration of the reference relay and the ``N/Ws`` rate-limit notation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from relaygate.keys import masked_repr

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_UPSTREAM_DEADLINE_S",
    "DEFAULT_UPSTREAM_MAX_BYTES",
    "RateLimit",
    "RelayConfig",
]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: Total deadline of one upstream answer (connect to last byte): long streams still fit.
DEFAULT_UPSTREAM_DEADLINE_S = 900.0
#: Most bytes read of one upstream answer (a stream's events all together).
DEFAULT_UPSTREAM_MAX_BYTES = 64 * 1024 * 1024

_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*s\s*$")


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` admitted requests per key in any sliding ``window_s`` seconds."""

    requests: int
    window_s: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"10/60s"`` -> 10 requests per 60 s; a bad text raises ``ValueError``."""
        match = _RATE_RE.match(text)
        if match is None:
            raise ValueError(f"rate limit must look like N/Ws (e.g. 60/60s), got {text!r}")
        requests, window_s = int(match.group(1)), float(match.group(2))
        if requests < 1 or window_s <= 0:
            raise ValueError(f"rate limit needs N >= 1 and W > 0, got {text!r}")
        return cls(requests, window_s)

    def __str__(self) -> str:
        return f"{self.requests}/{self.window_s:g}s"


@masked_repr("admin_token", "upstream_key")
@dataclasses.dataclass(slots=True)
class RelayConfig:
    """How the relay starts; runtime-changeable parts are copied into ``RelayState.settings``.

    ``upstream``/``upstream_key``/``models`` create one channel (group ``default``) at start;
    ``state_file`` (JSON or TOML) preloads users, tokens, channels, ratios and settings.
    """

    host: str = "127.0.0.1"
    port: int = 0
    admin_token: str | None = None
    upstream: str | None = None
    upstream_key: str | None = None
    models: tuple[str, ...] = ()
    state_file: Path | None = None
    faults: frozenset[str] = frozenset()
    rate_limit: RateLimit | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_times: int = 0
    #: longest silence from the upstream (connect, first byte, between stream events).
    upstream_timeout_s: float = 60.0
    #: longest one upstream answer may take in all, connect to last byte.
    upstream_deadline_s: float = DEFAULT_UPSTREAM_DEADLINE_S
    #: most bytes read of one upstream answer (a stream's events all together).
    upstream_max_bytes: int = DEFAULT_UPSTREAM_MAX_BYTES
    #: completion tokens assumed for the pre-consumption estimate when max_tokens is absent.
    default_completion_tokens: int = 500
    #: request-log entries kept in memory (oldest dropped first).
    log_limit: int = 100_000
