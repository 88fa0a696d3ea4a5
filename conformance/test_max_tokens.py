"""max_tokens: the upstream's 400 for an over-cap or over-window request reaches the client
intact, is not retried and not billed; max_tokens is forwarded unchanged (F22)."""

from __future__ import annotations

import pytest

from relaygate.directives import directive
from relaygate.suite.checks import charged, check_error, key_in_state, settled_balance
from relaygate.suite.client import chat_body
from relaygate.suite.failures import require

# gpt-4 on the mock: context window 8192, output cap 8192.
OVERS = {
    "over-cap": ({"max_tokens": 9000}, {}, "max_tokens"),
    "over-window": ({"max_tokens": 4000}, {"prompt_tokens": 6000}, "context_length_exceeded"),
}


# What the mock upstream answers (its documented error objects).
UPSTREAM_ERRORS = {
    "over-cap": {"type": "invalid_request_error", "param": "max_tokens", "code": "invalid_value"},
    "over-window": {
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    },
}


@pytest.mark.parametrize("kind", list(OVERS))
@pytest.mark.case(
    "max_tokens.upstream-400-intact",
    title="Over-cap / over-window: the upstream's 400 passes through intact",
    area="max_tokens",
    faq=("F22", "F5"),
)
def test_upstream_400(kind, client, profile, upstream, tag, relay, baseline):
    baseline.require_forwarding_seen()
    extra, fields, _ = OVERS[kind]
    ex = client.chat(chat_body("gpt-4", directive=directive(tag=tag, **fields), **extra))
    entries = upstream.wait_entries(tag)
    require(
        len(entries) == 1,
        "F22: the request is sent upstream once and not retried",
        "1 upstream request",
        f"{len(entries)}",
        ex.curl,
        relay.secrets,
    )
    want = UPSTREAM_ERRORS[kind]
    error = check_error(
        ex,
        profile,
        "upstream_4xx",
        f"F22: {kind} max_tokens is refused with 400",
        upstream_error=want,
        upstream_status=400,
        secrets=relay.secrets,
    )
    for field, value in want.items():
        require(
            (error or {}).get(field) == value,
            f"F22: the upstream's error object passes through intact ({field})",
            f"error.{field} {value!r}",
            f"error.{field} {(error or {}).get(field)!r}",
            ex.curl,
            relay.secrets,
        )


@pytest.mark.case(
    "max_tokens.not-billed",
    title="A refused max_tokens request is not billed",
    area="max_tokens",
    faq=("F22",),
)
def test_not_billed(client, provision, profile, upstream, tag, relay, baseline):
    if not profile.billing.applicable:
        pytest.skip(f"profile: {profile.billing.skip_reason}")
    baseline.require_billing_seen(client, provision, profile)
    key = key_in_state(lambda: provision.funded_key())
    before = settled_balance(provision, key, profile)
    ex = client.chat(chat_body("gpt-4", directive=directive(tag=tag), max_tokens=9000), key=key.key)
    require(
        ex.status == 400,
        "over-cap max_tokens is refused",
        "HTTP 400",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    after = settled_balance(provision, key, profile)
    require(
        charged(before, after) == 0,
        "F22: a refused max_tokens request is not billed",
        "0 quota",
        f"{charged(before, after)} quota",
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.case(
    "max_tokens.forwarded-unchanged",
    title="max_tokens is forwarded unchanged",
    area="max_tokens",
    faq=("F22",),
)
def test_forwarded_unchanged(field, client, upstream, tag, relay, baseline):
    baseline.require_forwarding_seen()
    ex = client.chat(chat_body("gpt-4o", directive=directive(tag=tag), **{field: 3333}))
    require(
        ex.status == 200, "the request is served", "HTTP 200", ex.describe(), ex.curl, relay.secrets
    )
    bodies = [e.get("body") for e in upstream.wait_entries(tag)]
    got = [b.get(field) if isinstance(b, dict) else None for b in bodies]
    require(
        got == [3333], f"the relay forwards {field} unchanged", [3333], got, ex.curl, relay.secrets
    )
