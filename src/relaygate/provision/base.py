"""Provisioning vocabulary shared by every adapter.

Exceptions (all carry masked keys only):

* :class:`ProvisioningUnavailable` - this adapter cannot produce what was asked; the suite turns
  it into a SKIP with ``reason`` (never a pass).
* :class:`ProvisioningError` - the relay's admin API refused or answered something unexpected
  (including one-api/new-api's ``success:false`` with HTTP 200); a setup failure, not a skip.
"""

from __future__ import annotations

import enum
import itertools
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from relaygate.bounded import DEFAULT_MAX_BYTES, ByteCapExceeded, DeadlineExceeded, bounded_client
from relaygate.keys import mask_key, mask_secrets

__all__ = [
    "Balance",
    "Charge",
    "JSONAdminClient",
    "KeyState",
    "ProvisionedKey",
    "Provisioner",
    "ProvisioningError",
    "ProvisioningUnavailable",
    "wait_for_settled_balance",
]


class KeyState(enum.Enum):
    """The states of a relay key the conformance suite asks for."""

    FUNDED = "funded"  # token and user both have ample quota
    TOKEN_EXHAUSTED = "token_exhausted"  # token remain_quota 0, user funded (F11, F20)
    USER_EXHAUSTED = "user_exhausted"  # user quota 0, token funded (F21)
    EXPIRED = "expired"  # token expiry in the past (F15)
    DISABLED = "disabled"  # token disabled (F15)
    USER_DISABLED = "user_disabled"  # owning user disabled/banned
    MODEL_RESTRICTED = "model_restricted"  # token allow-list (kw ``models``)
    UNLIMITED = "unlimited"  # token unlimited_quota, user funded
    RATE_LIMITED = "rate_limited"  # a tight per-key limit (kw ``rate_limit`` "N/Ws")
    LOW_QUOTA = "low_quota"  # token funded for exactly ``quota`` units (kw, required)

    @property
    def env_var(self) -> str:
        """The environment variable the static adapter reads for this state."""
        return f"RELAYGATE_KEY_{self.name}"


class ProvisioningUnavailable(Exception):
    """This adapter cannot provide the requested key or reading; ``reason`` explains why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProvisioningError(Exception):
    """The admin API failed (HTTP error, ``success:false``, or an unexpected answer)."""


@dataclass(frozen=True)
class ProvisionedKey:
    """A relay key in a known state. ``repr`` never shows the key."""

    key: str = field(repr=False)
    token_id: int | str | None
    user_id: int | str | None
    group: str
    state: KeyState
    token_name: str | None = None
    # Quota units granted when the adapter set them (None: unknown or unlimited).
    granted_quota: int | None = None

    @property
    def masked(self) -> str:
        return mask_key(self.key)

    def __repr__(self) -> str:
        return (
            f"ProvisionedKey(key={self.masked!r}, token_id={self.token_id!r}, "
            f"user_id={self.user_id!r}, group={self.group!r}, state={self.state.name})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class Balance:
    """A token's balance in quota units, as the relay's admin API reports it."""

    remain_quota: int
    used_quota: int
    unlimited: bool = False


@dataclass(frozen=True)
class Charge:
    """One per-request billing log entry."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    quota: int
    request_id: str | None = None
    created_at: int | None = None
    stream: bool | None = None


@runtime_checkable
class Provisioner(Protocol):
    """Creates relay keys in given states and reads their balances."""

    name: str

    def funded_key(
        self, *, quota: int | None = None, models: list[str] | None = None, group: str = "default"
    ) -> ProvisionedKey: ...

    def key_with(self, state: KeyState, **kw: Any) -> ProvisionedKey: ...

    def balance(self, key: ProvisionedKey) -> Balance | None: ...

    def charges(self, key: ProvisionedKey) -> list[Charge] | None: ...

    def set_user_quota(self, user_id: int | str, quota: int) -> None: ...

    def set_token(self, key: ProvisionedKey, **fields: Any) -> None: ...

    def close(self) -> None: ...


def wait_for_settled_balance(
    read: Callable[[], Balance | None],
    *,
    timeout_s: float,
    poll_interval_s: float,
    until: Callable[[Balance], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Balance | None:
    """Poll ``read`` until the balance settles (relays bill asynchronously, RELAY_SPEC §2).

    Settled means ``until(balance)`` holds, or (without ``until``) two consecutive reads agree.
    Bounded by ``timeout_s``: returns the last reading, which the caller judges.
    """
    deadline = clock() + timeout_s
    last = read()
    while True:
        if last is not None and until is not None and until(last):
            return last
        if clock() >= deadline:
            return last
        sleep(poll_interval_s)
        current = read()
        if until is None and current == last:
            return current
        last = current


class JSONAdminClient:
    """A thin httpx wrapper for admin APIs: every request has a total deadline (``timeout_s``)
    and a byte cap (``max_bytes``), and every error masks the secrets. A ``client`` passed in
    is used as it is (its bounds are the caller's: see :func:`relaygate.bounded.bounded_client`)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        max_bytes: int = DEFAULT_MAX_BYTES,
        headers: Mapping[str, str] | None = None,
        secrets_to_mask: tuple[str, ...] = (),
        client: httpx.Client | None = None,
    ) -> None:
        self._secrets = tuple(s for s in secrets_to_mask if s)
        self.http = client or bounded_client(
            base_url,
            timeout_s=timeout_s,
            max_bytes=max_bytes,
            secrets=self._secrets,
            headers=headers,
        )

    def add_secret(self, secret: str | None) -> None:
        """Mask ``secret`` in every later error message."""
        if secret:
            self._secrets = (*self._secrets, secret)

    def mask(self, text: str) -> str:
        return mask_secrets(text, *self._secrets)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return self.http.request(method, path, json=json, params=params, headers=headers)
        except (DeadlineExceeded, ByteCapExceeded) as exc:
            raise ProvisioningError(self.mask(f"admin API: {exc}")) from None
        except httpx.HTTPError as exc:
            raise ProvisioningError(
                self.mask(f"{method} {path}: admin API unreachable: {exc!r}")
            ) from None

    def json_of(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ProvisioningError(
                self.mask(
                    f"{response.request.method} {response.request.url.path}: expected JSON, got "
                    f"HTTP {response.status_code} {response.text[:200]!r}"
                )
            ) from None

    def close(self) -> None:
        self.http.close()


def name_sequence(prefix: str, run_id: str | None) -> Iterator[str]:
    """Short unique names (one-api caps usernames at 12 characters, RELAY_SPEC §7)."""
    run = run_id if run_id is not None else secrets.token_hex(3)
    return (f"{prefix}{run}{n}" for n in itertools.count(1))
