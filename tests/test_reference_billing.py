"""Reference relay: the billing formula, pre-consumption, settlement, refunds, concurrency."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference_helpers import StreamScript, async_test, fail, ok, relay_env, settle, stream

from relaygate.reference.billing import (
    QUOTA_PER_USD,
    RatioError,
    format_ratio,
    parse_ratio,
    quota_for,
)

# Ratios as people write them: decimal text with up to 4 places.
ratios = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False).map(str)
counts = st.integers(min_value=0, max_value=2_000_000)


def independent(p: int, c: int, g: str, m: str, cr: str) -> int:
    exact = Fraction(Decimal(g)) * Fraction(Decimal(m)) * (p + c * Fraction(Decimal(cr)))
    if p + c == 0 or exact == 0:
        return 0
    return max(1, -((-exact.numerator) // exact.denominator))


@given(counts, counts, ratios, ratios, ratios)
def test_quota_for_matches_an_independent_exact_computation(
    p: int, c: int, g: str, m: str, cr: str
) -> None:
    assert quota_for(p, c, g, m, cr) == independent(p, c, g, m, cr)


@given(counts, counts, ratios, ratios, ratios)
def test_float_ratios_are_read_as_their_decimal_text(
    p: int, c: int, g: str, m: str, cr: str
) -> None:
    assert quota_for(p, c, float(g), float(m), float(cr)) == quota_for(p, c, g, m, cr)


@pytest.mark.parametrize(
    ("prompt", "completion", "group", "model", "completion_ratio", "expected"),
    [
        (0, 100, 1, 1, "1.33", 133),  # 1.33 × 100 is 133, not 134 (float: 133.00000000000003)
        (0, 100, 1, 1, 1.33, 133),
        (10, 20, 1, "0.75", "1.33", math.ceil(Fraction(3, 4) * (10 + Fraction(266, 10)))),
        (10, 20, 1, "2.5", 4, 225),  # the spec's worked example (one-api, gpt-4o)
        (10, 20, 1, 15, 2, 750),
        (1, 0, 1, "0.075", 4, 1),  # minimum 1 when tokens were used
        (0, 0, 1, 15, 2, 0),  # nothing used, nothing billed
        (7, 3, 1, 0, 2, 0),  # a free model (ratio 0) stays free
        (3, 0, "0.5", 1, 1, 2),  # 1.5 rounds up
    ],
)
def test_quota_for_table(
    prompt: int,
    completion: int,
    group: object,
    model: object,
    completion_ratio: object,
    expected: int,
) -> None:
    assert quota_for(prompt, completion, group, model, completion_ratio) == expected  # type: ignore[arg-type]


def test_half_even_rounding_and_bad_ratios() -> None:
    assert quota_for(5, 0, 1, "0.5", 1, rounding="half_even") == 2
    assert quota_for(5, 0, 1, "0.5", 1) == 3
    for bad in ("-1", "abc", float("nan"), True, None):
        with pytest.raises(RatioError):
            parse_ratio(bad)  # type: ignore[arg-type]
    assert format_ratio(parse_ratio("1.330")) == "1.33"
    assert format_ratio(Fraction(1, 3)) == "1/3"


@pytest.mark.parametrize(
    ("model", "group", "group_ratio", "usage", "expected"),
    [
        ("gpt-4o", "default", "1", (10, 20), 225),
        ("gpt-3.5-turbo", "default", "1", (100, 100), math.ceil(Fraction(3, 4) * 233)),
        ("gpt-4", "vip", "0.8", (10, 20), 600),
        ("gpt-4o-mini", "svip", "1", (1000, 1000), 375),
    ],
)
@async_test
async def test_end_to_end_charge(
    model: str, group: str, group_ratio: str, usage: tuple[int, int], expected: int
) -> None:
    async with relay_env() as env:
        env.state.update_ratios({"group_ratio": {group: group_ratio}})
        user, token = env.user_token(quota=10**6, group=group)
        env.upstream.behaviour = ok(usage)
        reply = await env.chat(token.key, model)
        assert reply.status == 200
        assert user.quota == 10**6 - expected and user.used_quota == expected
        assert token.used_quota == expected and token.remain_quota == 10**9 - expected
        assert env.state.logs[-1].quota == expected
        assert user.reserved_quota == token.reserved_quota == 0


@async_test
async def test_embeddings_bill_prompt_only_and_unknown_model_ratio_is_one() -> None:
    async with relay_env() as env:
        _user, token = env.user_token()
        env.upstream.behaviour = ok((40, 0))
        reply = await env.request(
            "POST", "/v1/embeddings", token.key, {"model": "text-embedding-3-small", "input": "hi"}
        )
        assert reply.status == 200
        assert env.state.logs[-1].quota == 40 and env.state.logs[-1].completion_tokens == 0


@async_test
async def test_missing_usage_is_counted_locally() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        env.upstream.behaviour = ok(usage=None, content="one two three")
        assert (await env.chat(token.key, "gpt-4", max_tokens=50)).status == 200
        entry = env.state.logs[-1]
        assert entry.prompt_tokens > 0 and entry.completion_tokens == 3
        assert entry.quota == quota_for(entry.prompt_tokens, 3, 1, 15, 2)


@pytest.mark.parametrize(
    "behaviour",
    [
        fail(400, {"error": {"message": "bad", "type": "invalid_request_error"}}),
        fail(500, b"<html>"),
    ],
)
@async_test
async def test_upstream_errors_are_refunded(behaviour: object) -> None:
    async with relay_env() as env:
        user, token = env.user_token(quota=10**6)
        env.upstream.behaviour = behaviour  # type: ignore[assignment]
        reply = await env.chat(token.key)
        assert reply.status >= 400
        assert user.quota == 10**6 and token.remain_quota == 10**9 and token.used_quota == 0
        assert user.reserved_quota == token.reserved_quota == 0
        assert env.state.logs[-1].quota == 0 and env.state.logs[-1].status == reply.status


@async_test
async def test_transport_failure_is_refunded() -> None:
    async with relay_env() as env:
        user, token = env.user_token(quota=10**6)
        env.state.channels[1].base_url = "http://127.0.0.1:9"  # discard port: refused
        reply = await env.chat(token.key)
        assert reply.status == 502 and reply.error["code"] == "upstream_unreachable"
        assert user.quota == 10**6 and user.reserved_quota == 0


@async_test
async def test_timeout_is_504_and_refunded() -> None:
    async with relay_env(upstream_timeout_s=0.2) as env:
        user, token = env.user_token(quota=10**6)
        env.upstream.behaviour = ok(delay_s=1.0)
        reply = await env.chat(token.key)
        assert reply.status == 504 and reply.error["code"] == "upstream_timeout"
        assert user.quota == 10**6 and user.reserved_quota == 0


@async_test
async def test_pre_consumption_refusals() -> None:
    async with relay_env() as env:
        # gpt-4o, max_tokens 100: estimate = ceil(2.5 × (prompt + 400)) > 1000
        _, exhausted = env.user_token(remain_quota=0)
        _, low = env.user_token(remain_quota=500)
        poor_user, rich_token = env.user_token(quota=500)
        broke_user, unlimited = env.user_token(quota=0, unlimited_quota=True)
        _, unlimited_ok = env.user_token(quota=10**6, unlimited_quota=True, remain_quota=0)
        cases = [
            (exhausted, "token_quota_exhausted", "该令牌额度已用尽"),
            (low, "token_quota_insufficient", "500 quota available"),
            (rich_token, "insufficient_user_quota", "user quota is not enough"),
            (unlimited, "insufficient_user_quota", "用户额度不足"),
        ]
        for token, code, text in cases:
            reply = await env.chat(token.key, max_tokens=100)
            assert reply.status == 403, (code, reply.body)
            assert reply.error["code"] == code and text in reply.error["message"]
            assert reply.error["type"] == "relay_error"
        assert env.upstream.requests == []
        assert (await env.chat(unlimited_ok.key, max_tokens=100)).status == 200
        assert unlimited_ok.remain_quota == 0 and unlimited_ok.used_quota == 225
        assert poor_user.quota == 500 and broke_user.quota == 0


@async_test
async def test_concurrent_requests_never_overdraw() -> None:
    async with relay_env() as env:
        env.upstream.behaviour = ok((10, 20), delay_s=0.02)
        # Estimate with max_tokens=20 equals the charge (225); funded for 10 requests.
        user, token = env.user_token(quota=10**6, remain_quota=2250)
        replies = await asyncio.gather(*(env.chat(token.key, max_tokens=20) for _ in range(50)))
        await settle(env.state)
        statuses = [r.status for r in replies]
        assert statuses.count(200) == 10 and statuses.count(403) == 40
        assert token.remain_quota >= -225
        charged = sum(e.quota for e in env.state.logs)
        assert charged == token.used_quota == user.used_quota == 2250 - token.remain_quota
        assert token.reserved_quota == user.reserved_quota == 0


@async_test
async def test_racy_billing_fault_loses_updates_and_overdraws() -> None:
    async with relay_env(faults=["racy_billing"]) as env:
        env.upstream.behaviour = ok((10, 20), delay_s=0.02)
        _, token = env.user_token(quota=10**6, remain_quota=2250)
        replies = await asyncio.gather(*(env.chat(token.key, max_tokens=20) for _ in range(50)))
        await settle(env.state)
        assert sum(r.status == 200 for r in replies) > 10
        charged = sum(e.quota for e in env.state.logs)
        assert charged != 2250 - token.remain_quota or token.remain_quota < -225


@async_test
async def test_client_disconnect_mid_stream_bills_what_was_streamed() -> None:
    async with relay_env() as env:
        user, token = env.user_token(quota=10**6)
        env.upstream.behaviour = stream(
            StreamScript(pieces=["tok"] * 50, gap_s=0.05, usage=(10, 50))
        )
        payload = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        async with env.session.post(
            env.url + "/v1/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {token.key}"},
        ) as resp:
            assert resp.status == 200
            seen = b""
            while seen.count(b"tok") < 3:
                seen += await resp.content.readany()
            resp.close()
        await asyncio.sleep(0.3)
        await settle(env.state)
        entry = env.state.logs[-1]
        full = quota_for(entry.prompt_tokens, 50, 1, "2.5", 4)
        assert 0 < entry.quota < full and entry.completion_tokens < 50
        assert user.reserved_quota == token.reserved_quota == 0
        assert user.used_quota == entry.quota


@async_test
async def test_billing_endpoints() -> None:
    async with relay_env() as env:
        user, token = env.user_token(
            quota=10**6, remain_quota=QUOTA_PER_USD, expires_at=4_000_000_000
        )
        env.upstream.behaviour = ok((10, 20))
        await env.chat(token.key)
        sub = (await env.request("GET", "/v1/dashboard/billing/subscription", token.key)).json()
        assert sub["object"] == "billing_subscription" and sub["has_payment_method"] is True
        assert sub["hard_limit_usd"] == sub["soft_limit_usd"] == sub["system_hard_limit_usd"] == 1.0
        assert sub["access_until"] == 4_000_000_000
        usage = (await env.request("GET", "/dashboard/billing/usage", token.key)).json()
        assert usage == {"object": "list", "total_usage": 225 / QUOTA_PER_USD * 100}
        # one-api: an unlimited key's hard limit is a fixed 100 000 000 (not its user's quota).
        _, unlimited = env.user_token(quota=QUOTA_PER_USD * 2, unlimited_quota=True)
        sub = (await env.request("GET", "/dashboard/billing/subscription", unlimited.key)).json()
        assert sub["hard_limit_usd"] == 100_000_000 and sub["access_until"] == 0
        assert (await env.request("GET", "/v1/dashboard/billing/usage")).status == 401
        assert user.used_quota == 225


@async_test
async def test_two_readings_give_the_exact_quota_a_request_was_charged() -> None:
    """A key holder's own evidence: round(Δtotal_usage × 5000) is the request's charge, and
    hard_limit_usd (remain + used) does not move while the key spends."""
    async with relay_env() as env:
        _, token = env.user_token(remain_quota=3 * QUOTA_PER_USD + 1)
        _, other = env.user_token()

        async def readings() -> tuple[float, float]:
            sub = await env.request("GET", "/v1/dashboard/billing/subscription", token.key)
            use = await env.request("GET", "/v1/dashboard/billing/usage", token.key)
            return sub.json()["hard_limit_usd"], use.json()["total_usage"]

        hard0, cents = await readings()
        assert round(hard0 * QUOTA_PER_USD) == 3 * QUOTA_PER_USD + 1 and cents == 0
        for usage, model in (((10, 20), "gpt-4o"), ((1, 0), "gpt-4o-mini"), ((7, 333), "gpt-4")):
            env.upstream.behaviour = ok(usage)
            assert (await env.chat(token.key, model)).status == 200
            await env.chat(other.key, model)  # another key's spending is not this key's
            await settle(env.state)
            hard, after = await readings()
            assert round((after - cents) * 5000) == env.state.logs[-2].quota
            assert hard == hard0 and round(after * 5000) == token.used_quota
            cents = after


@pytest.mark.parametrize("used", [1, 3, 225, 499_999, 10**9 + 7, 2**40 + 1])
def test_total_usage_cents_round_trip_to_the_exact_quota(used: int) -> None:
    cents = used / QUOTA_PER_USD * 100  # the reference relay's and one-api's float, op by op
    assert round(cents * 5000) == used
    assert round((cents - (used - 1) / QUOTA_PER_USD * 100) * 5000) == 1
