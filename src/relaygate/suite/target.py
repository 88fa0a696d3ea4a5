"""The relay under test: where it is, which key and profile, and what ground truth we have."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from relaygate.keys import mask_key

if TYPE_CHECKING:
    from relaygate.stack import EmbeddedStack

__all__ = ["RelayOptions", "RelayTarget", "normalize_base_url", "parse_header_lines"]


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


@dataclasses.dataclass
class RelayTarget:
    """Everything a case needs to know about the relay under test."""

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

    @property
    def secrets(self) -> tuple[str | None, ...]:
        upstream_key = self.stack.info.upstream_key if self.stack and self.stack.info else None
        return (self.key, self.admin_token, upstream_key)

    def describe(self) -> str:
        where = "embedded stack" if self.embedded else self.base_url
        return f"{where} (key {mask_key(self.key)}, mode {self.mode})"
