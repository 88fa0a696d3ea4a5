"""auth: every key that cannot be used is refused with 401 and a clear, distinct message
(F15, F5), before anything reaches the upstream."""

from __future__ import annotations

import pytest

from relaygate.directives import directive
from relaygate.keys import mask_key
from relaygate.provision import KeyState
from relaygate.suite.checks import (
    applicable,
    check_error,
    check_not_forwarded,
    is_chat_completion,
    key_in_state,
)
from relaygate.suite.client import chat_body
from relaygate.suite.failures import deviation, require
from relaygate.suite.live import skip_outside_view

UNKNOWN_KEY = "sk-relaygateUnknownKey000000000000000000000000000000"


def _refused_key_request(kind, client, provision, tag, profile):
    """Send one chat request authenticated the ``kind`` way; return (exchange, key used)."""
    body = chat_body(directive=directive(tag=tag))
    if kind == "missing_key":
        return client.chat(body, key=None), None
    if kind == "malformed_key":
        ex = client.request(
            "POST",
            "/v1/chat/completions",
            json=body,
            key=None,
            headers={"Authorization": "Basic cmVsYXlnYXRlOnNlY3JldA=="},
        )
        return ex, None
    if kind == "invalid_key":
        return client.chat(body, key=UNKNOWN_KEY), UNKNOWN_KEY
    # A relay without expiring/disabling keys: skip with the profile's reason, before asking
    # the provisioner for a key that cannot exist.
    applicable(profile.expect(kind))
    state = {"expired_key": KeyState.EXPIRED, "disabled_key": KeyState.DISABLED}[kind]
    key = key_in_state(lambda: provision.key_with(state))
    return client.chat(body, key=key.key), key.key


REFUSALS = {
    "missing_key": "a request without an Authorization header is refused with 401",
    "malformed_key": "an Authorization header that is not 'Bearer <key>' is refused with 401",
    "invalid_key": "an unknown key is refused with 401",
    "expired_key": "an expired key is refused with 401 saying it expired",
    "disabled_key": "a disabled key is refused with 401 saying it is disabled",
}


@pytest.mark.parametrize("kind", list(REFUSALS))
@pytest.mark.case(
    "auth.refused", title="Unusable keys are refused with 401", area="auth", faq=("F15", "F5")
)
def test_refused(kind, client, provision, profile, tag, relay, baseline):
    # A relay that refuses every key shows nothing about unusable ones.
    baseline.require_served()
    ex, key = _refused_key_request(kind, client, provision, tag, profile)
    check_error(ex, profile, kind, REFUSALS[kind], secrets=(*relay.secrets, key))


@pytest.mark.parametrize("kind", list(REFUSALS))
@pytest.mark.case(
    "auth.refused-before-upstream",
    title="A refused key never reaches the upstream",
    area="auth",
    faq=("F15",),
)
def test_refused_before_upstream(
    kind, client, provision, _journal, tag, profile, baseline, funded_key, relay
):
    if _journal is None:
        # The answer is the same 401 either way (auth.refused checks it); only the upstream
        # knows whether the request reached it first (fault forward_before_auth).
        skip_outside_view(
            "what reached the upstream (a relay may send a refused request upstream and still "
            "answer the right 401, which auth.refused checks)"
        )
    upstream = _journal
    baseline.require_forwarding_seen()
    ex, _ = _refused_key_request(kind, client, provision, tag, profile)
    require(
        400 <= ex.status < 500,
        "a request with an unusable key is refused",
        "HTTP 4xx",
        ex.describe(),
        ex.curl,
    )
    if profile.auth.client_key_is_provider_key:
        _byok_refusal(upstream, tag, ex, funded_key, relay, profile)
        return
    check_not_forwarded(
        upstream,
        tag,
        "a request with an unusable key is not sent upstream",
        ex.curl,
        baseline=baseline,
    )


def _byok_refusal(upstream, tag, ex, funded_key, relay, profile):
    """Bring your own key (the profile cites the relay's docs): the relay has no keys to check,
    so the provider judges the key the client sent. What the rule protects still holds when a
    forwarded request carries no usable credential the client did not send: the funded key
    must not appear upstream. Forwarded that way: a deviation; not forwarded: a pass."""
    __tracebackhide__ = True
    entries = upstream.wait_entries(tag, count=1, timeout_s=0.05)
    if not entries:
        return
    for entry in entries:
        received = repr(entry.get("headers")) + repr(entry.get("body")) + repr(entry.get("query"))
        require(
            funded_key not in received,
            "a request with an unusable key never goes upstream with a usable one",
            "no usable key in what the upstream received",
            f"the upstream received the funded key {mask_key(funded_key)}",
            ex.curl,
            relay.secrets,
        )
    reason = profile.deviation("auth.client_key_is_provider_key") or "bring your own key"
    deviation(f"forwarded with only the client's own credential; the provider refused it: {reason}")


@pytest.mark.case(
    "auth.distinct-messages",
    title="Each auth failure says what is wrong",
    area="auth",
    faq=("F15",),
)
def test_distinct_messages(client, provision, profile, tag, relay, baseline):
    baseline.require_served()
    messages: dict[str, str] = {}
    others: dict[str, str] = {}
    for kind in REFUSALS:
        if not profile.expect(kind).applicable:
            continue
        ex, _ = _refused_key_request(kind, client, provision, tag, profile)
        error = ex.error
        if error is None or ex.status != 401:
            others[kind] = f"HTTP {ex.status}" + ("" if error else " without an error object")
            continue
        messages[kind] = str(error.get("message", ""))
    if len(messages) < 3:
        pytest.skip(
            f"only {len(messages)} refusals were 401s with an error object to compare "
            f"({', '.join(sorted(messages)) or 'none'}); the others: "
            + (", ".join(f"{k} {v}" for k, v in sorted(others.items())) or "not applicable")
        )
    seen: dict[str, str] = {}
    for kind, message in messages.items():
        require(
            message not in seen,
            "F15: missing, unknown, expired and disabled keys get distinct messages",
            "a different message for each cause",
            f"{kind} and {seen.get(message)} both say {message!r}",
            secrets=relay.secrets,
        )
        seen[message] = kind
    deviation = profile.deviation("auth.distinct_messages")
    if deviation:
        pytest.xfail("deviation: " + deviation)


@pytest.mark.case(
    "auth.bearer-scheme-case",
    title="The Bearer scheme is matched case-insensitively",
    area="auth",
    faq=("F15",),
    level="SHOULD",
    spec="RFC 7235 §2.1",
)
def test_bearer_case(client, relay, profile, tag, baseline):
    if not relay.key:
        pytest.skip("needs a funded key (--relay-key)")
    # Either verdict needs 'Bearer <same key>' to be served.
    baseline.require_served()
    ex = client.request(
        "POST",
        "/v1/chat/completions",
        json=chat_body(directive=directive(tag=tag)),
        key=None,
        headers={"Authorization": f"bearer {relay.key}"},
    )
    if profile.auth.bearer_case_insensitive:
        require(
            is_chat_completion(ex),
            "the auth scheme is case-insensitive (RFC 7235): 'bearer sk-…' works",
            "HTTP 200 with a chat completion",
            ex.describe(),
            ex.curl,
            relay.secrets,
        )
    else:
        require(
            ex.status == 401,
            "the profile documents that lowercase 'bearer' is refused",
            "HTTP 401",
            ex.describe(),
            ex.curl,
            relay.secrets,
        )
        pytest.xfail(
            "deviation: "
            + (profile.deviation("auth.bearer_case_insensitive") or "lowercase bearer refused")
        )


@pytest.mark.case(
    "auth.funded-key-works", title="A funded key gets an answer", area="auth", faq=("F15", "F6")
)
def test_funded_key_works(client, relay, tag):
    if not relay.key:
        pytest.skip("needs a funded key (--relay-key)")
    ex = client.chat(chat_body(directive=directive(tag=tag)))
    require(
        is_chat_completion(ex),
        "a funded key on an existing model gets a JSON chat completion (F7: never an HTML page)",
        "HTTP 200, Content-Type application/json, with choices[0].message",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
