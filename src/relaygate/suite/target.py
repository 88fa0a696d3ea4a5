"""The relay under test: where it is, which key and profile, and what ground truth we have."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from relaygate.keys import mask_key, masked_repr

if TYPE_CHECKING:
    from relaygate.stack import EmbeddedStack

# The suite client's byte cap per exchange (--relay-max-bytes); see relaygate.suite.client.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

__all__ = [
    "DEFAULT_MAX_BYTES",
    "RelayOptions",
    "RelayTarget",
    "normalize_base_url",
    "parse_header_lines",
]


def normalize_base_url(url: str) -> str:
    """``http://h:3000/v1/`` and ``http://h:3000`` both become ``http://h:3000``."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--relay-url must start with http:// or https://, got {url!r}")
    return url


def parse_header_lines(values: Iterable[str]) -> dict[str, str]:
    """``["x-a: 1", "x-b: 2\nx-c: 3"]`` -> ``{"x-a": "1", "x-b": "2", "x-c": "3"}``.

    Each value holds one or more ``Name: value`` lines, separated by newlines, or by ``;``
    when the value has no newline (``RELAYGATE_RELAY_HEADERS="x-a: 1; x-b: 2"``). A later
    name replaces an earlier one. ``ValueError`` names a line without ``Name:``.
    """
    headers: dict[str, str] = {}
    for value in values:
        lines = value.splitlines() if "\n" in value else value.split(";")
        for line in lines:
            if not line.strip():
                continue
            name, colon, text = line.partition(":")
            if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
                raise ValueError(f"relay header {line.strip()!r} is not 'Name: value'")
            headers[name.strip()] = text.strip()
    return headers


@masked_repr("relay_key", "admin_token", "extra_headers")
@dataclasses.dataclass(frozen=True)
class RelayOptions:
    """The suite's options after CLI > env > ini resolution."""

    relay_url: str | None
    relay_key: str | None
    admin_token: str | None
    profile: str
    upstream_url: str | None
    report_dir: str
    timeout_s: float
    fuzz_examples: int
    faults: tuple[str, ...]
    # --relay-header: run-time headers (e.g. a port-dependent routing header), over the
    # profile's [http] extra_headers
    extra_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    max_bytes: int = DEFAULT_MAX_BYTES


@masked_repr("key", "admin_token", "extra_headers")
@dataclasses.dataclass
class RelayTarget:
    """Everything a case needs to know about the relay under test (``repr`` masks the keys)."""

    base_url: str
    key: str | None
    admin_token: str | None
    upstream_url: str | None
    mode: str  # "mock": channels point at our mock upstream; "live": they do not
    embedded: bool
    timeout_s: float
    stack: EmbeddedStack | None = None
    extra_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def secrets(self) -> tuple[str | None, ...]:
        """Every value to mask in what leaves the process: the keys, the admin token, the
        upstream key and the ``--relay-header`` values (they often carry provider keys)."""
        upstream_key = self.stack.info.upstream_key if self.stack and self.stack.info else None
        return (self.key, self.admin_token, upstream_key, *self.extra_headers.values())

    def describe(self) -> str:
        where = "embedded stack" if self.embedded else self.base_url
        return f"{where} (key {mask_key(self.key)}, mode {self.mode})"
