"""The relay's in-memory state: users, tokens, channels, ratios, settings, the request log.

Everything runs on one asyncio loop. Every balance change is a plain synchronous method with no
``await`` between the check and the update, so concurrent requests can neither lose an update
nor overdraw past what they reserved. Admin payloads and state files are validated here (one
set of rules for both); a bad field raises :class:`FieldError` naming it.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import secrets
import string
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from relaygate.keys import mask_key, masked_repr
from relaygate.reference.billing import (
    DEFAULT_COMPLETION_RATIO,
    DEFAULT_GROUP_RATIO,
    DEFAULT_MODEL_RATIO,
    RatioError,
    format_ratio,
    parse_ratio,
)
from relaygate.reference.config import (
    DEFAULT_UPSTREAM_DEADLINE_S,
    DEFAULT_UPSTREAM_MAX_BYTES,
    RateLimit,
    RelayConfig,
)
from relaygate.reference.faults import UnknownFaultError, validate_faults
from relaygate.reference.limiter import SlidingWindowLimiter

__all__ = [
    "Channel",
    "FieldError",
    "LogEntry",
    "Ratios",
    "RelayState",
    "Settings",
    "Token",
    "User",
]

ENABLED = "enabled"
DISABLED = "disabled"
_KEY_ALPHABET = string.ascii_letters + string.digits


class FieldError(ValueError):
    """An admin payload or state-file field with a bad value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(slots=True)
class User:
    """A wallet: ``quota`` is what remains; ``reserved_quota`` is held by in-flight requests."""

    id: int
    username: str
    group: str = "default"
    quota: int = 0
    used_quota: int = 0
    status: str = ENABLED
    request_count: int = 0
    reserved_quota: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@masked_repr("key")
@dataclasses.dataclass(slots=True)
class Token:
    """An API key with its own quota ceiling (F6, F11), expiry, status and model allow-list."""

    id: int
    user_id: int
    key: str
    name: str = ""
    remain_quota: int = 0
    used_quota: int = 0
    unlimited_quota: bool = False
    expires_at: int = -1
    status: str = ENABLED
    models: list[str] | None = None
    rate_limit: RateLimit | None = None
    reserved_quota: int = 0

    def expired(self, now_s: float) -> bool:
        return self.expires_at != -1 and self.expires_at <= now_s

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rate_limit"] = None if self.rate_limit is None else str(self.rate_limit)
        return out


@masked_repr("key")
@dataclasses.dataclass(slots=True)
class Channel:
    """An upstream: routes the exact (case-sensitive) ``models`` for users of ``groups``."""

    id: int
    name: str
    base_url: str
    key: str
    models: list[str]
    groups: list[str]
    priority: int = 0
    status: str = ENABLED

    def to_dict(self) -> dict[str, Any]:
        """The admin view; the key is always masked."""
        out = dataclasses.asdict(self)
        out["key"] = mask_key(self.key)
        return out


@dataclasses.dataclass(slots=True)
class Ratios:
    """Group, model and completion ratios as exact fractions (F9)."""

    group_ratio: dict[str, Fraction]
    model_ratio: dict[str, Fraction]
    completion_ratio: dict[str, Fraction]

    @classmethod
    def defaults(cls) -> Ratios:
        return cls(
            {k: parse_ratio(v) for k, v in DEFAULT_GROUP_RATIO.items()},
            {k: parse_ratio(v) for k, v in DEFAULT_MODEL_RATIO.items()},
            {k: parse_ratio(v) for k, v in DEFAULT_COMPLETION_RATIO.items()},
        )

    def for_request(self, group: str, model: str) -> tuple[Fraction, Fraction, Fraction]:
        """(group, model, completion) ratios; unpriced names default to 1 (documented choice:
        a model an admin routed through a channel is billable without a price table entry)."""
        one = Fraction(1)
        return (
            self.group_ratio.get(group, one),
            self.model_ratio.get(model, one),
            self.completion_ratio.get(model, one),
        )

    def to_dict(self) -> dict[str, dict[str, str]]:
        """Ratios as exact decimal strings (numbers would lose digits through floats)."""
        return {
            name: {k: format_ratio(v) for k, v in getattr(self, name).items()}
            for name in ("group_ratio", "model_ratio", "completion_ratio")
        }


@dataclasses.dataclass(slots=True)
class Settings:
    """What the admin can change at runtime."""

    rate_limit: RateLimit | None = None
    retry_times: int = 0
    upstream_timeout_s: float = 60.0
    faults: frozenset[str] = frozenset()
    max_body_bytes: int = 8 * 1024 * 1024
    default_completion_tokens: int = 500
    #: Total deadline of one upstream answer (connect to last byte) and its byte cap.
    upstream_deadline_s: float = DEFAULT_UPSTREAM_DEADLINE_S
    upstream_max_bytes: int = DEFAULT_UPSTREAM_MAX_BYTES

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate_limit": None if self.rate_limit is None else str(self.rate_limit),
            "retry_times": self.retry_times,
            "upstream_timeout_s": self.upstream_timeout_s,
            "faults": sorted(self.faults),
            "max_body_bytes": self.max_body_bytes,
            "default_completion_tokens": self.default_completion_tokens,
            "upstream_deadline_s": self.upstream_deadline_s,
            "upstream_max_bytes": self.upstream_max_bytes,
        }


@dataclasses.dataclass(slots=True)
class LogEntry:
    """One relayed request (refunded ones carry quota 0)."""

    request_id: str
    token_id: int
    user_id: int
    model: str
    prompt_tokens: int
    completion_tokens: int
    quota: int
    status: int
    stream: bool
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- field validation shared by the admin API and state files -------------------------------


def _reject_unknown(data: Mapping[str, Any], allowed: set[str]) -> None:
    for field in data:
        if field not in allowed:
            raise FieldError(field, f"unknown field; allowed: {', '.join(sorted(allowed))}")


def _str(data: Mapping[str, Any], field: str, default: str | None = None) -> str:
    value = data.get(field, default)
    if not isinstance(value, str) or not value.strip():
        raise FieldError(field, "must be a non-empty string")
    return value


def _int(data: Mapping[str, Any], field: str, default: int, minimum: int | None = 0) -> int:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, "must be an integer")
    if minimum is not None and value < minimum:
        raise FieldError(field, f"must be >= {minimum}")
    return value


def _bool(data: Mapping[str, Any], field: str, default: bool) -> bool:
    value = data.get(field, default)
    if not isinstance(value, bool):
        raise FieldError(field, "must be true or false")
    return value


def _status(data: Mapping[str, Any], field: str, default: str) -> str:
    value = data.get(field, default)
    # one-api writes statuses as 1 (enabled) / 2 (disabled); accept both spellings.
    mapped = {1: ENABLED, 2: DISABLED, ENABLED: ENABLED, DISABLED: DISABLED}
    if isinstance(value, bool) or value not in mapped:
        raise FieldError(field, "must be 'enabled' or 'disabled'")
    return mapped[value]


def _str_list(data: Mapping[str, Any], field: str, default: list[str]) -> list[str]:
    value = data.get(field, default)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise FieldError(field, "must be a list of non-empty strings")
    return list(value)


def _rate_limit(data: Mapping[str, Any], field: str) -> RateLimit | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FieldError(field, "must be a string like '60/60s' or null")
    try:
        return RateLimit.parse(value)
    except ValueError as exc:
        raise FieldError(field, str(exc)) from exc


def _new_key() -> str:
    return "sk-" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(48))


class RelayState:
    """All mutable relay data. One instance per app; not thread-safe (asyncio only)."""

    def __init__(self, config: RelayConfig | None = None) -> None:
        config = config or RelayConfig()
        self.users: dict[int, User] = {}
        self.tokens: dict[int, Token] = {}
        self.tokens_by_key: dict[str, Token] = {}
        self.channels: dict[int, Channel] = {}
        self.ratios = Ratios.defaults()
        self.settings = Settings(
            rate_limit=config.rate_limit,
            retry_times=config.retry_times,
            upstream_timeout_s=config.upstream_timeout_s,
            faults=validate_faults(config.faults),
            max_body_bytes=config.max_body_bytes,
            default_completion_tokens=config.default_completion_tokens,
            upstream_deadline_s=config.upstream_deadline_s,
            upstream_max_bytes=config.upstream_max_bytes,
        )
        self.logs: collections.deque[LogEntry] = collections.deque(maxlen=config.log_limit)
        #: Relayed requests between admission and settlement.
        self.in_flight = 0
        #: Per-token rate-limit windows (admissions in the last window).
        self.limiter = SlidingWindowLimiter()
        self._next_id = {"user": 1, "token": 1, "channel": 1}
        self._snapshot: tuple[Any, ...] | None = None

    # --- snapshot and restore (self-tests reuse one relay for many independent runs) -------

    def snapshot(self) -> None:
        """Remember users, tokens, channels, ratios and settings as they are now."""
        self._snapshot = copy.deepcopy(
            (self.users, self.tokens, self.channels, self.ratios, self.settings, self._next_id)
        )

    def restore(self) -> None:
        """Go back to the last :meth:`snapshot`: balances, keys and settings as they were,
        the request log and rate-limit windows empty. Without a snapshot: :class:`FieldError`.

        Requests still in flight settle on the objects they hold, which are no longer part of
        the state, so they cannot touch the restored balances.
        """
        if self._snapshot is None:
            raise FieldError("snapshot", "no snapshot taken: POST /api/admin/snapshot first")
        users, tokens, channels, ratios, settings, next_id = copy.deepcopy(self._snapshot)
        self.users, self.tokens, self.channels = users, tokens, channels
        self.tokens_by_key = {token.key: token for token in tokens.values()}
        self.ratios, self.settings, self._next_id = ratios, settings, next_id
        self.logs.clear()
        self.limiter = SlidingWindowLimiter()

    def _id(self, kind: str) -> int:
        value = self._next_id[kind]
        self._next_id[kind] = value + 1
        return value

    # --- users -----------------------------------------------------------------------------

    _USER_FIELDS = frozenset({"username", "group", "quota", "status"})

    def create_user(self, data: Mapping[str, Any]) -> User:
        _reject_unknown(data, set(self._USER_FIELDS))
        user = User(
            id=self._id("user"),
            username=_str(data, "username"),
            group=self._group(data, "default"),
            quota=_int(data, "quota", 0, minimum=None),
            status=_status(data, "status", ENABLED),
        )
        self.users[user.id] = user
        return user

    def update_user(self, user: User, data: Mapping[str, Any]) -> User:
        _reject_unknown(data, set(self._USER_FIELDS))
        # Validate every field before changing any, so a bad payload changes nothing.
        username = _str(data, "username", user.username)
        group = self._group(data, user.group)
        quota = _int(data, "quota", user.quota, minimum=None)
        status = _status(data, "status", user.status)
        user.username, user.group, user.quota, user.status = username, group, quota, status
        return user

    def topup(self, user: User, data: Mapping[str, Any]) -> User:
        _reject_unknown(data, {"quota"})
        if "quota" not in data:
            raise FieldError("quota", "is required")
        user.quota += _int(data, "quota", 0, minimum=1)
        return user

    def _group(self, data: Mapping[str, Any], default: str) -> str:
        group = _str(data, "group", default)
        if group not in self.ratios.group_ratio:
            known = ", ".join(sorted(self.ratios.group_ratio))
            raise FieldError("group", f"unknown group {group!r}; known groups: {known}")
        return group

    # --- tokens ----------------------------------------------------------------------------

    _TOKEN_FIELDS = frozenset(
        {
            "user_id",
            "name",
            "key",
            "remain_quota",
            "unlimited_quota",
            "expires_at",
            "status",
            "models",
            "rate_limit",
        }
    )

    def create_token(self, data: Mapping[str, Any]) -> Token:
        _reject_unknown(data, set(self._TOKEN_FIELDS))
        user_id = _int(data, "user_id", 0, minimum=1) if "user_id" in data else 0
        if user_id not in self.users:
            raise FieldError("user_id", f"no user with id {data.get('user_id')!r}")
        key = data.get("key")
        if key is None:
            key = _new_key()
        elif (
            not isinstance(key, str)
            or not key.startswith("sk-")
            or not 8 <= len(key) - 3 <= 64
            or not key[3:].isalnum()
            or not key.isascii()
        ):
            raise FieldError("key", "must be 'sk-' followed by 8-64 letters or digits")
        if key in self.tokens_by_key:
            raise FieldError("key", "is already in use")
        token = Token(id=0, user_id=user_id, key=key)
        self._apply_token_fields(token, data)
        token.id = self._id("token")
        self.tokens[token.id] = token
        self.tokens_by_key[key] = token
        return token

    def update_token(self, token: Token, data: Mapping[str, Any]) -> Token:
        _reject_unknown(data, set(self._TOKEN_FIELDS - {"user_id", "key"}))
        self._apply_token_fields(token, data)
        return token

    def _apply_token_fields(self, token: Token, data: Mapping[str, Any]) -> None:
        name = data.get("name", token.name)
        if not isinstance(name, str):
            raise FieldError("name", "must be a string")
        remain = _int(data, "remain_quota", token.remain_quota, minimum=None)
        unlimited = _bool(data, "unlimited_quota", token.unlimited_quota)
        expires_at = _int(data, "expires_at", token.expires_at, minimum=-1)
        if expires_at == 0:
            # one-api's trap: 0 is "already expired"; never is -1.
            raise FieldError("expires_at", "must be -1 (never) or a unix time in seconds")
        status = _status(data, "status", token.status)
        models = token.models
        if "models" in data:
            models = None if data["models"] is None else _str_list(data, "models", [])
        rate_limit = _rate_limit(data, "rate_limit") if "rate_limit" in data else token.rate_limit
        token.name, token.remain_quota, token.unlimited_quota = name, remain, unlimited
        token.expires_at, token.status, token.models = expires_at, status, models
        token.rate_limit = rate_limit

    def delete_token(self, token: Token) -> None:
        del self.tokens[token.id]
        del self.tokens_by_key[token.key]

    # --- channels --------------------------------------------------------------------------

    _CHANNEL_FIELDS = frozenset(
        {"name", "base_url", "key", "models", "groups", "priority", "status"}
    )

    def create_channel(self, data: Mapping[str, Any]) -> Channel:
        _reject_unknown(data, set(self._CHANNEL_FIELDS))
        for field in ("base_url", "key", "models"):
            if field not in data:
                raise FieldError(field, "is required")
        channel = Channel(id=0, name="", base_url="", key="", models=[], groups=["default"])
        self._apply_channel_fields(channel, data)
        channel.id = self._id("channel")
        if not channel.name:
            channel.name = f"channel-{channel.id}"
        self.channels[channel.id] = channel
        return channel

    def update_channel(self, channel: Channel, data: Mapping[str, Any]) -> Channel:
        _reject_unknown(data, set(self._CHANNEL_FIELDS))
        self._apply_channel_fields(channel, data)
        return channel

    def _apply_channel_fields(self, channel: Channel, data: Mapping[str, Any]) -> None:
        name = data.get("name", channel.name)
        if not isinstance(name, str):
            raise FieldError("name", "must be a string")
        base_url = _str(data, "base_url", channel.base_url or None).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise FieldError("base_url", "must start with http:// or https://")
        key = _str(data, "key", channel.key or None)
        models = _str_list(data, "models", channel.models)
        groups = _str_list(data, "groups", channel.groups)
        if not groups:
            raise FieldError("groups", "must name at least one group")
        priority = _int(data, "priority", channel.priority, minimum=None)
        status = _status(data, "status", channel.status)
        channel.name, channel.base_url, channel.key = name, base_url, key
        channel.models, channel.groups = models, groups
        channel.priority, channel.status = priority, status

    def channels_for(self, group: str, model: str) -> list[Channel]:
        """Enabled channels that list exactly ``model`` (case-sensitive, F8) for ``group``."""
        return [
            c
            for c in self.channels.values()
            if c.status == ENABLED and model in c.models and group in c.groups
        ]

    def models_for(self, token: Token, allow_list: bool = True) -> list[str]:
        """Models this key can use: its group's channels, narrowed by its allow-list."""
        user = self.users.get(token.user_id)
        if user is None:
            return []
        names = {
            m
            for c in self.channels.values()
            if c.status == ENABLED and user.group in c.groups
            for m in c.models
        }
        if allow_list and token.models is not None:
            names &= set(token.models)
        return sorted(names)

    # --- ratios and settings ---------------------------------------------------------------

    def update_ratios(self, data: Mapping[str, Any]) -> Ratios:
        """Merge ``{group_ratio|model_ratio|completion_ratio: {name: ratio}}`` (all or none)."""
        _reject_unknown(data, {"group_ratio", "model_ratio", "completion_ratio"})
        staged: dict[str, dict[str, Fraction]] = {}
        for table, entries in data.items():
            if not isinstance(entries, dict):
                raise FieldError(table, "must be an object of name -> ratio")
            parsed: dict[str, Fraction] = {}
            for name, value in entries.items():
                try:
                    parsed[name] = parse_ratio(value)
                except RatioError as exc:
                    raise FieldError(f"{table}.{name}", str(exc)) from exc
            staged[table] = parsed
        for table, parsed in staged.items():
            getattr(self.ratios, table).update(parsed)
        return self.ratios

    _SETTINGS_FIELDS = frozenset(
        {
            "rate_limit",
            "retry_times",
            "upstream_timeout_s",
            "faults",
            "max_body_bytes",
            "default_completion_tokens",
            "upstream_deadline_s",
            "upstream_max_bytes",
        }
    )

    def update_settings(self, data: Mapping[str, Any]) -> Settings:
        _reject_unknown(data, set(self._SETTINGS_FIELDS))
        s = self.settings
        rate_limit = _rate_limit(data, "rate_limit") if "rate_limit" in data else s.rate_limit
        retry_times = _int(data, "retry_times", s.retry_times, minimum=0)
        if retry_times > 10:
            raise FieldError("retry_times", "must be <= 10")
        timeout = data.get("upstream_timeout_s", s.upstream_timeout_s)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise FieldError("upstream_timeout_s", "must be a number > 0")
        deadline = data.get("upstream_deadline_s", s.upstream_deadline_s)
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0:
            raise FieldError("upstream_deadline_s", "must be a number > 0")
        max_upstream = _int(data, "upstream_max_bytes", s.upstream_max_bytes, minimum=1)
        faults = s.faults
        if "faults" in data:
            names = data["faults"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise FieldError("faults", "must be a list of fault names")
            try:
                faults = validate_faults(names)
            except UnknownFaultError as exc:
                raise FieldError("faults", str(exc)) from exc
        max_body = _int(data, "max_body_bytes", s.max_body_bytes, minimum=1)
        default_completion = _int(
            data, "default_completion_tokens", s.default_completion_tokens, minimum=0
        )
        s.rate_limit, s.retry_times, s.upstream_timeout_s = rate_limit, retry_times, float(timeout)
        s.faults, s.max_body_bytes = faults, max_body
        s.default_completion_tokens = default_completion
        s.upstream_deadline_s, s.upstream_max_bytes = float(deadline), max_upstream
        return s

    # --- quota: admission and settlement ---------------------------------------------------

    def admit(self, user: User, token: Token, estimate: int, reserve: bool = True) -> str | None:
        """Reserve ``estimate`` on token and user, or say why not (an error code).

        Synchronous on purpose: the check and the reservation happen with no await between.
        ``reserve=False`` (the ``racy_billing`` fault) only checks the balances.
        """
        if not token.unlimited_quota:
            if token.remain_quota <= 0:
                return "token_quota_exhausted"
            if token.remain_quota - token.reserved_quota < estimate:
                return "token_quota_insufficient"
        if user.quota <= 0 or user.quota - user.reserved_quota < estimate:
            return "insufficient_user_quota"
        if not reserve:
            return None
        token.reserved_quota += estimate
        user.reserved_quota += estimate
        return None

    def settle(self, user: User, token: Token, reserved: int, charge: int) -> None:
        """Release a reservation and charge ``charge`` (0 = refund), atomically."""
        token.reserved_quota -= reserved
        user.reserved_quota -= reserved
        self._charge(user, token, charge)

    async def settle_racy(self, user: User, token: Token, reserved: int, charge: int) -> None:
        """The ``racy_billing`` fault: read, yield to the loop, write back (lost updates)."""

        token.reserved_quota -= reserved
        user.reserved_quota -= reserved
        user_quota, token_remain = user.quota, token.remain_quota
        user_used, token_used = user.used_quota, token.used_quota
        await asyncio.sleep(0)
        user.quota, user.used_quota = user_quota - charge, user_used + charge
        token.used_quota = token_used + charge
        if not token.unlimited_quota:
            token.remain_quota = token_remain - charge
        user.request_count += 1

    @staticmethod
    def _charge(user: User, token: Token, charge: int) -> None:
        user.quota -= charge
        user.used_quota += charge
        user.request_count += 1
        token.used_quota += charge
        if not token.unlimited_quota:
            token.remain_quota -= charge

    def log(self, entry: LogEntry) -> None:
        self.logs.append(entry)

    # --- state files -----------------------------------------------------------------------

    def load(self, data: Mapping[str, Any]) -> None:
        """Preload ``{users, tokens, channels, ratios, settings}`` (a parsed state file).

        Users, tokens and channels may carry an ``id`` (tokens refer to users by it) and
        tokens a fixed ``key``; everything else follows the admin API's rules.
        """
        _reject_unknown(data, {"users", "tokens", "channels", "ratios", "settings"})
        if "ratios" in data:
            self.update_ratios(_mapping(data["ratios"], "ratios"))
        if "settings" in data:
            self.update_settings(_mapping(data["settings"], "settings"))
        for kind, create in (
            ("users", self.create_user),
            ("channels", self.create_channel),
            ("tokens", self.create_token),
        ):
            items = data.get(kind, [])
            if not isinstance(items, list):
                raise FieldError(kind, "must be a list")
            for item in items:
                item = dict(_mapping(item, kind))
                wanted = item.pop("id", None)
                table: dict[int, Any] = getattr(self, kind)
                if wanted is not None:
                    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
                        raise FieldError(f"{kind}.id", "must be an integer >= 1")
                    if wanted in table:
                        raise FieldError(f"{kind}.id", f"duplicate id {wanted}")
                    self._next_id[kind[:-1]] = wanted
                create(item)
                self._next_id[kind[:-1]] = max(table) + 1


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(field, "must be an object")
    return value
