"""Every fault switch of the reference relay breaks the rule its registry entry names.

Parametrised from :data:`relaygate.reference.faults.FAULTS`: a new fault without a check here fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from reference_helpers import (
    UPSTREAM_KEY,
    Behaviour,
    Env,
    StreamScript,
    async_test,
    chunk,
    completion_body,
    fail,
    ok,
    relay_env,
    settle,
    sse_events,
    stream,
)

from relaygate.reference.billing import quota_for
from relaygate.reference.faults import FAULTS, UnknownFaultError, validate_faults
from relaygate.suite.keepalive import RawRequest, two_on_one_connection

Check = Callable[[Env], Awaitable[None]]
CHECKS: dict[str, Check] = {}
#: relay_env options a check needs besides its fault.
ENV_OPTIONS: dict[str, dict[str, Any]] = {
    "ignore_rate_limit": {"rate_limit": "1/60s"},
    "drop_retry_after": {"rate_limit": "1/60s"},
    "retry_4xx": {"retry_times": 1, "channels": 2},
    "no_body_limit": {"max_body_bytes": 1000},
}


def check(name: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn

    return register


def chunks_of(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(e) for e in sse_events(body) if e != "[DONE]"]


def sse_frames(*events: Any) -> Behaviour:
    """An upstream stream sending each event as ``data: <json>`` (``[DONE]`` as is)."""

    async def behave(request: web.Request, _body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            data = event.encode() if isinstance(event, str) else orjson.dumps(event)
            await response.write(b"data: " + data + b"\n\n")
        return response

    return behave


async def stream_and_leave(env: Env, key: str, pieces: int) -> None:
    """Start a stream, read until ``pieces`` content chunks arrived, then disconnect."""
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with env.session.post(
        env.url + "/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 200
        seen = b""
        while seen.count(b"tok") < pieces:
            seen += await resp.content.readany()
        resp.close()
    await asyncio.sleep(0.3)
    await settle(env.state)


@check("buffer_streams")
async def _buffer_streams(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = stream(StreamScript(pieces=["a", "b", "c"], gap_s=0.15))
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": True}
    start = time.monotonic()
    async with env.session.post(
        env.url + "/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"Bearer {token.key}"},
    ) as resp:
        first = await resp.content.readany()
        first_at = time.monotonic() - start
        rest = await resp.read()
    assert first_at > 0.4  # nothing arrived until the upstream had finished
    assert (first + rest).count(b"data: ") >= 5


@check("bill_failed")
async def _bill_failed(env: Env) -> None:
    user, _token = env.user_token(quota=10**6)
    env.upstream.behaviour = fail(500, {"error": {"message": "x", "type": "server_error"}})
    assert (await env.chat(_token.key, max_tokens=10)).status == 500
    assert user.quota < 10**6 and env.state.logs[-1].quota > 0


@check("fold_model_case")
async def _fold_model_case(env: Env) -> None:
    user, token = env.user_token(quota=10**6)
    assert (await env.chat(token.key, "GPT-4o")).status == 200
    assert env.upstream.requests[-1]["body"]["model"] == "gpt-4o"
    assert env.state.logs[-1].model == "gpt-4o" and user.used_quota == 225


@check("drop_done")
async def _drop_done(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = stream()
    assert "[DONE]" not in sse_events((await env.chat(token.key, stream=True)).body)


@check("html_404")
async def _html_404(env: Env) -> None:
    reply = await env.request("POST", "/v1/foo")
    assert reply.status == 404 and reply.headers["Content-Type"].startswith("text/html")


@check("wrong_quota_status")
async def _wrong_quota_status(env: Env) -> None:
    _, exhausted = env.user_token(remain_quota=0)
    _, broke = env.user_token(quota=0)
    assert (await env.chat(exhausted.key)).status == 429
    assert (await env.chat(broke.key)).status == 429


@check("forward_client_key")
async def _forward_client_key(env: Env) -> None:
    _, token = env.user_token()
    assert (await env.chat(token.key)).status == 200
    headers = env.upstream.requests[-1]["headers"]
    assert headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert headers.get("X-Api-Key") == token.key


@check("ignore_rate_limit")
async def _ignore_rate_limit(env: Env) -> None:
    _, token = env.user_token()
    assert [(await env.chat(token.key)).status for _ in range(3)] == [200, 200, 200]


@check("racy_billing")
async def _racy_billing(env: Env) -> None:
    env.upstream.behaviour = ok((10, 20), delay_s=0.02)
    _, token = env.user_token(quota=10**6, remain_quota=2250)
    replies = await asyncio.gather(*(env.chat(token.key, max_tokens=20) for _ in range(30)))
    await settle(env.state)
    charged = sum(e.quota for e in env.state.logs)
    lost_update = charged != 2250 - token.remain_quota
    assert sum(r.status == 200 for r in replies) > 10 and (lost_update or token.remain_quota < -225)


@check("fake_finish_reason")
async def _fake_finish_reason(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = stream(drop_after=1)
    events = sse_events((await env.chat(token.key, stream=True)).body)
    assert events[-1] == "[DONE]"
    assert orjson.loads(events[-2])["choices"][0]["finish_reason"] == "stop"


@check("drop_retry_after")
async def _drop_retry_after(env: Env) -> None:
    _, token = env.user_token()
    await env.chat(token.key)
    refused = await env.chat(token.key)
    assert refused.status == 429 and "Retry-After" not in refused.headers
    _, other = env.user_token(rate_limit="100/1s")
    env.upstream.behaviour = fail(
        429, {"error": {"message": "x", "type": "r"}}, {"Retry-After": "3"}
    )
    passed = await env.chat(other.key)
    assert passed.status == 429 and "Retry-After" not in passed.headers


@check("rewrite_429")
async def _rewrite_429(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = fail(
        429, {"error": {"message": "x", "type": "r"}}, {"Retry-After": "3"}
    )
    assert (await env.chat(token.key)).status == 500


@check("same_auth_message")
async def _same_auth_message(env: Env) -> None:
    _, expired = env.user_token(expires_at=int(time.time()) - 1)
    missing = await env.chat(None)
    old = await env.chat(expired.key)
    assert missing.status == old.status == 401 and missing.error == old.error


@check("ignore_expiry")
async def _ignore_expiry(env: Env) -> None:
    _, expired = env.user_token(expires_at=int(time.time()) - 1)
    assert (await env.chat(expired.key)).status == 200


@check("unknown_key_403")
async def _unknown_key_403(env: Env) -> None:
    assert (await env.chat("sk-" + "x" * 48)).status == 403


@check("forward_before_auth")
async def _forward_before_auth(env: Env) -> None:
    reply = await env.chat("sk-no-such-key")
    assert reply.status == 401 and reply.error["code"] == "invalid_api_key"
    assert len(env.upstream.requests) == 1


@check("leak_channel_key")
async def _leak_channel_key(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = fail(
        400, {"error": {"message": "bad", "type": "invalid_request_error"}}
    )
    assert UPSTREAM_KEY in (await env.chat(token.key)).body.decode()


@check("no_usage_chunk")
async def _no_usage_chunk(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = stream()
    reply = await env.chat(token.key, stream=True, stream_options={"include_usage": True})
    assert not any(c.get("usage") for c in chunks_of(reply.body))


@check("always_usage_chunk")
async def _always_usage_chunk(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = stream()
    reply = await env.chat(token.key, stream=True)
    assert any(c.get("usage") and c["choices"] == [] for c in chunks_of(reply.body))


@check("substitute_model")
async def _substitute_model(env: Env) -> None:
    _, token = env.user_token()
    await env.chat(token.key, "gpt-4o")
    assert env.upstream.requests[-1]["body"]["model"] == "gpt-4o-mini"


@check("downgrade_models")
async def _downgrade_models(env: Env) -> None:
    _, token = env.user_token()
    forwarded = {}
    for model in ("gpt-4o", "gpt-4", "gpt-4o-mini", "gpt-3.5-turbo"):
        assert (await env.chat(token.key, model)).status == 200
        forwarded[model] = env.upstream.requests[-1]["body"]["model"]
    assert forwarded == {
        "gpt-4o": "gpt-4o",
        "gpt-4": "gpt-4o-mini",
        "gpt-4o-mini": "gpt-3.5-turbo",
        "gpt-3.5-turbo": "gpt-4o-mini",
    }


@check("clamp_max_tokens")
async def _clamp_max_tokens(env: Env) -> None:
    _, token = env.user_token()
    await env.chat(token.key, max_tokens=5000)
    assert env.upstream.requests[-1]["body"]["max_tokens"] == 1024


@check("no_cors")
async def _no_cors(env: Env) -> None:
    preflight = await env.request("OPTIONS", "/v1/chat/completions")
    assert preflight.status != 204 and "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Origin" not in (await env.request("GET", "/v1/models")).headers


@check("no_body_limit")
async def _no_body_limit(env: Env) -> None:
    _, token = env.user_token()
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * 1000}]}
    assert (await env.request("POST", "/v1/chat/completions", token.key, big)).status == 200


@check("accept_query_key")
async def _accept_query_key(env: Env) -> None:
    _, token = env.user_token()
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    assert (
        await env.request("POST", f"/v1/chat/completions?key={token.key}", json=payload)
    ).status == 200


@check("retry_4xx")
async def _retry_4xx(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.script = [
        fail(400, {"error": {"message": "bad", "type": "invalid_request_error"}}),
        ok(),
    ]
    assert (await env.chat(token.key)).status == 200 and len(env.upstream.requests) == 2


@check("round_billing")
async def _round_billing(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = ok((1, 0))  # 2.5 quota: ceil 3, half-even 2
    await env.chat(token.key)
    assert env.state.logs[-1].quota == 2


@check("ignore_completion_ratio")
async def _ignore_completion_ratio(env: Env) -> None:
    _, token = env.user_token()
    await env.chat(token.key)  # usage 10/20 on gpt-4o: 225 correctly, 75 without the ratio
    assert env.state.logs[-1].quota == 75


@check("ignore_group_ratio")
async def _ignore_group_ratio(env: Env) -> None:
    env.state.update_ratios({"group_ratio": {"vip": "2"}})
    _, token = env.user_token(group="vip")
    await env.chat(token.key)  # usage 10/20 on gpt-4o: 450 in a ×2 group, 225 without it
    assert env.state.logs[-1].quota == 225


@check("bearer_case_sensitive")
async def _bearer_case_sensitive(env: Env) -> None:
    _, token = env.user_token()
    assert (await env.chat(token.key)).status == 200  # "Bearer" still works
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    lower = await env.request(
        "POST",
        "/v1/chat/completions",
        json=payload,
        headers={"Authorization": f"bearer {token.key}"},
    )
    assert lower.status == 401 and lower.error["code"] == "malformed_api_key"


@check("same_quota_message")
async def _same_quota_message(env: Env) -> None:
    _, exhausted = env.user_token(remain_quota=0)
    _, broke = env.user_token(quota=0)
    token_refusal, user_refusal = await env.chat(exhausted.key), await env.chat(broke.key)
    assert token_refusal.status == user_refusal.status == 403
    assert token_refusal.error == user_refusal.error
    assert token_refusal.error["code"] == "insufficient_quota"


@check("list_all_models")
async def _list_all_models(env: Env) -> None:
    _, token = env.user_token(models=["gpt-4o"])
    listing = await env.request("GET", "/v1/models", token.key)
    ids = {m["id"] for m in listing.json()["data"]}
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4-32k"} <= ids
    assert (await env.chat(token.key, "gpt-4o-mini")).status == 403  # still enforced
    assert (await env.request("GET", "/v1/models/gpt-4-32k", token.key)).status == 404


@check("ignore_allow_list")
async def _ignore_allow_list(env: Env) -> None:
    _, token = env.user_token(models=["gpt-4o"])
    assert (await env.chat(token.key, "gpt-4o-mini")).status == 200
    assert env.upstream.requests[-1]["body"]["model"] == "gpt-4o-mini"
    ids = [m["id"] for m in (await env.request("GET", "/v1/models", token.key)).json()["data"]]
    assert ids == ["gpt-4o"]  # the listing still honours it


@check("unknown_model_200")
async def _unknown_model_200(env: Env) -> None:
    _, token = env.user_token()
    reply = await env.request("GET", "/v1/models/no-such-model", token.key)
    assert reply.status == 200 and reply.error["code"] == "model_not_found"


@check("crash_on_bad_json")
async def _crash_on_bad_json(env: Env) -> None:
    _, token = env.user_token()
    reply = await env.request(
        "POST",
        "/v1/chat/completions",
        token.key,
        data=b'{"model": "gpt-4o", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 500 and reply.error["code"] == "internal_error"
    assert not env.upstream.requests


@check("missing_model_503")
async def _missing_model_503(env: Env) -> None:
    _, token = env.user_token()
    payload = {"messages": [{"role": "user", "content": "x"}]}
    reply = await env.request("POST", "/v1/chat/completions", token.key, payload)
    assert reply.status == 503 and reply.error["code"] == "model_not_found"
    assert not env.upstream.requests


@check("html_405")
async def _html_405(env: Env) -> None:
    reply = await env.request("GET", "/v1/chat/completions")
    assert reply.status == 405 and reply.headers["Content-Type"].startswith("text/html")
    assert "POST" in reply.headers["Allow"]
    unknown = await env.request("POST", "/v1/foo")  # 404s stay JSON
    assert unknown.status == 404 and unknown.headers["Content-Type"].startswith("application/json")


def _is_html(reply: Any) -> bool:
    return str(reply.headers.get("Content-Type", "")).startswith("text/html")


@check("html_404_outside_v1")
async def _html_404_outside_v1(env: Env) -> None:
    outside = await env.request("GET", "/relaygate-nothing")
    assert outside.status == 404 and _is_html(outside)
    inside = await env.request("GET", "/v1/foo")
    assert inside.status == 404 and not _is_html(inside)


@check("html_404_non_post")
async def _html_404_non_post(env: Env) -> None:
    for method in ("GET", "PUT", "DELETE"):
        reply = await env.request(method, "/v1/foo")
        assert reply.status == 404 and _is_html(reply), method
    posted = await env.request("POST", "/v1/foo")
    assert posted.status == 404 and not _is_html(posted)


@check("html_405_non_get")
async def _html_405_non_get(env: Env) -> None:
    reply = await env.request("PUT", "/v1/chat/completions")
    assert reply.status == 405 and _is_html(reply)
    got = await env.request("GET", "/v1/chat/completions")
    assert got.status == 405 and not _is_html(got)


@check("reset_after_error")
async def _reset_after_error(env: Env) -> None:
    _, token = env.user_token()
    auth = {"Authorization": f"Bearer {token.key}"}
    bad_key = RawRequest("POST", "/v1/chat/completions", {"Authorization": "Bearer sk-nope"}, b"{}")
    pair = await asyncio.to_thread(
        two_on_one_connection,
        env.url,
        bad_key,
        RawRequest("GET", "/v1/models", auth),
        timeout_s=5.0,
        max_bytes=1 << 20,
    )
    assert pair.first.status == 401
    assert "close" not in pair.first.headers.get("Connection", "").lower()
    assert not pair.close_announced and pair.dropped is not None
    served = await asyncio.to_thread(
        two_on_one_connection,
        env.url,
        RawRequest("GET", "/v1/models", auth),
        RawRequest("GET", "/v1/models", auth),
        timeout_s=5.0,
        max_bytes=1 << 20,
    )
    assert served.second is not None and served.second.status == 200  # only errors


@check("list_model_patterns")
async def _list_model_patterns(env: Env) -> None:
    _, token = env.user_token()
    listing = await env.request("GET", "/v1/models", token.key)
    ids = [m["id"] for m in listing.json()["data"]]
    assert "gpt-4*" in ids and "gpt-4o" in ids
    assert (await env.chat(token.key, "gpt-4*")).status == 503


@check("passthrough_html_errors")
async def _passthrough_html_errors(env: Env) -> None:
    _, token = env.user_token()
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    env.upstream.behaviour = fail(502, page, content_type="text/html")
    reply = await env.chat(token.key)
    assert reply.status == 502 and reply.headers["Content-Type"].startswith("text/html")
    assert reply.body == page


@check("pass_200_error")
async def _pass_200_error(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = fail(200, {"error": {"message": "overloaded", "type": "server_error"}})
    reply = await env.chat(token.key)
    assert reply.status == 200 and reply.error["message"] == "overloaded"
    await settle(env.state)
    assert env.state.logs[-1].quota == 0  # still not billed


@check("extra_response_fields")
async def _extra_response_fields(env: Env) -> None:
    _, token = env.user_token()
    reply = (await env.chat(token.key)).json()
    assert "relay_request_id" in reply and "relay_cost_usd" in reply["usage"]
    assert "relay_channel" in reply["choices"][0] and "relay_note" in reply["choices"][0]["message"]
    env.upstream.behaviour = sse_frames(chunk("hi"), chunk(None, "stop"), "[DONE]")
    streamed = chunks_of((await env.chat(token.key, stream=True)).body)
    assert all("relay_note" in c["choices"][0]["delta"] for c in streamed)


@check("none_strings")
async def _none_strings(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = ok(content=None)  # type: ignore[arg-type]
    reply = (await env.chat(token.key)).json()
    assert reply["choices"][0]["message"]["content"] == "None"
    env.upstream.behaviour = sse_frames(chunk("hi"), chunk(None, "stop"), "[DONE]")
    streamed = chunks_of((await env.chat(token.key, stream=True)).body)
    assert streamed[0]["choices"][0]["finish_reason"] == "None"


@check("prefix_upstream_errors")
async def _prefix_upstream_errors(env: Env) -> None:
    _, token = env.user_token()
    error = {"message": "bad value", "type": "invalid_request_error", "param": "n", "code": "x"}
    env.upstream.behaviour = fail(400, {"error": error})
    reply = await env.chat(token.key)
    assert reply.status == 400 and reply.error["type"] == "invalid_request_error"
    assert reply.error["message"] == "upstream: bad value"


@check("limiter_429_for_upstream")
async def _limiter_429_for_upstream(env: Env) -> None:
    _, token = env.user_token()
    error = {"message": "Rate limit reached for gpt-4o", "type": "tokens", "code": "rate_limit"}
    env.upstream.behaviour = fail(429, {"error": error}, {"Retry-After": "3"})
    reply = await env.chat(token.key)
    assert reply.status == 429 and reply.headers["Retry-After"] == "3"
    assert reply.error["type"] == "relay_error" and reply.error["code"] == "rate_limit_exceeded"


@check("normalize_finish_reason")
async def _normalize_finish_reason(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = sse_frames(chunk("a"), chunk(None, "length"), "[DONE]")
    streamed = chunks_of((await env.chat(token.key, stream=True)).body)
    assert [c["choices"][0]["finish_reason"] for c in streamed] == [None, "stop"]
    body = completion_body()
    body["choices"][0]["finish_reason"] = "content_filter"
    env.upstream.behaviour = fail(200, body)
    answer = (await env.chat(token.key)).json()
    assert answer["choices"][0]["finish_reason"] == "stop"


@check("drop_finish_reason")
async def _drop_finish_reason(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = sse_frames(chunk("a"), chunk(None, "stop"), "[DONE]")
    streamed = chunks_of((await env.chat(token.key, stream=True)).body)
    assert [c["choices"][0]["finish_reason"] for c in streamed] == [None, None]
    env.upstream.behaviour = ok()
    answer = (await env.chat(token.key)).json()
    assert answer["choices"][0]["finish_reason"] is None


@check("sse_keepalive_comments")
async def _sse_keepalive_comments(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = sse_frames(chunk("a"), chunk(None, "stop"), "[DONE]")
    body = (await env.chat(token.key, stream=True)).body
    assert body.count(b": keep-alive\n\n") == 3  # one before each event, [DONE] included
    # the events themselves are unchanged
    plain = body.replace(b": keep-alive\n\n", b"")
    assert [c["choices"][0]["finish_reason"] for c in chunks_of(plain)] == [None, "stop"]


@check("mask_upstream_5xx")
async def _mask_upstream_5xx(env: Env) -> None:
    _, token = env.user_token()
    for status in (500, 503):
        env.upstream.behaviour = fail(status, {"error": {"message": "busy", "type": "server"}})
        reply = await env.chat(token.key)
        assert reply.status == 502 and reply.error["message"] != "busy"


@check("passthrough_upstream_auth")
async def _passthrough_upstream_auth(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = fail(
        401, {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}
    )
    reply = await env.chat(token.key)
    assert reply.status == 401 and reply.error["code"] == "invalid_api_key"
    assert UPSTREAM_KEY not in reply.body.decode()


@check("drop_tool_calls")
async def _drop_tool_calls(env: Env) -> None:
    _, token = env.user_token()
    call = {"index": 0, "id": "call_1", "type": "function"}
    call["function"] = {"name": "f", "arguments": "{}"}
    tool_delta = chunk()
    tool_delta["choices"][0]["delta"] = {"role": "assistant", "tool_calls": [call]}
    env.upstream.behaviour = sse_frames(tool_delta, chunk(None, "tool_calls"), "[DONE]")
    streamed = chunks_of((await env.chat(token.key, stream=True)).body)
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in streamed)
    assert streamed[-1]["choices"][0]["finish_reason"] == "tool_calls"


@check("strict_data_prefix")
async def _strict_data_prefix(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = stream(crlf=True)  # "data: " with CRLF framing still works
    spaced = sse_events((await env.chat(token.key, stream=True)).body)
    assert spaced[-1] == "[DONE]" and len(spaced) == 6
    env.upstream.behaviour = stream(nospace=True)  # every "data:{…}" line is lost
    body = (await env.chat(token.key, stream=True)).body
    assert "[DONE]" not in sse_events(body)
    assert [c["error"]["code"] for c in chunks_of(body)] == ["upstream_disconnected"]


@check("bill_estimate_on_disconnect")
async def _bill_estimate_on_disconnect(env: Env) -> None:
    user, token = env.user_token(quota=10**6)
    env.upstream.behaviour = stream(StreamScript(pieces=["tok"] * 50, gap_s=0.05, usage=(10, 50)))
    await stream_and_leave(env, token.key, 3)
    entry = env.state.logs[-1]
    # prompt + the default 500 completion tokens, priced for gpt-4o: above the full 50-token bill.
    assert entry.quota > 2.5 * (10 + 50 * 4) and user.used_quota == entry.quota
    assert user.reserved_quota == token.reserved_quota == 0


@check("billing_usage_in_usd")
async def _billing_usage_in_usd(env: Env) -> None:
    _, token = env.user_token()
    await env.chat(token.key)  # 225 quota
    usage = (await env.request("GET", "/v1/dashboard/billing/usage", token.key)).json()
    assert usage["total_usage"] == 225 / 500_000


@check("html_content_type")
async def _html_content_type(env: Env) -> None:
    _, token = env.user_token()
    reply = await env.chat(token.key)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
    assert reply.json()["choices"][0]["message"]["content"] == "hello"
    refused = await env.chat(None)
    assert refused.headers["Content-Type"].startswith("application/json")


@check("public_log_stream")
async def _public_log_stream(env: Env) -> None:
    _, token = env.user_token()
    async with env.session.get(env.url + "/log/stream") as feed:  # no credentials
        assert feed.status == 200 and feed.content_type == "text/event-stream"
        assert (await feed.content.readuntil(b"\n\n")).startswith(b"event: connected")
        assert (await env.chat(token.key)).status == 200
        frame = b""
        while not frame.startswith(b"event: log"):  # skip keep-alive comments
            frame = await asyncio.wait_for(feed.content.readuntil(b"\n\n"), 2)
    event = orjson.loads(frame.split(b"data: ", 1)[1])
    assert event["path"] == "/v1/chat/completions"
    assert event["headers"]["Authorization"] == f"Bearer {token.key}"


# --- fraud a customer with only a key can see (issue #12) ---------------------------------------


def echo_model(usage: tuple[int, int] = (10, 20)) -> Behaviour:
    """A non-stream answer naming the model the relay forwarded, as real upstreams do."""

    async def behave(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({**completion_body(usage=usage), "model": body["model"]})

    return behave


@check("inflate_usage")
async def _inflate_usage(env: Env) -> None:
    user, token = env.user_token()
    reply = (await env.chat(token.key)).json()  # upstream: 10 + 20
    assert reply["usage"] == {"prompt_tokens": 18, "completion_tokens": 29, "total_tokens": 47}
    assert user.used_quota == quota_for(18, 29, 1, "2.5", 4)
    env.upstream.behaviour = stream(usage=(10, 3))
    streamed = await env.chat(token.key, stream=True, stream_options={"include_usage": True})
    usage = [c["usage"] for c in chunks_of(streamed.body) if c.get("usage")]
    assert usage == [{"prompt_tokens": 18, "completion_tokens": 10, "total_tokens": 28}]
    await settle(env.state)
    assert env.state.logs[-1].quota == quota_for(18, 10, 1, "2.5", 4)


@check("inject_system_prompt")
async def _inject_system_prompt(env: Env) -> None:
    _, token = env.user_token()
    reply = await env.chat(token.key)
    assert reply.status == 200 and reply.json()["usage"]["prompt_tokens"] == 10
    forwarded = env.upstream.requests[-1]["body"]["messages"]
    assert forwarded[0]["role"] == "system" and forwarded[1:] == [{"role": "user", "content": "hi"}]


@check("truncate_history")
async def _truncate_history(env: Env) -> None:
    _, token = env.user_token()
    conversation = [
        {"role": "system", "content": "Code RG-AAAA-0001."},
        {"role": "user", "content": "Remember RG-BBBB-0002."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Reply with the codes you see."},
    ]
    payload = {"model": "gpt-4o", "messages": conversation}
    assert (await env.request("POST", "/v1/chat/completions", token.key, payload)).status == 200
    assert env.upstream.requests[-1]["body"]["messages"] == conversation[-1:]
    await env.request("POST", "/v1/chat/completions", token.key, {**payload, "messages": [
        conversation[0], conversation[-1]]})  # fmt: skip
    assert env.upstream.requests[-1]["body"]["messages"] == [conversation[0], conversation[-1]]


@check("swap_model_family")
async def _swap_model_family(env: Env) -> None:
    user, token = env.user_token()
    env.upstream.behaviour = echo_model()
    for model in ("gpt-4o", "gpt-4o-mini"):
        reply = await env.chat(token.key, model)
        assert env.upstream.requests[-1]["body"]["model"] == "gpt-3.5-turbo"
        assert reply.json()["model"] == model
    assert user.used_quota == quota_for(10, 20, 1, "2.5", 4) + quota_for(10, 20, 1, "0.075", 4)
    assert (await env.chat(token.key, "gpt-4")).json()["model"] == "gpt-4"


@check("double_bill")
async def _double_bill(env: Env) -> None:
    user, token = env.user_token()
    await env.chat(token.key)
    assert user.used_quota == token.used_quota == 2 * 225


@check("hidden_fee")
async def _hidden_fee(env: Env) -> None:
    user, token = env.user_token()
    await env.chat(token.key)
    assert user.used_quota == 225 + 500
    env.upstream.behaviour = fail(500, {"error": {"message": "x", "type": "server_error"}})
    assert (await env.chat(token.key)).status == 500
    assert token.used_quota == 225 + 1000


@check("bill_refused")
async def _bill_refused(env: Env) -> None:
    user, token = env.user_token()
    assert (await env.chat(token.key, "GPT-4O")).status == 503
    assert user.used_quota == token.used_quota > 0
    assert env.state.logs[-1].quota == user.used_quota
    before = user.used_quota
    env.upstream.behaviour = fail(
        400, {"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}
    )
    assert (await env.chat(token.key, max_tokens=10**6)).status == 400
    assert user.used_quota > before


#: parameter-dropping fault -> (a request field it must drop, the value the client sent).
DROPPED = {
    "drop_stop": ("stop", ["\n\n"]),
    "drop_n": ("n", 3),
    "drop_response_format": ("response_format", {"type": "json_object"}),
    "drop_logprobs": ("top_logprobs", 2),
    "drop_tools": ("tool_choice", "auto"),
}


def _dropped_check(fault: str, field: str, value: Any) -> Check:
    async def run(env: Env) -> None:
        _, token = env.user_token()
        fields = {field: value}
        if fault == "drop_logprobs":
            fields["logprobs"] = True
        if fault == "drop_tools":
            function = {"name": "lookup", "parameters": {"type": "object", "properties": {}}}
            fields["tools"] = [{"type": "function", "function": function}]
        assert (await env.chat(token.key, temperature=0.5, **fields)).status == 200
        forwarded = env.upstream.requests[-1]["body"]
        assert not set(fields) & set(forwarded), forwarded
        assert forwarded["temperature"] == 0.5  # the rest goes through

    return run


for _fault, (_field, _value) in DROPPED.items():
    check(_fault)(_dropped_check(_fault, _field, _value))


@check("drop_temperature")
async def _drop_temperature(env: Env) -> None:
    _, token = env.user_token()
    await env.chat(token.key, temperature=0, stop="x")
    assert env.upstream.requests[-1]["body"]["temperature"] == 1.0
    assert env.upstream.requests[-1]["body"]["stop"] == "x"


@check("rewrite_model_field")
async def _rewrite_model_field(env: Env) -> None:
    _, token = env.user_token()
    env.upstream.behaviour = echo_model()
    for model in ("gpt-4o", "gpt-3.5-turbo"):
        reply = (await env.chat(token.key, model)).json()
        assert env.upstream.requests[-1]["body"]["model"] == model
        assert not reply["model"].startswith(model), reply["model"]
    env.upstream.behaviour = sse_frames(
        {**chunk("hi"), "model": "gpt-4o"}, {**chunk(None, "stop"), "model": "gpt-4o"}, "[DONE]"
    )
    streamed = await env.chat(token.key, stream=True)
    assert {c["model"] for c in chunks_of(streamed.body)} == {"gpt-3.5-turbo-0125"}


@pytest.mark.parametrize("name", sorted(FAULTS))
@async_test
async def test_fault_breaks_its_rule(name: str) -> None:
    assert name in CHECKS, f"fault {name!r} has no check in {__name__}"
    async with relay_env(faults=[name], **ENV_OPTIONS.get(name, {})) as env:
        await CHECKS[name](env)


def test_checks_match_registry_and_unknown_faults_are_refused() -> None:
    assert set(CHECKS) == set(FAULTS)
    with pytest.raises(UnknownFaultError, match="no_such"):
        validate_faults(["drop_done", "no_such"])


@pytest.mark.parametrize("name", sorted(FAULTS))
@async_test
async def test_check_fails_against_the_correct_relay(name: str) -> None:
    """Each check detects its fault: without the fault, the same check must fail."""
    async with relay_env(**ENV_OPTIONS.get(name, {})) as env:
        with pytest.raises(AssertionError):
            await CHECKS[name](env)
