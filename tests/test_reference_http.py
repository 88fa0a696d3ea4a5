"""Reference relay: auth (F15), refusal order and codes, rate limit, CORS, robustness."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import pytest
from reference_helpers import async_test, fail, ok, relay_env

from relaygate.reference.config import RateLimit
from relaygate.reference.limiter import SlidingWindowLimiter


@async_test
async def test_auth_variants() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        _, expired = env.user_token(expires_at=int(time.time()) - 10)
        _, disabled = env.user_token(status="disabled")
        banned_user, banned = env.user_token()
        banned_user.status = "disabled"
        cases: list[tuple[dict[str, str], int, str]] = [
            ({}, 401, "missing_api_key"),
            ({"Authorization": ""}, 401, "missing_api_key"),
            ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "malformed_api_key"),
            ({"Authorization": "Bearer"}, 401, "malformed_api_key"),
            ({"Authorization": "Bearer "}, 401, "malformed_api_key"),
            ({"Authorization": "Bearer sk-unknown0000000000"}, 401, "invalid_api_key"),
            ({"Authorization": f"Bearer {expired.key}"}, 401, "token_expired"),
            ({"Authorization": f"Bearer {disabled.key}"}, 401, "token_disabled"),
            ({"Authorization": f"Bearer {banned.key}"}, 403, "user_disabled"),
            ({"x-api-key": token.key}, 401, "missing_api_key"),
        ]
        messages = set()
        for headers, status, code in cases:
            reply = await env.request(
                "POST",
                "/v1/chat/completions",
                json={"model": "gpt-4o", "messages": []},
                headers=headers,
            )
            assert (reply.status, reply.error["code"]) == (status, code), headers
            assert reply.error["type"] == "relay_error"
            messages.add(reply.error["message"])
        assert len(messages) == 6  # one distinct message per distinct cause
        reply = await env.request(
            "POST",
            f"/v1/chat/completions?key={token.key}",
            json={"model": "gpt-4o", "messages": []},
        )
        assert reply.error["code"] == "missing_api_key"
        for header in (
            f"Bearer {token.key}",
            f"bearer {token.key}",
            f"BEARER  {token.key}",
            token.key,
        ):
            reply = await env.request(
                "POST",
                "/v1/chat/completions",
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": header},
            )
            assert reply.status == 200, header
        assert all(
            r["headers"]["Authorization"] == f"Bearer {_channel_key(env)}"
            for r in env.upstream.requests
        )


def _channel_key(env: object) -> str:
    from reference_helpers import UPSTREAM_KEY

    return UPSTREAM_KEY


@async_test
async def test_refusals_in_order_and_never_upstream() -> None:
    async with relay_env(max_body_bytes=1000) as env:
        _, token = env.user_token(models=["gpt-4o"])
        key = token.key
        cases = [
            ("POST", "/v1/foo", None, b"{}", 404, "not_found"),
            ("GET", "/v1/chat/completions", key, None, 405, "method_not_allowed"),
            ("POST", "/v1/chat/completions", None, b"x" * 2000, 413, "request_too_large"),
            ("POST", "/v1/chat/completions", None, b"{}", 401, "missing_api_key"),
            ("POST", "/v1/chat/completions", key, b"{not json", 400, "invalid_json"),
            ("POST", "/v1/chat/completions", key, b"\xff\xfe", 400, "invalid_json"),
            ("POST", "/v1/chat/completions", key, b"[1]", 400, "invalid_request"),
            ("POST", "/v1/chat/completions", key, b'{"messages": []}', 400, "invalid_request"),
            (
                "POST",
                "/v1/chat/completions",
                key,
                b'{"model": "gpt-4o", "messages": 3}',
                400,
                "invalid_request",
            ),
            (
                "POST",
                "/v1/chat/completions",
                key,
                b'{"model": "gpt-4o", "messages": [], "max_tokens": -1}',
                400,
                "invalid_value",
            ),
            (
                "POST",
                "/v1/chat/completions",
                key,
                b'{"model": "gpt-4", "messages": []}',
                403,
                "model_not_allowed",
            ),
            ("POST", "/v1/completions", key, b'{"model": "gpt-4o"}', 400, "invalid_request"),
            (
                "POST",
                "/v1/embeddings",
                key,
                b'{"model": "gpt-4o", "input": {}}',
                400,
                "invalid_request",
            ),
        ]
        for method, path, k, body, status, code in cases:
            reply = await env.request(method, path, k, data=body)
            assert (reply.status, reply.error["code"]) == (status, code), (path, body)
            assert reply.headers["Content-Type"].startswith("application/json")
        assert (await env.request("POST", "/v1/foo", data=b"")).error[
            "message"
        ] == "Invalid URL (POST /v1/foo)"
        _, open_token = env.user_token()
        reply = await env.chat(open_token.key, "GPT-4o")
        assert reply.status == 503 and reply.error["code"] == "model_not_found"
        assert reply.error["message"] == (
            "当前分组 default 下对于模型 GPT-4o 无可用渠道 "
            "(no available channel for model GPT-4o in group default)"
        )
        assert env.upstream.requests == []
        assert env.state.logs == type(env.state.logs)()


@async_test
async def test_forwarding_keeps_body_and_model_exact() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        payload = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 5000,
            "x_vendor": 1,
        }
        assert (await env.request("POST", "/v1/chat/completions", token.key, payload)).status == 200
        assert env.upstream.requests[0]["body"] == payload
        assert env.upstream.requests[0]["path"] == "/v1/chat/completions"


@async_test
async def test_rate_limit_and_retry_after() -> None:
    async with relay_env(rate_limit="2/2s") as env:
        _, token = env.user_token()
        _, other = env.user_token(rate_limit="5/1s")
        assert [(await env.chat(token.key)).status for _ in range(2)] == [200, 200]
        refused = await env.chat(token.key)
        assert refused.status == 429 and refused.error["code"] == "rate_limit_exceeded"
        assert refused.error["message"].startswith("rate limit exceeded: 2 requests per 2 s")
        assert refused.headers["Retry-After"] == "2"
        wait_ms = int(refused.headers["retry-after-ms"])
        assert 1000 < wait_ms <= 2000
        assert refused.headers["x-ratelimit-limit-requests"] == "2"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert "x-ratelimit-reset-requests" in refused.headers
        # Refused requests do not consume the window; a retry just before is refused.
        await asyncio.sleep(wait_ms / 1000 - 0.5)
        assert (await env.chat(token.key)).status == 429
        await asyncio.sleep(0.6)
        assert (await env.chat(token.key)).status == 200
        assert [(await env.chat(other.key)).status for _ in range(5)] == [200] * 5
        assert len(env.upstream.requests) == 8
        assert sum(e.quota for e in env.state.logs if e.token_id == token.id) == 3 * 225


def test_sliding_window_limiter_exact() -> None:
    now = [100.0]
    limiter = SlidingWindowLimiter(clock=lambda: now[0])
    limit = RateLimit.parse("3/10s")
    for t in (0.0, 1.0, 2.0):
        now[0] = 100 + t
        assert limiter.check("k", limit).allowed
    now[0] = 105
    decision = limiter.check("k", limit)
    assert not decision.allowed and decision.retry_after_s == pytest.approx(5.0)
    assert decision.headers()["Retry-After"] == "5"
    now[0] = 110
    assert limiter.check("k", limit).allowed
    assert not limiter.check("k", limit).allowed
    for bad in ("3", "0/1s", "3/0s", "a/1s"):
        with pytest.raises(ValueError):
            RateLimit.parse(bad)
    assert str(RateLimit.parse("60/60s")) == "60/60s"


@async_test
async def test_cors_and_request_id() -> None:
    async with relay_env() as env:
        reply = await env.request(
            "OPTIONS",
            "/v1/chat/completions",
            headers={"Origin": "http://x", "Access-Control-Request-Method": "POST"},
        )
        assert reply.status == 204
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
        assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]
        assert "Content-Type" in reply.headers["Access-Control-Allow-Headers"]
        assert "POST" in reply.headers["Access-Control-Allow-Methods"]
        for method, path in (
            ("POST", "/v1/nothing"),
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/models"),
        ):
            reply = await env.request(method, path)
            assert reply.headers["Access-Control-Allow-Origin"] == "*"
            assert reply.headers["X-Relaygate-Request-Id"]


@async_test
async def test_models_endpoints() -> None:
    async with relay_env() as env:
        _, token = env.user_token(models=["gpt-4o", "not-routed"])
        _, everything = env.user_token()
        listing = (await env.request("GET", "/v1/models", token.key)).json()
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == ["gpt-4o"]
        assert set(listing["data"][0]) == {"id", "object", "created", "owned_by"}
        names = [
            m["id"] for m in (await env.request("GET", "/v1/models", everything.key)).json()["data"]
        ]
        assert "gpt-4o-mini" in names and "GPT-4o" not in names
        assert (await env.request("GET", "/v1/models/gpt-4o", token.key)).json()["id"] == "gpt-4o"
        missing = await env.request("GET", "/v1/models/gpt-4", token.key)
        assert missing.status == 404 and missing.error["code"] == "model_not_found"
        assert (await env.request("GET", "/v1/models")).status == 401


@async_test
async def test_retries_only_on_5xx_429_and_transport() -> None:
    async with relay_env(retry_times=1, channels=2) as env:
        _, token = env.user_token()
        env.upstream.script = [fail(500, {"error": {"message": "x", "type": "server_error"}}), ok()]
        assert (await env.chat(token.key)).status == 200
        assert len(env.upstream.requests) == 2
        env.upstream.script = [
            fail(400, {"error": {"message": "bad", "type": "invalid_request_error"}}),
            ok(),
        ]
        assert (await env.chat(token.key)).status == 400
        assert len(env.upstream.requests) == 3
        env.upstream.script = []
        env.state.channels[1].base_url = "http://127.0.0.1:9"
        env.state.channels[2].priority = -1
        assert (await env.chat(token.key)).status == 200  # channel 1 refused, channel 2 answered


@async_test
async def test_huge_and_odd_bodies_never_500() -> None:
    async with relay_env() as env:
        _, token = env.user_token()

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"x" * (256 * 1024)

        for big in (io.BytesIO(b"x" * (9 * 1024 * 1024)), chunks()):
            reply = await env.request("POST", "/v1/chat/completions", token.key, data=big)
            assert reply.status == 413 and reply.error["code"] == "request_too_large"
        assert env.upstream.requests == []
        odd = [
            b'{"model": 5, "messages": []}',
            b'{"model": "gpt-4o", "messages": [1]}',
            b'{"model": "gpt-4o", "messages": [], "stream": "yes"}',
            b'{"model": "gpt-4o", "messages": [], "stream_options": 1}',
            b'{"model": "gpt-4o", "messages": [], "max_tokens": "10"}',
            b'{"model": "gpt-4o", "messages": [{"role": 1, "content": {"x": 1}}]}',
            b"null",
            b"",
        ]
        for body in odd:
            reply = await env.request("POST", "/v1/chat/completions", token.key, data=body)
            assert 200 <= reply.status < 500, body
            assert reply.headers["Content-Type"].startswith("application/json")
