"""Reference relay: how upstream errors reach the client (F5, F7, F18, F22)."""

from __future__ import annotations

from reference_helpers import UPSTREAM_KEY, async_test, fail, relay_env

CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 128000 tokens.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "context_length_exceeded",
    }
}


@async_test
async def test_upstream_400_passes_through_intact() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        env.upstream.behaviour = fail(400, CONTEXT_ERROR)
        reply = await env.chat(token.key, max_tokens=10**6)
        assert reply.status == 400 and reply.json() == CONTEXT_ERROR
        assert env.upstream.requests[0]["body"]["max_tokens"] == 10**6


@async_test
async def test_upstream_429_keeps_its_headers() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        headers = {
            "Retry-After": "7",
            "retry-after-ms": "6500",
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "X-Other": "dropped",
        }
        body = {
            "error": {
                "message": "slow down",
                "type": "rate_limit_error",
                "code": "rate_limit_exceeded",
            }
        }
        env.upstream.behaviour = fail(429, body, headers)
        reply = await env.chat(token.key)
        assert reply.status == 429 and reply.json() == body
        assert reply.headers["Retry-After"] == "7" and reply.headers["retry-after-ms"] == "6500"
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert "X-Other" not in reply.headers


@async_test
async def test_non_json_upstream_error_becomes_json() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        env.upstream.behaviour = fail(
            500, b"<html><body>Bad gateway</body></html>", content_type="text/html"
        )
        reply = await env.chat(token.key)
        assert reply.status == 500 and reply.headers["Content-Type"].startswith("application/json")
        assert reply.json() == {
            "error": {
                "message": "upstream returned HTTP 500 with a non-JSON body",
                "type": "upstream_error",
                "param": None,
                "code": "bad_response_status_code",
            }
        }


@async_test
async def test_channel_key_refused_is_502_not_401() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        for status in (401, 403):
            env.upstream.behaviour = fail(
                status,
                {"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}", "type": "x"}},
            )
            reply = await env.chat(token.key)
            assert reply.status == 502 and reply.error["code"] == "upstream_auth_failed"
            assert UPSTREAM_KEY not in reply.body.decode()


@async_test
async def test_channel_key_never_echoed_back() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        env.upstream.behaviour = fail(
            400, {"error": {"message": f"key {UPSTREAM_KEY} bad", "type": "x"}}
        )
        reply = await env.chat(token.key)
        assert reply.status == 400 and UPSTREAM_KEY not in reply.body.decode()


@async_test
async def test_200_with_error_body_is_502() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        error = {
            "error": {"message": "quota", "type": "insufficient_quota", "param": None, "code": "q"}
        }
        env.upstream.behaviour = fail(200, error)
        reply = await env.chat(token.key)
        assert reply.status == 502 and reply.json() == error
        env.upstream.behaviour = fail(200, b"not json", content_type="text/plain")
        reply = await env.chat(token.key)
        assert reply.status == 502 and reply.error["code"] == "bad_response_body"
        assert all(e.quota == 0 for e in env.state.logs)
