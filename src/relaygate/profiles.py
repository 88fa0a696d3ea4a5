"""Relay profiles: what a particular relay is expected to answer, loaded from TOML.

A profile is a relay's *dialect*. The conformance suite asks it what to expect per condition
(``profile.expect("missing_key")``), what a request should cost
(``profile.quota_for("gpt-4o", "default", 10, 20)``) and how to read balances, streams, model
lists and rate limits. Shipped profiles live in ``fixtures/profiles/<name>.toml``:

* ``faq`` - the FAQ's promises (the reference relay); the baseline for every relay profile.
* ``strict-openai`` - what api.openai.com itself does (a baseline too; no quota semantics).
* ``one-api``, ``new-api`` - documented behaviour of those relays (RELAY_SPEC.md).

Rules the loader enforces, so a profile cannot quietly turn a failure into a pass:

* every expectation of a ``role = "relay"`` profile that differs from ``faq`` in a behavioural
  field must carry a ``deviation`` reason (the report lists it as an accepted deviation);
* security rules (:data:`SECURITY_RULES`) cannot be waived at all;
* unknown keys, wrong types, missing fields and unknown enum values are errors that name the
  file, the key path and what was expected.

Exceptions: :class:`ProfileError` (a profile is invalid or missing) and :class:`NotApplicable`
(the profile says a whole area does not apply; the suite turns it into a skip with the reason).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

__all__ = [
    "CONDITIONS",
    "SECURITY_RULES",
    "AdminRules",
    "AuthRules",
    "BillingRules",
    "ErrorExpectation",
    "HttpRules",
    "ModelRules",
    "NotApplicable",
    "Profile",
    "ProfileError",
    "RateLimitRules",
    "StreamRules",
    "list_profiles",
    "load_profile",
    "profiles_dir",
]

# The conditions every profile must describe (directly or through ``extends``).
CONDITIONS: Final[tuple[str, ...]] = (
    "missing_key",
    "malformed_key",
    "invalid_key",
    "expired_key",
    "disabled_key",
    "user_disabled",
    "token_quota_exhausted",
    "token_quota_insufficient",
    "user_quota_exhausted",
    "model_not_allowed",
    "no_channel",
    "model_missing",
    "invalid_json",
    "unknown_path",
    "wrong_method",
    "body_too_large",
    "rate_limited",
    "upstream_4xx",
    "upstream_5xx_json",
    "upstream_5xx_html",
    "upstream_auth",
    "upstream_429",
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_200_error",
    "models_unknown_id",
)

# Rules no profile may relax: breaking them leaks money or keys, whatever the relay's dialect.
SECURITY_RULES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "never_forward_client_key": "the client's relay key is never sent to the upstream",
        "never_leak_channel_key": "the upstream channel key never appears in any response",
        "reject_query_string_key": "a key passed as ?key= on /v1/chat/completions is refused",
        "case_variant_not_rebilled": (
            "a case-variant model name is never routed and billed as a different model"
        ),
        "no_forwarded_for_bypass": "X-Forwarded-For cannot bypass a token's IP allow-list",
        "exhausted_key_not_served": "an exhausted, expired or disabled key never reaches upstream",
    }
)

Rounding = Literal["ceil", "round_half_away", "round_half_even"]
ROUNDINGS: Final[tuple[str, ...]] = ("ceil", "round_half_away", "round_half_even")
BODY_KINDS: Final[tuple[str, ...]] = ("json", "empty", "html", "any")

_PROFILE_SUFFIX = ".toml"


class ProfileError(Exception):
    """A profile is missing or invalid. The message names the file, the key path and the fix."""


class NotApplicable(Exception):
    """The profile says an area does not apply to this relay; ``reason`` says why (a skip)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Dataclasses (the public, validated view of a profile)


@dataclass(frozen=True)
class ErrorExpectation:
    """What the relay must answer for one condition.

    ``status`` is None when the status is the upstream's own (``status_from_upstream``) or the
    condition does not apply. ``message_patterns`` are substrings that must all occur in
    ``error.message``; ``message_regex`` (if set) must also match (``re.search``).
    """

    condition: str
    status: int | None
    code: str | None = None
    type: str | None = None
    param: str | None = None
    message_patterns: tuple[str, ...] = ()
    message_regex: str | None = None
    body: str = "json"
    status_from_upstream: bool = False
    error_passthrough: bool = False
    deviation: str | None = None
    applicable: bool = True
    skip_reason: str | None = None
    ref: str | None = None

    def message_matches(self, message: str, **values: str) -> bool:
        """True when ``message`` contains every pattern and matches the regex (if any).

        Patterns may hold placeholders such as ``{model}`` and ``{group}``; ``values`` fills
        them (escaped inside the regex). Unfilled placeholders are matched literally.
        """
        patterns = [_fill(p, values, escape=False) for p in self.message_patterns]
        if any(p not in message for p in patterns):
            return False
        if self.message_regex is None:
            return True
        return re.search(_fill(self.message_regex, values, escape=True), message) is not None

    def require_applicable(self) -> None:
        """Raise :class:`NotApplicable` when the profile says this condition cannot be checked."""
        if not self.applicable:
            raise NotApplicable(self.skip_reason or f"{self.condition}: not applicable")


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def _fill(pattern: str, values: Mapping[str, str], *, escape: bool) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            return m.group(0)
        value = values[m.group(1)]
        return re.escape(value) if escape else value

    return _PLACEHOLDER.sub(sub, pattern)


@dataclass(frozen=True)
class BillingRules:
    """Quota arithmetic and how balances are read (F6, F9, RELAY_SPEC §2)."""

    applicable: bool
    skip_reason: str | None
    quota_per_usd: int
    rounding: str
    min_charge: int
    group_ratio: Mapping[str, Fraction]
    model_ratio: Mapping[str, Fraction]
    completion_ratio: Mapping[str, Fraction]
    default_completion_ratio: Fraction
    unknown_model_ratio: Fraction | None
    unlimited_tracks_used: bool
    settle: str
    settle_timeout_s: float
    poll_interval_s: float
    balance_source: str
    hard_limit_usd: str
    usage_unit: str
    unlimited_hard_limit_usd: Fraction | None
    billed_model: str

    def require_applicable(self) -> None:
        """Raise :class:`NotApplicable` when the relay has no quota semantics."""
        if not self.applicable:
            raise NotApplicable(self.skip_reason or "billing is not applicable to this relay")

    def ratio_for(self, model: str) -> Fraction:
        """The model ratio; unknown models use ``unknown_model_ratio`` or raise LookupError."""
        if model in self.model_ratio:
            return self.model_ratio[model]
        if self.unknown_model_ratio is not None:
            return self.unknown_model_ratio
        raise LookupError(
            f"model {model!r} has no model ratio in this profile and the relay refuses unpriced "
            f"models; known: {', '.join(sorted(self.model_ratio))}"
        )

    def raw_quota(self, model: str, group: str, prompt: int, completion: int) -> Fraction:
        """The unrounded charge ``group × model × (prompt + completion × completion_ratio)``."""
        if group not in self.group_ratio:
            raise LookupError(
                f"group {group!r} has no group ratio; known: {', '.join(sorted(self.group_ratio))}"
            )
        completion_ratio = self.completion_ratio.get(model, self.default_completion_ratio)
        return (
            self.group_ratio[group]
            * self.ratio_for(model)
            * (Fraction(prompt) + Fraction(completion) * completion_ratio)
        )

    def quota_for(self, model: str, group: str, prompt: int, completion: int) -> int:
        """The exact expected charge in quota units (rounding and minimum per profile)."""
        self.require_applicable()
        if prompt < 0 or completion < 0:
            raise ValueError("token counts cannot be negative")
        if prompt + completion == 0:
            # Both relays refund everything when no token was used (RELAY_SPEC §2).
            return 0
        raw = self.raw_quota(model, group, prompt, completion)
        rounded = _ROUNDERS[self.rounding](raw)
        if raw > 0 and rounded < self.min_charge:
            return self.min_charge
        return rounded


@dataclass(frozen=True)
class AuthRules:
    """How the relay reads its keys (F15, RELAY_SPEC §1)."""

    bearer_case_insensitive: bool
    bare_key_accepted: bool
    x_api_key_accepted: bool


@dataclass(frozen=True)
class StreamRules:
    """Streaming details (F4, RELAY_SPEC §5)."""

    done_required: bool
    usage_chunk: str
    gap_tolerance_ms: float
    midstream_failure: str
    error_event_forwarded: bool
    data_without_space_ok: bool


@dataclass(frozen=True)
class ModelRules:
    """Model list and routing by name (F8, F17, RELAY_SPEC §3)."""

    case_sensitive: bool
    list_shape: str
    unknown_id_status: int
    case_variant: str


@dataclass(frozen=True)
class RateLimitRules:
    """Relay-side rate limiting (F5 429, RELAY_SPEC §6)."""

    relay_limiter: bool
    per_key_limit: str | None
    retry_after_header: bool
    retry_after_ms_header: bool
    empty_body_429_accepted: bool
    upstream_retry_after_forwarded: bool
    upstream_429_message_rewritten: bool


@dataclass(frozen=True)
class AdminRules:
    """Which provisioning adapter talks to this relay, and its settings."""

    adapter: str
    settings: Mapping[str, str | int | float | bool]


@dataclass(frozen=True)
class HttpRules:
    """Transport-level expectations (F12, F18, RELAY_SPEC §8)."""

    body_limit_status: int | None
    body_limit_bytes: int | None
    cors: bool
    extra_headers: Mapping[str, str]


@dataclass(frozen=True)
class Profile:
    """A validated, merged relay profile. Everything is immutable."""

    name: str
    description: str
    role: str
    source_path: Path
    extends: str | None
    errors: Mapping[str, ErrorExpectation]
    billing: BillingRules
    auth: AuthRules
    stream: StreamRules
    models: ModelRules
    rate_limit: RateLimitRules
    admin: AdminRules
    http: HttpRules
    security: Mapping[str, bool]
    # Every accepted deviation, keyed by dotted path: "errors.token_quota_exhausted",
    # "stream.usage_chunk", ... The report lists them; the suite reports "accepted deviation".
    deviations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def expect(self, condition: str) -> ErrorExpectation:
        """The expectation for ``condition`` (one of :data:`CONDITIONS`)."""
        try:
            return self.errors[condition]
        except KeyError:
            raise KeyError(
                f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}"
            ) from None

    def deviation(self, path: str) -> str | None:
        """The accepted-deviation reason for a dotted path such as ``"stream.usage_chunk"``."""
        return self.deviations.get(path)

    def quota_for(self, model: str, group: str, prompt: int, completion: int) -> int:
        """The expected charge in quota units; see :meth:`BillingRules.quota_for`."""
        return self.billing.quota_for(model, group, prompt, completion)


# ---------------------------------------------------------------------------------------------
# Rounding (exact: Fraction in, int out)


def _round_half_away(x: Fraction) -> int:
    # Go's decimal.Round(0) rounds half away from zero (new-api, RELAY_SPEC §2).
    sign = -1 if x < 0 else 1
    return sign * math.floor(abs(x) + Fraction(1, 2))


_ROUNDERS: Final[Mapping[str, Callable[[Fraction], int]]] = MappingProxyType(
    {
        "ceil": math.ceil,
        "round_half_away": _round_half_away,
        "round_half_even": round,  # Fraction.__round__ is banker's rounding
    }
)


# ---------------------------------------------------------------------------------------------
# Schema. Each field: (kinds, default, choices). _REQ marks a field without a default.


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQ: Final = _Required()
_RATIO = "ratio"  # a decimal string, int or float; stored as an exact Fraction
_OPT_INT = "int|none"  # an int, or the string "none"
_STR_MAP = "str->str"
_SCALAR_MAP = "str->scalar"
_RATIO_MAP = "str->ratio"

_Kind = type | tuple[type, ...] | str
_FieldSpec = tuple[_Kind, Any, tuple[str, ...] | None]

_ERROR_FIELDS: Final[Mapping[str, _FieldSpec]] = {
    # Optional only because inapplicable and pass-through conditions have none; checked below.
    "status": (_OPT_INT, None, None),
    "code": (str, None, None),
    "type": (str, None, None),
    "param": (str, None, None),
    "message_patterns": (list, [], None),
    "message_regex": (str, None, None),
    "body": (str, "json", BODY_KINDS),
    "status_from_upstream": (bool, False, None),
    "error_passthrough": (bool, False, None),
    "deviation": (str, None, None),
    "applicable": (bool, True, None),
    "skip_reason": (str, None, None),
    "ref": (str, None, None),
}
# Fields whose difference from the faq baseline is a behavioural deviation.
# (``type`` is left out: the type name is a relay's own label, F5 only asks that it exist.)
_ERROR_BEHAVIOUR: Final = (
    "status",
    "code",
    "body",
    "status_from_upstream",
    "error_passthrough",
    "applicable",
)

_SECTIONS: Final[Mapping[str, Mapping[str, _FieldSpec]]] = {
    "billing": {
        "applicable": (bool, True, None),
        "skip_reason": (str, None, None),
        "quota_per_usd": (int, 500000, None),
        "rounding": (str, _REQ, ROUNDINGS),
        "min_charge": (int, 1, None),
        "group_ratio": (_RATIO_MAP, _REQ, None),
        "model_ratio": (_RATIO_MAP, _REQ, None),
        "completion_ratio": (_RATIO_MAP, _REQ, None),
        "default_completion_ratio": (_RATIO, "1", None),
        "unknown_model_ratio": (_RATIO, None, None),
        "unlimited_tracks_used": (bool, True, None),
        "settle": (str, "sync", ("sync", "async")),
        "settle_timeout_s": ((int, float), 5.0, None),
        "poll_interval_s": ((int, float), 0.1, None),
        "balance_source": (str, _REQ, ("billing_endpoints", "admin_logs", "none")),
        "hard_limit_usd": (str, "total_granted", ("total_granted", "remaining")),
        "usage_unit": (str, "cents", ("cents", "usd")),
        "unlimited_hard_limit_usd": (_RATIO, None, None),
        "billed_model": (str, "original", ("original", "mapped")),
    },
    "auth": {
        "bearer_case_insensitive": (bool, _REQ, None),
        "bare_key_accepted": (bool, _REQ, None),
        "x_api_key_accepted": (bool, False, None),
    },
    "stream": {
        "done_required": (bool, True, None),
        "usage_chunk": (str, _REQ, ("iff_requested", "always", "never", "upstream")),
        "gap_tolerance_ms": ((int, float), 50.0, None),
        "midstream_failure": (
            str,
            _REQ,
            ("error_event", "done_without_finish", "close_without_done"),
        ),
        "error_event_forwarded": (bool, True, None),
        "data_without_space_ok": (bool, True, None),
    },
    "models": {
        "case_sensitive": (bool, True, None),
        "list_shape": (str, "object_list", ("object_list", "success_data")),
        "unknown_id_status": (int, 404, None),
        "case_variant": (str, "reject", ("reject", "bill_as_canonical")),
    },
    "rate_limit": {
        "relay_limiter": (bool, _REQ, None),
        "per_key_limit": (str, None, None),
        "retry_after_header": (bool, _REQ, None),
        "retry_after_ms_header": (bool, False, None),
        "empty_body_429_accepted": (bool, False, None),
        "upstream_retry_after_forwarded": (bool, True, None),
        "upstream_429_message_rewritten": (bool, False, None),
    },
    "admin": {
        "adapter": (str, "static", ("reference", "one-api", "new-api", "static")),
        "settings": (_SCALAR_MAP, {}, None),
    },
    "http": {
        "body_limit_status": (_OPT_INT, None, None),
        "body_limit_bytes": (_OPT_INT, None, None),
        "cors": (bool, True, None),
        "extra_headers": (_STR_MAP, {}, None),
    },
}
# Per section, the fields that are configuration rather than behaviour: they may differ from
# the faq baseline without a deviation (ratios are a relay operator's prices, timings are ours).
_NOT_BEHAVIOUR: Final[Mapping[str, frozenset[str]]] = {
    "billing": frozenset(
        {
            "skip_reason",
            "rounding",  # F9: "rounding per profile"
            "group_ratio",
            "model_ratio",
            "completion_ratio",
            "default_completion_ratio",
            "unknown_model_ratio",
            "settle",
            "settle_timeout_s",
            "poll_interval_s",
            "unlimited_hard_limit_usd",
            "billed_model",
        }
    ),
    "stream": frozenset({"gap_tolerance_ms"}),
    "rate_limit": frozenset({"per_key_limit"}),
    "admin": frozenset({"adapter", "settings"}),
    "http": frozenset({"body_limit_bytes", "extra_headers"}),
}
_TOP_LEVEL: Final = frozenset(
    {"name", "description", "role", "extends", "errors", "security", *_SECTIONS}
)
_BASELINE = "faq"


# ---------------------------------------------------------------------------------------------
# Locating profiles


def profiles_dir() -> Path:
    """The directory holding the shipped profiles.

    The canonical copies are ``fixtures/profiles`` of the checkout (``src/relaygate`` →
    ``../../fixtures/profiles``); a wheel may carry copies in ``relaygate/_profiles``.
    """
    from relaygate.shipped import shipped_dir

    try:
        return shipped_dir("fixtures/profiles", "_profiles")
    except FileNotFoundError as exc:
        raise ProfileError(f"{exc}; or pass a path to a profile .toml") from None


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(p.stem for p in profiles_dir().glob(f"*{_PROFILE_SUFFIX}"))


def _resolve(name_or_path: str, relative_to: Path | None = None) -> Path:
    looks_like_path = name_or_path.endswith(_PROFILE_SUFFIX) or "/" in name_or_path
    if looks_like_path:
        path = Path(name_or_path)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_file():
            raise ProfileError(f"profile file not found: {path}")
        return path
    path = profiles_dir() / f"{name_or_path}{_PROFILE_SUFFIX}"
    if not path.is_file():
        raise ProfileError(
            f"unknown profile {name_or_path!r}; available: {', '.join(list_profiles())} "
            "(or give a path to a .toml file)"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Loading: read → merge extends → validate → build


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name (``"one-api"``) or any profile by path.

    Raises :class:`ProfileError` with the file, the key path and what is expected.
    """
    path = _resolve(name_or_path)
    raw = _read_merged(path, chain=())
    profile = _build(raw, path)
    if profile.role == "relay" and profile.name != _BASELINE:
        baseline = load_profile(_BASELINE)
        _check_deviations(profile, baseline, path)
    return profile


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from exc


def _read_merged(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p.name) for p in (*chain, resolved))
        raise ProfileError(f"{path}: `extends` forms a cycle: {cycle}")
    data = _read_toml(path)
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ProfileError(f"{path}: key `extends` must be a profile name or path (a string)")
    base = _read_merged(_resolve(parent, relative_to=path.parent), (*chain, resolved))
    # A child never inherits identity: name/description/role are its own.
    for own in ("name", "description", "role"):
        base.pop(own, None)
    merged = _deep_merge(base, data)
    # A condition the child answers with the upstream's own status (a pass-through) does not
    # inherit the parent's relay-made answer (its status, code, type, message patterns).
    for condition, table in (data.get("errors") or {}).items():
        if isinstance(table, dict) and table.get("status_from_upstream") is True:
            merged["errors"][condition] = dict(table)
    return merged


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _err(path: Path, key: str, expected: str) -> ProfileError:
    return ProfileError(f"{path}: key `{key}`: {expected}")


def _check_keys(data: Mapping[str, Any], allowed: frozenset[str], path: Path, where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        shown = ", ".join(f"`{where}{k}`" for k in unknown)
        raise ProfileError(
            f"{path}: unknown key(s) {shown}; allowed here: {', '.join(sorted(allowed))}"
        )


def _ratio(value: Any, path: Path, key: str) -> Fraction:
    # bool is an int subclass; `true` is never a ratio.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _err(path, key, f'expected a decimal ratio such as "0.075", got {value!r}')
    try:
        # str(float) is the shortest repr ("0.075"), so TOML floats stay exact decimals too.
        ratio = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise _err(path, key, f'expected a decimal ratio such as "0.075", got {value!r}') from None
    if ratio < 0:
        raise _err(path, key, f"a ratio cannot be negative, got {value!r}")
    return ratio


def _field(spec: _FieldSpec, value: Any, path: Path, key: str) -> Any:
    kinds, _default, choices = spec
    if kinds == _RATIO:
        return None if value is None else _ratio(value, path, key)
    if kinds == _RATIO_MAP:
        if not isinstance(value, dict):
            raise _err(path, key, "expected a table of name = ratio")
        return MappingProxyType({k: _ratio(v, path, f"{key}.{k}") for k, v in value.items()})
    if kinds == _OPT_INT:
        if value is None or value == "none":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err(path, key, f'expected an integer or "none", got {value!r}')
        return value
    if kinds in (_STR_MAP, _SCALAR_MAP):
        ok: tuple[type, ...] = (str,) if kinds == _STR_MAP else (str, int, float, bool)
        if not isinstance(value, dict) or not all(isinstance(v, ok) for v in value.values()):
            what = "strings" if kinds == _STR_MAP else "strings, numbers or booleans"
            raise _err(path, key, f"expected a table whose values are {what}")
        return MappingProxyType(dict(value))
    assert not isinstance(kinds, str)
    if value is None:
        return None
    type_ok = isinstance(value, kinds) and not (isinstance(value, bool) and kinds is not bool)
    if not type_ok:
        names = (
            kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        )
        raise _err(path, key, f"expected {names}, got {type(value).__name__} {value!r}")
    if kinds is list:
        if not all(isinstance(v, str) for v in value):
            raise _err(path, key, "expected a list of strings")
        return tuple(value)
    if choices is not None and value not in choices:
        raise _err(path, key, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


# When a relay has no quota semantics ([billing] applicable = false) its required billing
# fields are meaningless; these placeholders keep BillingRules total.
_INAPPLICABLE_BILLING: Final[Mapping[str, Any]] = {
    "rounding": "ceil",
    "group_ratio": {},
    "model_ratio": {},
    "completion_ratio": {},
    "balance_source": "none",
}


def _section(
    data: Mapping[str, Any], specs: Mapping[str, _FieldSpec], path: Path, where: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate one table; returns (typed fields, declared deviations of this table)."""
    if not isinstance(data, dict):
        raise _err(path, where.rstrip("."), "expected a table")
    if where == "billing." and data.get("applicable") is False:
        if not data.get("skip_reason"):
            raise _err(path, "billing.skip_reason", "required when applicable = false")
        data = {**_INAPPLICABLE_BILLING, **data}
    _check_keys(data, frozenset({*specs, "deviations"}), path, where)
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in data:
            out[name] = _field(spec, data[name], path, f"{where}{name}")
        elif spec[1] is _REQ:
            raise _err(path, f"{where}{name}", "required but missing")
        else:
            default = spec[1]
            out[name] = (
                _field(spec, default, path, f"{where}{name}") if default is not None else None
            )
    deviations = data.get("deviations", {})
    if not isinstance(deviations, dict) or not all(
        isinstance(v, str) and v for v in deviations.values()
    ):
        raise _err(path, f"{where}deviations", 'expected a table of field = "reason"')
    for name in deviations:
        if name not in specs:
            raise _err(path, f"{where}deviations.{name}", f"names no field of [{where[:-1]}]")
    return out, dict(deviations)


def _build(raw: Mapping[str, Any], path: Path) -> Profile:
    _check_keys(raw, _TOP_LEVEL, path, "")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise _err(path, "name", "expected a non-empty string")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _err(path, "description", "expected a string")
    role = raw.get("role", "relay")
    if role not in ("relay", "baseline"):
        raise _err(path, "role", f'expected "relay" or "baseline", got {role!r}')

    deviations: dict[str, str] = {}
    sections: dict[str, dict[str, Any]] = {}
    for section, specs in _SECTIONS.items():
        if section not in raw:
            raise _err(path, section, f"required table [{section}] is missing")
        fields, devs = _section(raw[section], specs, path, f"{section}.")
        sections[section] = fields
        deviations.update({f"{section}.{k}": v for k, v in devs.items()})

    errors = _build_errors(raw.get("errors"), path)
    deviations.update({f"errors.{c}": e.deviation for c, e in errors.items() if e.deviation})
    security = _build_security(raw, path)

    return Profile(
        name=name,
        description=description,
        role=role,
        source_path=path,
        extends=raw.get("extends"),
        errors=MappingProxyType(errors),
        billing=BillingRules(**sections["billing"]),
        auth=AuthRules(**sections["auth"]),
        stream=StreamRules(**sections["stream"]),
        models=ModelRules(**sections["models"]),
        rate_limit=RateLimitRules(**sections["rate_limit"]),
        admin=AdminRules(**sections["admin"]),
        http=HttpRules(**sections["http"]),
        security=security,
        deviations=MappingProxyType(deviations),
    )


def _build_errors(table: Any, path: Path) -> dict[str, ErrorExpectation]:
    if not isinstance(table, dict):
        raise _err(path, "errors", "required table [errors] with one sub-table per condition")
    _check_keys(table, frozenset(CONDITIONS), path, "errors.")
    errors: dict[str, ErrorExpectation] = {}
    for condition in CONDITIONS:
        if condition not in table:
            raise _err(path, f"errors.{condition}", "required but missing (every condition)")
        entry = table[condition]
        where = f"errors.{condition}."
        if not isinstance(entry, dict):
            raise _err(path, where[:-1], "expected a table")
        _check_keys(entry, frozenset(_ERROR_FIELDS), path, where)
        fields: dict[str, Any] = {}
        for name, spec in _ERROR_FIELDS.items():
            if name in entry:
                fields[name] = _field(spec, entry[name], path, f"{where}{name}")
            elif spec[1] is _REQ:
                raise _err(path, f"{where}{name}", "required but missing")
            else:
                fields[name] = tuple(spec[1]) if isinstance(spec[1], list) else spec[1]
        if fields["message_regex"] is not None:
            try:
                re.compile(fields["message_regex"])
            except re.error as exc:
                raise _err(path, f"{where}message_regex", f"not a valid regex: {exc}") from None
        if fields["applicable"]:
            if fields["status"] is None and not fields["status_from_upstream"]:
                raise _err(
                    path,
                    f"{where}status",
                    "an applicable condition needs a status (or status_from_upstream = true)",
                )
        elif not fields["skip_reason"]:
            raise _err(path, f"{where}skip_reason", "required when applicable = false")
        errors[condition] = ErrorExpectation(condition=condition, **fields)
    return errors


def _build_security(raw: Mapping[str, Any], path: Path) -> Mapping[str, bool]:
    table = raw.get("security", {})
    if not isinstance(table, dict):
        raise _err(path, "security", "expected a table")
    for key, value in table.items():
        if key not in SECURITY_RULES:
            raise ProfileError(
                f"{path}: unknown key `security.{key}`; security rules are: "
                f"{', '.join(SECURITY_RULES)} (and none of them can be waived)"
            )
        if value is not True:
            raise ProfileError(
                f"{path}: key `security.{key}`: security rules cannot be waived "
                f"({SECURITY_RULES[key]}); remove the key or set it to true"
            )
    return MappingProxyType(dict.fromkeys(SECURITY_RULES, True))


def _check_deviations(profile: Profile, baseline: Profile, path: Path) -> None:
    """Every behavioural difference from the faq baseline must carry a deviation reason."""
    for condition in CONDITIONS:
        mine, base = profile.errors[condition], baseline.errors[condition]
        differs = [f for f in _ERROR_BEHAVIOUR if getattr(mine, f) != getattr(base, f)]
        if differs and not mine.deviation:
            detail = ", ".join(f"{f} {getattr(mine, f)!r} vs {getattr(base, f)!r}" for f in differs)
            raise _err(
                path,
                f"errors.{condition}.deviation",
                f"differs from the faq baseline ({detail}) but no deviation reason is given; "
                'add deviation = "why this relay differs (source)"',
            )
    for section in _SECTIONS:
        mine_rules, base_rules = getattr(profile, section), getattr(baseline, section)
        exempt = _NOT_BEHAVIOUR.get(section, frozenset())
        for name in _SECTIONS[section]:
            if name in exempt or (section == "billing" and not profile.billing.applicable):
                continue
            if getattr(mine_rules, name) != getattr(base_rules, name) and not profile.deviation(
                f"{section}.{name}"
            ):
                raise _err(
                    path,
                    f"{section}.deviations.{name}",
                    f"{section}.{name} = {getattr(mine_rules, name)!r} differs from the faq "
                    f"baseline ({getattr(base_rules, name)!r}) but no deviation reason is given",
                )
