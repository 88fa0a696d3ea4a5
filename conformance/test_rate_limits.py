"""rate limits: a relay's 429 is OpenAI-shaped with an honest Retry-After, refused before the
upstream and billed nothing; an upstream 429 stays a 429.

Live (a URL and keys, no journal): the requests are plain one-token chats, a 429's cost is
read through the key's billing endpoints; what reached the upstream cannot be seen."""

from __future__ import annotations

import time

import pytest

from relaygate.directives import directive
from relaygate.provision import KeyState
from relaygate.suite.checks import (
    check_error,
    key_in_state,
    retry_after_s,
)
from relaygate.suite.client import chat_body
from relaygate.suite.failures import require
from relaygate.suite.ledger import live_chat


def _body(tag, live):
    """A request of the case: tagged for the journal, or (live) a plain one-token chat."""
    return live_chat(max_tokens=1) if live else chat_body(directive=directive(tag=tag))


#: limited keys this run has already driven into a 429: a later case may find the window full
_REFUSED_KEYS: set[str] = set()

#: how long a case waits for a window a previous case filled when the 429 names no wait
_UNNAMED_WAIT_S = 1.0


def _until_429(client, key, tag, limit=30, *, live=False):
    """Send requests until one is refused with 429; return (answers, the 429).

    One limited key serves every case in turn (live: the holder's; mock: the provisioner's).
    When its first request is already refused and an earlier case of this run filled the
    window (live: always assumed), wait as told (at most 5 s; 1 s when the 429 names no wait)
    and start again once. Against the mock a longer window (a per-minute limit) cannot be
    waited out in a bounded case: it skips, since "served, then refused" cannot be shown.
    """
    answers = []
    waited = False
    for i in range(limit):
        ex = client.chat(_body(f"{tag}.{i}", live), key=key)
        answers.append(ex)
        if ex.status == 429 and len(answers) == 1 and (live or key in _REFUSED_KEYS):
            wait_s = retry_after_s(ex.headers)
            if live and wait_s is not None and wait_s <= 5:
                time.sleep(wait_s + 0.05)
                answers = []
                continue
            if not live and not waited:
                if wait_s is None or wait_s <= 5:
                    waited = True
                    time.sleep((_UNNAMED_WAIT_S if wait_s is None else wait_s) + 0.05)
                    answers = []
                    continue
                pytest.skip(
                    f"the rate-limited key is still refused after an earlier case's 429 "
                    f"(Retry-After {wait_s:.0f} s is too long to wait out here), so this case "
                    "cannot show it served before it is refused"
                )
        if ex.status == 429:
            _REFUSED_KEYS.add(key)
            return answers, ex
    return answers, None


@pytest.fixture
def limited_key(provision, profile):
    if not profile.rate_limit.relay_limiter:
        why = profile.deviation("rate_limit.relay_limiter")
        pytest.skip(
            "profile: this relay has no relay-side rate limiter" + (f": {why}" if why else "")
        )
    # A short window keeps the Retry-After check bounded (about one second of waiting).
    return key_in_state(lambda: provision.key_with(KeyState.RATE_LIMITED, rate_limit="2/1s"))


def _require_429(answers, refused, key, relay):
    """Fail (with the last request's curl) when the limit was never enforced, or when the key
    was refused from its first request on (then the 429 is not about the limit)."""
    require(
        refused is not None,
        "a key over its rate limit is refused with 429",
        "a 429",
        f"{len(answers)} answers, statuses {sorted({a.status for a in answers})}",
        answers[-1].curl,
        (*relay.secrets, key),
    )
    assert refused is not None
    require(
        any(a.status == 200 for a in answers[:-1]),
        "a key within its rate limit is served before it is refused",
        "HTTP 200 before the 429",
        f"statuses {[a.status for a in answers]}",
        answers[0].curl,
        (*relay.secrets, key),
    )
    return refused


@pytest.mark.case(
    "rate_limits.429-shape",
    title="Over the limit: 429 with an OpenAI error body and Retry-After",
    area="rate_limits",
    faq=("F5",),
)
def test_429_shape(client, profile, limited_key, tag, relay, _journal):
    answers, refused = _until_429(client, limited_key.key, tag, live=_journal is None)
    refused = _require_429(answers, refused, limited_key.key, relay)
    if profile.rate_limit.retry_after_header:
        value = refused.headers.get("retry-after", "")
        # delta-seconds or an HTTP-date: RFC 9110 allows both, and clients read both.
        wait_s = retry_after_s({"retry-after": value})
        require(
            wait_s is not None and (not value.isdigit() or int(value) >= 1),
            "a 429 says when to retry (Retry-After)",
            "Retry-After: <seconds >= 1> or <HTTP-date>",
            repr(value),
            refused.curl,
            relay.secrets,
        )
    check_error(
        refused,
        profile,
        "rate_limited",
        "F5: too many requests is a 429",
        secrets=(*relay.secrets, limited_key.key),
    )


@pytest.mark.case(
    "rate_limits.refused-before-upstream",
    title="A 429 is refused before the upstream and billed nothing",
    area="rate_limits",
    faq=("F5",),
)
def test_refused_before_upstream(
    client, profile, provision, _journal, limited_key, tag, relay, baseline, ledger
):
    if _journal is None:
        _live_429_not_billed(client, profile, limited_key, tag, relay, baseline, ledger)
        return
    upstream = _journal
    answers, refused = _until_429(client, limited_key.key, tag)
    refused = _require_429(answers, refused, limited_key.key, relay)
    baseline.require_forwarding_seen()
    refused_tag = f"{tag}.{len(answers) - 1}"
    entries = upstream.wait_entries(refused_tag, timeout_s=0.3)
    require(
        not entries,
        "a rate-limited request never reaches the upstream",
        "no upstream request",
        f"{len(entries)} upstream request(s)",
        refused.curl,
        relay.secrets,
    )
    if profile.billing.applicable:
        ledger.require_billing_seen(baseline)
        body = chat_body(directive=directive(tag=tag + ".again"))
        billed = ledger.bill(
            limited_key, lambda: client.chat(body, key=limited_key.key), expect_charge=False
        )
        if billed.exchange.status == 429:
            ledger.require_free(billed, "a 429 is not billed", relay.secrets)


def _live_429_not_billed(client, profile, key, tag, relay, baseline, ledger):
    """Live: a request refused with 429 costs nothing, read through the key's billing
    endpoints; whether it reached the upstream shows only in the mock upstream's journal."""
    if not profile.billing.applicable:
        pytest.skip(
            "needs ground truth: not forwarded shows only in the mock upstream's journal, and "
            f"the profile has no billing to read ({profile.billing.skip_reason})"
        )
    ledger.require_billing_seen(baseline)
    answers, refused = _until_429(client, key.key, tag, live=True)
    _require_429(answers, refused, key.key, relay)
    billed = ledger.bill(
        key, lambda: client.chat(live_chat(max_tokens=1), key=key.key), expect_charge=False
    )
    require(
        billed.exchange.status == 429,
        "a request right after a 429 is refused too (the window has not passed)",
        "HTTP 429",
        billed.exchange.describe(),
        billed.exchange.curl,
        (*relay.secrets, key.key),
    )
    ledger.require_free(billed, "a 429 is not billed", (key.key,))


@pytest.mark.case(
    "rate_limits.retry-after-honest",
    title="Retry-After is right: before it refused, after it served",
    area="rate_limits",
    faq=("F5",),
    level="SHOULD",
)
def test_retry_after_honest(client, profile, limited_key, tag, relay, _journal):
    if not profile.rate_limit.retry_after_header:
        pytest.skip("profile: this relay sends no Retry-After")
    live = _journal is None
    answers, refused = _until_429(client, limited_key.key, tag, live=live)
    refused = _require_429(answers, refused, limited_key.key, relay)
    ms = refused.headers.get("retry-after-ms")
    seconds = refused.headers.get("retry-after", "")
    wait_s = retry_after_s(refused.headers)
    require(
        wait_s is not None,
        "a 429 says when to retry (Retry-After), so its advice can be checked",
        "Retry-After: <seconds> or <HTTP-date> (or retry-after-ms)",
        f"Retry-After {seconds!r}, retry-after-ms {ms!r}",
        refused.curl,
        relay.secrets,
    )
    assert wait_s is not None
    if wait_s > 5:
        pytest.skip(f"Retry-After {wait_s:.1f} s is too long for this bounded check")
    early = client.chat(_body(tag + ".early", live), key=limited_key.key)
    require(
        early.status == 429,
        "a retry before Retry-After is still refused",
        "HTTP 429",
        early.describe(),
        early.curl,
        relay.secrets,
    )
    time.sleep(wait_s + 0.05)
    late = client.chat(_body(tag + ".late", live), key=limited_key.key)
    require(
        late.status == 200,
        f"a retry after Retry-After ({wait_s:.3f} s) is served",
        "HTTP 200",
        late.describe(),
        late.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "rate_limits.upstream-429-passthrough",
    title="An upstream 429 reaches the client as 429 with its Retry-After",
    area="rate_limits",
    faq=("F5",),
    spec="RELAY_SPEC §10.25",
)
def test_upstream_429(client, profile, _journal, tag, relay, baseline):
    if _journal is None:
        pytest.skip(
            "needs ground truth: only the mock upstream answers 429 on demand (a live provider's "
            "429 cannot be caused without exhausting a real account)"
        )
    upstream = _journal
    baseline.require_forwarding_seen()
    # An upstream 429 unlike the relay limiter's own (type, code and message of a provider's
    # per-model limit): the client must get this one, not the relay's "too many requests".
    sent = {
        "message": f"Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000 ({tag})",
        "type": "tokens",
        "code": "rate_limit_exceeded",
        "param": None,
    }
    ex = client.chat(
        chat_body(
            directive=directive(
                error=429,
                retry_after="7",
                error_type=sent["type"],
                error_code=sent["code"],
                error_message=sent["message"],
                tag=tag,
            )
        )
    )
    require(
        bool(upstream.wait_entries(tag)),
        "the request reaches the upstream, whose 429 is then relayed",
        "the request in the mock upstream's journal",
        f"nothing reached the upstream; the relay answered {ex.describe()}",
        ex.curl,
        relay.secrets,
    )
    # Where the profile passes the upstream's error through, its type, code and message are
    # compared with what the mock sent: the relay limiter's own 429 fails here.
    check_error(
        ex,
        profile,
        "upstream_429",
        "an upstream 429 stays a 429 (not 500) and is the upstream's, not the relay limiter's",
        upstream_status=429,
        upstream_error=sent,
        secrets=relay.secrets,
    )
    if profile.rate_limit.upstream_retry_after_forwarded:
        require(
            ex.headers.get("retry-after") == "7",
            "the upstream's Retry-After is passed on",
            "Retry-After: 7",
            repr(ex.headers.get("retry-after")),
            ex.curl,
            relay.secrets,
        )
