"""The relay under test: where it is, which key and profile, and what ground truth we have."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from relaygate.keys import mask_key

if TYPE_CHECKING:
    from relaygate.stack import EmbeddedStack

__all__ = ["RelayOptions", "RelayTarget", "normalize_base_url"]


def normalize_base_url(url: str) -> str:
    """``http://h:3000/v1/`` and ``http://h:3000`` both become ``http://h:3000``."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--relay-url must start with http:// or https://, got {url!r}")
    return url


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
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def secrets(self) -> tuple[str | None, ...]:
        upstream_key = self.stack.info.upstream_key if self.stack and self.stack.info else None
        return (self.key, self.admin_token, upstream_key)

    def describe(self) -> str:
        where = "embedded stack" if self.embedded else self.base_url
        return f"{where} (key {mask_key(self.key)}, mode {self.mode})"
