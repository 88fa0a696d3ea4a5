"""The typed view of a profile: what a relay must answer per condition, and its rules per area.

Every class here is frozen; the loader (:mod:`relaygate.profiles.loader`) builds them from TOML
by their annotations (:mod:`relaygate.profiles.schema`), so the field types are the schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from relaygate.profiles.quota import BillingRules
from relaygate.profiles.schema import NotApplicable, setting

__all__ = [
    "BODY_KINDS",
    "CONDITIONS",
    "OPTIONAL_SECTIONS",
    "SECTIONS",
    "SECURITY_RULES",
    "AdminRules",
    "AuthRules",
    "ErrorExpectation",
    "HttpRules",
    "ModelRules",
    "Profile",
    "RateLimitRules",
    "ResponseRules",
    "StreamRules",
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

BodyKind = Literal["json", "empty", "html", "any"]
BODY_KINDS: Final[tuple[str, ...]] = ("json", "empty", "html", "any")


@dataclass(frozen=True, kw_only=True)
class ErrorExpectation:
    """What the relay must answer for one condition.

    ``status`` is None when the status is the upstream's own (``status_from_upstream``) or the
    condition does not apply. ``message_patterns`` are substrings that must all occur in
    ``error.message``; ``message_regex`` (if set) must also match (``re.search``). ``type`` is
    not behaviour: the type name is a relay's own label, F5 only asks that it exist.

    ``error_passthrough``: the upstream's ``type``, ``code`` and ``param`` reach the client as
    the upstream sent them; ``upstream_message`` says what may happen to its ``message`` on the
    way: ``"exact"`` (unchanged), ``"contains"`` (wrapped: a prefix or suffix such as one-api's
    "(request id: …)" around the upstream's text) or ``"replaced"`` (the relay writes its own).
    """

    condition: str = setting(from_toml=False)
    # Optional only because inapplicable and pass-through conditions have none (the loader
    # checks that an applicable condition has one).
    status: int | None = setting(None)
    code: str | None = setting(None)
    type: str | None = setting(None, behaviour=False)
    param: str | None = setting(None, behaviour=False)
    message_patterns: tuple[str, ...] = setting([], behaviour=False)
    message_regex: str | None = setting(None, behaviour=False)
    body: BodyKind = setting("json")
    status_from_upstream: bool = setting(False)
    error_passthrough: bool = setting(False)
    # Wording, like ``type``: how a relay words an error is its dialect; what it may not do is
    # lose the upstream's type, code and param (``error_passthrough``, behaviour).
    upstream_message: Literal["exact", "contains", "replaced"] = setting("exact", behaviour=False)
    deviation: str | None = setting(None, behaviour=False)
    #: the relay's documentation that promises the deviation (see relaygate.profiles.citations)
    doc: str | None = setting(None, behaviour=False)
    applicable: bool = setting(True)
    skip_reason: str | None = setting(None, behaviour=False)
    #: where in the relay's source the behaviour is (information only: never a waiver alone)
    ref: str | None = setting(None, behaviour=False)

    def waiver(self) -> str | None:
        """The deviation as the report shows it: the reason and its documentation citation."""
        if not self.deviation:
            return None
        return self.deviation if not self.doc else f"{self.deviation} (docs: {self.doc})"

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


@dataclass(frozen=True, kw_only=True)
class AuthRules:
    """How the relay reads its keys (F15, RELAY_SPEC §1)."""

    bearer_case_insensitive: bool = setting()
    bare_key_accepted: bool = setting()
    x_api_key_accepted: bool = setting(False)
    #: Bring your own key: the relay issues no keys; the key a client sends is the provider's
    #: own key, which the relay passes on to the provider (the security cases judge the key's
    #: travel by that: forwarding it is the function, a key in the URL must still not travel).
    client_key_is_provider_key: bool = setting(False)


@dataclass(frozen=True, kw_only=True)
class StreamRules:
    """Streaming details (F4, RELAY_SPEC §5)."""

    done_required: bool = setting(True)
    usage_chunk: Literal["iff_requested", "always", "never", "upstream"] = setting()
    gap_tolerance_ms: float = setting(50.0, behaviour=False)
    midstream_failure: Literal["error_event", "done_without_finish", "close_without_done"] = (
        setting()
    )
    error_event_forwarded: bool = setting(True)
    data_without_space_ok: bool = setting(True)


@dataclass(frozen=True, kw_only=True)
class ModelRules:
    """Model list and routing by name (F8, F17, RELAY_SPEC §3)."""

    case_sensitive: bool = setting(True)
    list_shape: Literal["object_list", "success_data"] = setting("object_list")
    unknown_id_status: int = setting(404)
    case_variant: Literal["reject", "bill_as_canonical"] = setting("reject")
    # The usage area (conformance/test_usage.py): how far reported prompt/completion tokens may
    # be from the exact local count for the claimed model's tokenizer (0: OpenAI's exact counts).
    usage_tolerance_tokens: int = setting(0)
    # An answer may name a dated snapshot of the alias asked for (gpt-4o -> gpt-4o-2024-08-06).
    answer_model_snapshot_ok: bool = setting(True)
    # The canary ladder's longest rung, in prompt tokens: a cost bound for live runs.
    usage_ladder_max_tokens: int = setting(2000, behaviour=False)


@dataclass(frozen=True, kw_only=True)
class RateLimitRules:
    """Relay-side rate limiting (F5 429, RELAY_SPEC §6)."""

    relay_limiter: bool = setting()
    per_key_limit: str | None = setting(None, behaviour=False)
    retry_after_header: bool = setting()
    retry_after_ms_header: bool = setting(False)
    empty_body_429_accepted: bool = setting(False)
    upstream_retry_after_forwarded: bool = setting(True)
    upstream_429_message_rewritten: bool = setting(False)


@dataclass(frozen=True, kw_only=True)
class AdminRules:
    """Which provisioning adapter talks to this relay, and its settings."""

    adapter: Literal["reference", "one-api", "new-api", "static"] = setting(
        "static", behaviour=False
    )
    settings: Mapping[str, str | int | float | bool] = setting({}, behaviour=False)


@dataclass(frozen=True, kw_only=True)
class HttpRules:
    """Transport-level expectations (F12, F18, RELAY_SPEC §8)."""

    body_limit_status: int | None = setting(None)
    body_limit_bytes: int | None = setting(None, behaviour=False)
    cors: bool = setting(True)
    extra_headers: Mapping[str, str] = setting({}, behaviour=False)
    # Whose paths outside /v1 are: "json" (the API's: an unknown one is the JSON unknown_path
    # error) or "web-ui" (one-api's dashboard: any other path is its SPA page, 200 text/html).
    non_api_paths: Literal["json", "web-ui"] = setting("json")


@dataclass(frozen=True, kw_only=True)
class ResponseRules:
    """The answer objects themselves (``chat.completion`` and ``chat.completion.chunk``): how
    strictly the shape area judges fields OpenAI never sends and "None" strings for null.

    ``level`` is the level those cases report: ``"SHOULD"`` where a vendor field is a wart
    clients survive (the ``faq`` dialect), ``"MUST"`` where the relay claims to be OpenAI's API
    (``strict-openai``). The table may be left out: every field has a default.
    """

    level: Literal["MUST", "SHOULD"] = setting("SHOULD", behaviour=False)


# The per-area tables of a profile, in file order: TOML table name -> rules class.
SECTIONS: Final[Mapping[str, type]] = MappingProxyType(
    {
        "billing": BillingRules,
        "auth": AuthRules,
        "stream": StreamRules,
        "models": ModelRules,
        "rate_limit": RateLimitRules,
        "admin": AdminRules,
        "http": HttpRules,
        "response": ResponseRules,
    }
)
# Tables a profile may leave out (all their fields have defaults).
OPTIONAL_SECTIONS: Final[frozenset[str]] = frozenset({"response"})


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
    response: ResponseRules = field(default_factory=ResponseRules)
    # Every accepted deviation, keyed by dotted path: "errors.token_quota_exhausted",
    # "stream.usage_chunk", ... The report lists them; the suite reports "accepted deviation".
    deviations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The documentation each deviation cites, by the same dotted path (absent: none given).
    deviation_docs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def expect(self, condition: str) -> ErrorExpectation:
        """The expectation for ``condition`` (one of :data:`CONDITIONS`)."""
        try:
            return self.errors[condition]
        except KeyError:
            raise KeyError(
                f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}"
            ) from None

    def deviation(self, path: str) -> str | None:
        """The accepted-deviation reason for a dotted path such as ``"stream.usage_chunk"``,
        with the documentation it cites."""
        reason = self.deviations.get(path)
        doc = self.deviation_docs.get(path)
        return reason if reason is None or doc is None else f"{reason} (docs: {doc})"

    def quota_for(self, model: str, group: str, prompt: int, completion: int) -> int:
        """The expected charge in quota units; see :meth:`BillingRules.quota_for`."""
        return self.billing.quota_for(model, group, prompt, completion)
