"""max_tokens: the upstream's 400 for an over-cap or over-window request reaches the client
intact, is not retried and not billed; max_tokens is forwarded unchanged (F22)."""

from __future__ import annotations

import pytest

from relaygate.directives import directive
from relaygate.suite.budget import answer_text
from relaygate.suite.checks import check_error, is_chat_completion, key_in_state
from relaygate.suite.client import chat_body
from relaygate.suite.failures import require
from relaygate.suite.ledger import live_chat, reported_usage
from relaygate.tokens import count_text

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
def test_upstream_400(kind, client, profile, _journal, tag, relay, baseline):
    if _journal is None:
        _live_upstream_400(kind, client, profile, relay, baseline)
        return
    upstream = _journal
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
    _require_400_intact(ex, kind, profile, relay, "upstream's")


def _require_400_intact(ex, kind, profile, relay, source):
    """F22: the 400 for ``kind`` reaches the client with ``source``'s error fields intact."""
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
            f"F22: the {source} error object passes through intact ({field})",
            f"error.{field} {value!r}",
            f"error.{field} {(error or {}).get(field)!r}",
            ex.curl,
            relay.secrets,
        )


# Live, the same two refusals caused by the request itself: gpt-4's output cap is 8192 tokens
# and its context window 8192 (a 6000-token prompt + max_tokens 4000 does not fit).
LIVE_OVERS = {
    "over-cap": ("Say hello.", {"max_tokens": 9000}),
    "over-window": ("relaygate " * 6000, {"max_tokens": 4000}),
}


def _live_upstream_400(kind, client, profile, relay, baseline):
    """Live: the provider's 400 reaches the key holder intact (status, type, param, code); that
    it was sent upstream once shows only in the mock upstream's journal."""
    baseline.require_served()
    text, extra = LIVE_OVERS[kind]
    ex = client.chat(chat_body("gpt-4", text, **extra))
    _require_400_intact(ex, kind, profile, relay, "provider's")


@pytest.mark.case(
    "max_tokens.not-billed",
    title="A refused max_tokens request is not billed",
    area="max_tokens",
    faq=("F22",),
)
def test_not_billed(client, provision, profile, _journal, tag, relay, baseline, ledger):
    if not profile.billing.applicable:
        pytest.skip(f"profile: {profile.billing.skip_reason}")
    ledger.require_billing_seen(baseline)
    key = key_in_state(lambda: provision.funded_key())
    if _journal is None:
        body = live_chat("gpt-4", max_tokens=9000)
    else:
        body = chat_body("gpt-4", directive=directive(tag=tag), max_tokens=9000)
    billed = ledger.bill(key, lambda: client.chat(body, key=key.key), expect_charge=False)
    ex = billed.exchange
    require(
        ex.status == 400,
        "over-cap max_tokens is refused",
        "HTTP 400",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    ledger.require_free(billed, "F22: a refused max_tokens request is not billed", relay.secrets)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.case(
    "max_tokens.forwarded-unchanged",
    title="max_tokens is forwarded unchanged",
    area="max_tokens",
    faq=("F22",),
)
def test_forwarded_unchanged(field, client, _journal, tag, relay, baseline):
    if _journal is None:
        _live_max_tokens_kept(field, client, relay)
        return
    upstream = _journal
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


# Live: over 1024 (a common clamp) and still cheap on gpt-4o-mini (about 0.001 USD). The
# model is asked to repeat a text longer than that, so a kept cap ends it at exactly N tokens.
LIVE_MAX_TOKENS_KEPT = 1100
LIVE_LONG_TEXT = (
    "The relay forwards every request to the provider and sends the answer back as it "
    "arrives, one event at a time. "
) * 60  # 1381 tokens in o200k_base


def _live_max_tokens_kept(field, client, relay):
    """Live: a request for an answer longer than ``field`` = N ends with finish_reason
    "length" at exactly N completion tokens (fewer: the relay lowered the cap; more: it
    ignored it), and at most N completion tokens are reported."""
    n = LIVE_MAX_TOKENS_KEPT
    body = live_chat("gpt-4o-mini", "Repeat exactly: " + LIVE_LONG_TEXT, temperature=0)
    del body["max_tokens"]
    body[field] = n
    ex = client.chat(body)
    require(
        is_chat_completion(ex), "the request is served", "HTTP 200", ex.describe(), ex.curl,
        relay.secrets,
    )  # fmt: skip
    finish = (ex.json() or {})["choices"][0].get("finish_reason")
    counted = count_text(answer_text(ex), "gpt-4o-mini")
    reported = reported_usage(ex)
    actual = (
        f"finish_reason {finish!r} after {counted} tokens (counted locally; the relay "
        f"reported {'no usage' if reported is None else f'{reported[0]} + {reported[1]}'})"
    )
    require(
        counted <= n and (reported is None or reported[1] <= n),
        f"F22: {field} = {n} is honoured: never more completion tokens, nor more billed",
        f"at most {n} completion tokens",
        actual,
        ex.curl,
        relay.secrets,
    )
    if finish != "length" and counted < n:
        pytest.skip(
            f"needs ground truth: the answer ended by itself ({actual}) before {field} = {n}, "
            "so whether the cap was kept cannot be judged from outside"
        )
    require(
        finish == "length" and counted == n,
        f"F22: {field} is kept: an answer longer than {n} tokens stops at exactly {n} "
        "(fewer: the relay lowered the cap)",
        f'finish_reason "length" after {n} completion tokens',
        actual,
        ex.curl,
        relay.secrets,
    )
