"""Reference relay hot path: pooled upstream connections, unparsed forwarding of plain reads
with exact counting, and the bounds on every upstream answer (total deadline, byte cap)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.test_utils import TestServer
from reference_helpers import (
    ADMIN_TOKEN,
    MODELS,
    Behaviour,
    async_test,
    chunk,
    fail,
    ok,
    relay_env,
    settle,
    sse_events,
    stream,
)

from relaygate.mock.app import create_app as create_mock_app
from relaygate.mock.config import DEFAULT_KEY, MockConfig
from relaygate.reference import proxy
from relaygate.reference.app import build_state, create_app
from relaygate.reference.billing import quota_for
from relaygate.reference.config import RelayConfig
from relaygate.reference.faults import FAULTS
from relaygate.reference.proxy import Outcome
from relaygate.sse import SSEEvent
from relaygate.tokens import count_text


def frames(*pieces: str) -> bytes:
    return b"".join(b"data: " + orjson.dumps(chunk(p)) + b"\n\n" for p in pieces)


def recording_peer(behaviour: Behaviour, ports: list[int], end_after_s: float = 0) -> Behaviour:
    """``behaviour``, noting the relay's local port of each upstream request; its end of body
    (the chunked terminator) ``end_after_s`` after the rest, as a busy upstream sends it."""

    async def behave(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        assert request.transport is not None
        ports.append(request.transport.get_extra_info("peername")[1])
        response = await behaviour(request, body)
        await asyncio.sleep(end_after_s)
        return response

    return behave


@async_test
async def test_sequential_streams_reuse_one_upstream_connection() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        ports: list[int] = []
        plain = stream(usage_null=False, gap_s=0.01)
        env.upstream.behaviour = recording_peer(plain, ports, end_after_s=0.05)
        for _ in range(4):
            reply = await env.chat(token.key, stream=True)
            assert reply.status == 200 and sse_events(reply.body)[-1] == "[DONE]"
        env.upstream.behaviour = recording_peer(ok(), ports)
        assert (await env.chat(token.key)).status == 200
        assert len(ports) == 5 and len(set(ports)) == 1, f"upstream connections: {ports}"


@async_test
async def test_streams_to_the_mock_reuse_pooled_upstream_connections() -> None:
    """Against relaygate's own mock (not the fake upstream): sequential answers of every kind
    share one upstream connection, and waves of concurrent streams reuse the first wave's."""
    ports: list[int] = []

    @web.middleware
    async def note_port(request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        ports.append(request.transport.get_extra_info("peername")[1])
        response: web.StreamResponse = await handler(request)
        return response

    mock_app = create_mock_app(MockConfig())
    mock_app.middlewares.insert(0, note_port)
    mock = TestServer(mock_app, host="127.0.0.1")
    await mock.start_server()
    state = build_state(RelayConfig(admin_token=ADMIN_TOKEN))
    state.create_channel(
        {
            "name": "mock",
            "base_url": str(mock.make_url("/v1")),
            "key": DEFAULT_KEY,
            "models": MODELS,
        }
    )
    relay = TestServer(create_app(RelayConfig(admin_token=ADMIN_TOKEN), state), host="127.0.0.1")
    await relay.start_server()
    user = state.create_user({"username": "u1", "quota": 10**9})
    key = state.create_token({"user_id": user.id, "remain_quota": 10**9}).key
    url = str(relay.make_url("/v1/chat/completions"))
    headers = {"Authorization": f"Bearer {key}"}

    async def chat(client: aiohttp.ClientSession, **fields: Any) -> bytes:
        messages = [{"role": "user", "content": "hi"}]
        payload = {"model": "gpt-4o", "messages": messages, "max_tokens": 16, **fields}
        async with client.post(url, json=payload, headers=headers) as resp:
            assert resp.status == 200
            return await resp.read()

    try:
        # One connection per client request, so the relay's pool alone decides the reuse.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as client:
            for options in ({}, {"include_usage": True}, {"include_usage": False}):
                body = await chat(client, stream=True, stream_options=options)
                assert body.endswith(b"data: [DONE]\n\n")
            await chat(client)
            assert len(ports) == 4 and len(set(ports)) == 1, f"upstream connections: {ports}"
            ports.clear()
            for _ in range(3):
                bodies = await asyncio.gather(*(chat(client, stream=True) for _ in range(8)))
                assert all(b.endswith(b"data: [DONE]\n\n") for b in bodies)
            assert len(ports) == 24 and len(set(ports)) <= 8, f"upstream connections: {ports}"
        await settle(state)
    finally:
        await relay.close()
        await mock.close()


@pytest.mark.parametrize(
    ("usage_null", "include_usage", "parsed_events"),
    [
        # The role chunk (the first read), the finish chunk and [DONE]: the content chunks
        # are forwarded unparsed, the last one too (its read also holds the finish chunk).
        (False, True, 3),
        (True, True, 3),  # "usage":null in every chunk, kept as it is for a client that asked
        (False, False, 3),
        (True, False, 3 + 7),  # "usage":null stripped for a client that did not ask: parsed
    ],
)
@async_test
async def test_plain_reads_are_forwarded_verbatim_and_counted_exactly(
    usage_null: bool, include_usage: bool, parsed_events: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces = ("Hel", "lo", " wor", "ld", " 你好", '"quoted" \\ "usage"', "!")
    parsed: list[str] = []
    on_event = proxy._StreamRelay.on_event

    def counting(self: proxy._StreamRelay, event: SSEEvent) -> str | None:
        parsed.append(event.data)
        return on_event(self, event)

    monkeypatch.setattr(proxy._StreamRelay, "on_event", counting)
    async with relay_env() as env:
        _, token = env.user_token()
        env.upstream.behaviour = stream(
            pieces=pieces, usage=None, usage_null=usage_null, gap_s=0.01
        )
        options = {"include_usage": include_usage}
        reply = await env.chat(token.key, stream=True, stream_options=options)
        events = sse_events(reply.body)
        extra = {"usage": None} if usage_null and include_usage else {}
        sent = [orjson.dumps(chunk(p, **extra)).decode() for p in pieces]
        assert events[1 : 1 + len(pieces)] == sent  # byte for byte as the upstream sent them
        assert len(parsed) == parsed_events, parsed
        completion = count_text("".join(pieces), "gpt-4o")
        if include_usage:
            assert orjson.loads(events[-2])["usage"]["completion_tokens"] == completion
        log = env.state.logs[-1]
        assert log.completion_tokens == completion
        assert log.quota == quota_for(log.prompt_tokens, completion, 1, "2.5", 4)


def test_unparsed_reads_keep_their_place_among_parsed_text() -> None:
    outcome = Outcome()
    outcome.note_unparsed(frames("a", "b"))
    outcome.text_parts.append("c")  # what on_event notes of a parsed chunk
    outcome.note_unparsed(frames("d"))
    outcome.note_unparsed(b'data: {"not": "choices"}\n\ndata: [1]\n\n')
    assert outcome.completion_text() == "abcd"


def test_unparsed_reads_are_parsed_once_they_add_up() -> None:
    outcome = Outcome()
    read = frames(*["x" * 100] * 100)
    for _ in range(100):
        outcome.note_unparsed(read)
        assert outcome.unparsed_bytes <= 256 * 1024
    assert outcome.completion_text() == "x" * 100 * 100 * 100


@async_test
async def test_stream_past_the_byte_cap_is_cut_and_billed_as_partial() -> None:
    async with relay_env() as env:
        _, token = env.user_token()
        env.state.settings.upstream_max_bytes = 2000
        env.upstream.behaviour = stream(pieces=["word "] * 200, usage_null=False, gap_s=0.001)
        reply = await env.chat(token.key, stream=True, max_tokens=1000)
        events = sse_events(reply.body)
        assert "[DONE]" not in events
        error = orjson.loads(events[-1])["error"]
        assert error["code"] == "upstream_too_large" and "2000 bytes" in error["message"]
        log = env.state.logs[-1]
        assert 0 < log.completion_tokens < 200
        assert log.quota <= quota_for(log.prompt_tokens, 1000, 1, "2.5", 4)


@async_test
async def test_answer_past_the_byte_cap_is_502_and_not_billed() -> None:
    async with relay_env() as env:
        user, token = env.user_token()
        env.state.settings.upstream_max_bytes = 1000
        for behaviour in (ok(content="x" * 5000), fail(500, b"<html>" + b"x" * 5000)):
            env.upstream.behaviour = behaviour
            reply = await env.chat(token.key)
            assert reply.status == 502, reply.body
            assert reply.json()["error"]["code"] == "upstream_too_large"
            assert env.state.logs[-1].quota == 0
        assert token.used_quota == 0 and user.used_quota == 0


def trickle(total_s: float, stream_events: bool) -> Behaviour:
    """An answer that keeps sending a byte every 50 ms for ``total_s``."""

    async def behave(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        content_type = "text/event-stream" if stream_events else "application/json"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        if stream_events:
            await response.write(frames("start"))
        ends = time.monotonic() + total_s
        while time.monotonic() < ends:
            await asyncio.sleep(0.05)
            await response.write(b": tick\n\n" if stream_events else b" ")
        return response

    return behave


@async_test
async def test_upstream_answer_that_never_finishes_is_cut_at_the_deadline() -> None:
    async with relay_env(upstream_timeout_s=5.0) as env:
        _, token = env.user_token()
        env.state.settings.upstream_deadline_s = 0.5
        env.upstream.behaviour = trickle(3.0, stream_events=True)
        began = time.monotonic()
        reply = await env.chat(token.key, stream=True)
        assert time.monotonic() - began < 2.0
        error = orjson.loads(sse_events(reply.body)[-1])["error"]
        assert error["code"] == "upstream_timeout"
        assert "did not finish within 0.5 s" in error["message"]
        env.upstream.behaviour = trickle(3.0, stream_events=False)
        began = time.monotonic()
        reply = await env.chat(token.key)
        assert time.monotonic() - began < 2.0
        assert reply.status == 504, reply.body
        assert "did not finish within 0.5 s" in reply.json()["error"]["message"]


@async_test
async def test_upstream_silence_mid_stream_is_bounded_per_gap() -> None:
    """--upstream-timeout bounds each silence of a stream (the relay's own timer, not
    aiohttp's sock_read), not its length; a reused connection keeps the bound on its next
    answer's headers."""
    async with relay_env(upstream_timeout_s=0.3) as env:
        _, token = env.user_token()
        ports: list[int] = []
        env.upstream.behaviour = recording_peer(
            stream(pieces=("a", "b", "c", "d"), gap_s=0.15, usage_null=False), ports
        )
        reply = await env.chat(token.key, stream=True)  # 0.6 s long, no gap over 0.3 s
        assert sse_events(reply.body)[-1] == "[DONE]"
        env.upstream.behaviour = recording_peer(ok(delay_s=1.0), ports)
        began = time.monotonic()
        reply = await env.chat(token.key)
        assert reply.status == 504 and reply.error["code"] == "upstream_timeout"
        assert time.monotonic() - began < 0.9
        assert len(set(ports)) == 1, f"not the same connection: {ports}"
        env.upstream.behaviour = stream(pieces=("a", "b"), gap_s=1.0, usage_null=False)
        began = time.monotonic()
        reply = await env.chat(token.key, stream=True)
        took = time.monotonic() - began
        events = sse_events(reply.body)
        assert "[DONE]" not in events and 0.25 < took < 0.9, (took, events)
        error = orjson.loads(events[-1])["error"]
        assert error["code"] == "upstream_timeout"
        assert "sent nothing for 0.3 s" in error["message"]
        await settle(env.state)
        assert env.state.logs[-1].status == 200 and env.state.logs[-1].completion_tokens == 0


@async_test
async def test_no_timer_is_armed_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's sock_read re-arms a timer on every read; a stream's silence bound does not."""
    armed: list[float] = []
    reschedule = ResponseHandler._reschedule_timeout

    def counting(self: ResponseHandler) -> None:
        if self.read_timeout:
            armed.append(self.read_timeout)
        reschedule(self)

    monkeypatch.setattr(ResponseHandler, "_reschedule_timeout", counting)
    async with relay_env() as env:
        _, token = env.user_token()
        env.upstream.behaviour = stream(pieces=["w"] * 40, gap_s=0.002, usage_null=False)
        reply = await env.chat(token.key, stream=True)
        assert len(sse_events(reply.body)) == 1 + 40 + 1 + 1  # role, words, finish, [DONE]
        assert len(armed) <= 3, f"{len(armed)} timers armed for 43 events"


@async_test
async def test_bounds_are_settings() -> None:
    async with relay_env() as env:
        current = (await env.admin("GET", "/settings")).json()
        assert current["upstream_deadline_s"] == 900.0
        assert current["upstream_max_bytes"] == 64 * 1024 * 1024
        changed = {"upstream_deadline_s": 30, "upstream_max_bytes": 4096}
        assert (await env.admin("PUT", "/settings", changed)).status == 200
        assert env.state.settings.upstream_deadline_s == 30.0
        assert env.state.settings.upstream_max_bytes == 4096
        for bad in ({"upstream_deadline_s": 0}, {"upstream_max_bytes": 0}):
            reply = await env.admin("PUT", "/settings", bad)
            assert reply.status == 400 and next(iter(bad)) in reply.body.decode()


def test_plain_prefix_stops_at_the_first_frame_that_needs_parsing() -> None:
    plain = frames("a", "b")
    for tail, kept in (
        (b'data: {"choices":[{"finish_reason":"stop"}]}\n\n', True),
        (b'data: {"usage":{"prompt_tokens":1}}\n\n', True),
        (b'data: {"x":1,"usage":null}\n\n', False),  # the client did not ask: stripped
        (b'data: {"x":1,"usage": null}\n\n', True),
        (b'data: {"error":{"message":"boom"}}\n\n', True),
        (b"data: [DONE]\n\n", True),
        (b'data:{"x":1}\n\n', True),
        (b'data: {"x":1}\r\n\r\n', True),
        (b'event: x\ndata: {"x":1}\n\n', True),
        (b'data: {"x":\ndata: 1}\n\n', True),
        (b": ping\n\n", True),
        (b'data: {"x":1}', True),  # incomplete
    ):
        assert proxy._plain_prefix(plain + tail, 0, kept) == len(plain), tail
    kept_null = plain + b'data: {"x":1,"usage":null}\n\n'
    assert proxy._plain_prefix(kept_null, 0, True) == len(kept_null)
    quoted = frames('"usage" "error" "finish_reason":"stop"')
    assert proxy._plain_prefix(quoted, 0, False) == len(quoted)


@async_test
async def test_client_leaving_a_fast_path_stream_is_billed_what_was_streamed() -> None:
    async with relay_env() as env:
        user, token = env.user_token(quota=10**6)
        env.upstream.behaviour = stream(pieces=[" tok"] * 50, gap_s=0.05, usage=(10, 50))
        payload = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},  # "usage":null chunks: the fast path
        }
        async with env.session.post(
            env.url + "/v1/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {token.key}"},
        ) as resp:
            seen = b""
            while seen.count(b" tok") < 5:
                seen += await resp.content.readany()
            resp.close()
        await asyncio.sleep(0.3)
        await settle(env.state)
        entry = env.state.logs[-1]
        assert 5 <= entry.completion_tokens < 50  # counted from the unparsed reads
        assert entry.quota == quota_for(entry.prompt_tokens, entry.completion_tokens, 1, "2.5", 4)
        assert user.reserved_quota == token.reserved_quota == 0
        assert user.used_quota == entry.quota


class _Collect:
    def __init__(self) -> None:
        self.sent: list[bytes | str] = []

    def add(self, data: bytes | str) -> None:
        self.sent.append(data)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_every_fault_that_rewrites_plain_chunks_turns_the_fast_path_off(fault: str) -> None:
    """A plain chunk goes out unparsed on the fast path: a fault that would change it must
    switch the fast path off (proxy._PARSE_EVERY_EVENT), or the faulty relay is not faulty."""
    call = proxy.UpstreamCall(
        **{f.name: None for f in dataclasses.fields(proxy.UpstreamCall) if f.init},
    )
    call.faults, call.client_wants_usage, call.answer_model = frozenset({fault}), True, None
    head = b'{"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,'
    head += b'"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]'
    for plain in (head + b"}", head + b',"usage":null}'):
        call.outcome = Outcome()
        sender = _Collect()
        relay = proxy._StreamRelay(call, sender)  # type: ignore[arg-type]
        kept = relay._forward_usage_chunk() and call.client_wants_usage  # as pump() decides
        if not proxy._plain_prefix(b"data: " + plain + b"\n\n", 0, kept):
            continue  # parsed on the fast path too
        relay.on_event(SSEEvent(plain.decode()))
        sent = [s.encode() if isinstance(s, str) else s for s in sender.sent]
        assert sent == [plain] or fault in proxy._PARSE_EVERY_EVENT, (
            f"fault {fault} rewrites plain chunks: add it to proxy._PARSE_EVERY_EVENT"
        )


def raw_stream(*frames_: bytes) -> Behaviour:
    """An SSE answer of exactly these bytes, one write per frame."""

    async def behave(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames_:
            await response.write(frame)
        return response

    return behave


@async_test
async def test_invalid_utf8_is_replaced_on_the_fast_path_too() -> None:
    """The parsing path decodes with U+FFFD replacements; plain frames must not differ."""
    async with relay_env() as env:
        _, token = env.user_token()
        bad = frames("a\x00b").replace(b"\\u0000", b"\xff\xfe")
        env.upstream.behaviour = raw_stream(
            frames("x"),
            bad,
            frames("y"),
            b'data: {"choices":[{"index":0,"delta":{},'
            b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
        )
        reply = await env.chat(token.key, stream=True)
        assert b"\xff" not in reply.body and b"\xfe" not in reply.body
        contents = [
            orjson.loads(e)["choices"][0]["delta"].get("content")
            for e in sse_events(reply.body)[:-1]
        ]
        assert contents == ["x", "a\ufffd\ufffdb", "y", None]


@async_test
async def test_escaped_usage_and_finish_keys_are_parsed() -> None:
    """JSON may spell a key with escapes (``"\\u0075sage"``): orjson reads it as usage, so
    the fast path must not pass such a frame unparsed."""
    async with relay_env() as env:
        _, token = env.user_token()
        env.upstream.behaviour = raw_stream(
            frames("one", "two"),
            b'data: {"choices":[{"index":0,"delta":{},"finish_re\\u0061son":"stop"}]}\n\n',
            b'data: {"choices":[],"\\u0075sage":{"prompt_tokens":7,"completion_tokens":3,'
            b'"total_tokens":10}}\n\n',
            b"data: [DONE]\n\n",
        )
        reply = await env.chat(token.key, stream=True)  # the client did not ask for usage
        events = sse_events(reply.body)
        assert not any("sage" in e for e in events), events  # stripped, as "usage" is
        assert env.state.logs[-1].completion_tokens == 3  # billed by the upstream's usage


def test_plain_prefix_parses_frames_with_escaped_ascii() -> None:
    plain = frames("a")
    for tail in (
        b'data: {"\\u0065rror":{"message":"x"}}\n\n',
        b'data: {"us\\u0061ge":null}\n\n',
        b'data: {"choices":[{"finish_reason":null,"finish_reaso\\u006E":"stop"}]}\n\n',
    ):
        assert proxy._plain_prefix(plain + tail, 0, True) == len(plain), tail
    non_ascii = frames("caf\u00e9 \u4f60")  # escaped non-ASCII text stays on the fast path
    escaped = non_ascii.replace("\u00e9".encode(), b"\\u00e9")
    assert proxy._plain_prefix(escaped, 0, False) == len(escaped)


def endless(chunk_bytes: int = 1024) -> Behaviour:
    """An answer that never ends: ``chunk_bytes`` every 5 ms (for at most 20 s)."""

    async def behave(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        ends = time.monotonic() + 20
        with contextlib.suppress(ConnectionError):
            while time.monotonic() < ends:
                await response.write(b" " * chunk_bytes)
                await asyncio.sleep(0.005)
        return response

    return behave


@async_test
async def test_forward_before_auth_reads_the_upstream_within_the_byte_cap() -> None:
    async with relay_env(faults=["forward_before_auth"]) as env:
        env.state.settings.upstream_max_bytes = 4096
        env.upstream.behaviour = endless()
        began = time.monotonic()
        reply = await env.chat("sk-no-such-key")
        assert reply.status == 401
        assert time.monotonic() - began < 3.0  # not read until the 10 s timeout
        assert len(env.upstream.requests) == 1


def test_relay_cli_tunes_the_garbage_collector_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Gen-2 collections over the start-up heap paused the relay for tens of ms under load;
    the CLI tunes the collector as the mock's does (start-up objects frozen)."""
    import argparse

    from relaygate import serve, tokens
    from relaygate.cli import mock_upstream
    from relaygate.cli import reference_relay as cli

    served: list[web.Application] = []
    tuned: list[bool] = []
    monkeypatch.setattr(serve, "run_app", lambda app, *args, **kwargs: served.append(app))
    monkeypatch.setattr(tokens, "warm", lambda: None)
    monkeypatch.setattr(mock_upstream, "tune_gc", lambda: tuned.append(True))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args([])) == 0
    hooks = [h for h in served[0].on_startup if "tune_gc" in getattr(h, "__qualname__", "")]
    assert len(hooks) == 1
    asyncio.run(hooks[0](served[0]))  # type: ignore[arg-type]
    assert tuned == [True]


class _FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


class _FakeResponse:
    chunked = True

    def __init__(self) -> None:
        self.eof: list[bytes] = []

    async def write_eof(self, data: bytes = b"") -> None:
        self.eof.append(data)


@async_test
async def test_the_last_events_and_the_end_of_the_body_go_out_in_one_write() -> None:
    transport, response = _FakeTransport(), _FakeResponse()
    sender = proxy._Sender(response, None, transport, buffered=False)  # type: ignore[arg-type]
    sender.add_frames(frames("a"))
    await sender.flush()
    assert transport.writes == [b"%x\r\n%b\r\n" % (len(frames("a")), frames("a"))]
    sender.add(orjson.dumps(chunk(None, "stop")))
    sender.add("[DONE]")
    await sender.close()
    assert len(transport.writes) == 1  # nothing more written apart from the end of the body
    assert response.eof == [b"data: " + orjson.dumps(chunk(None, "stop")) + b"\n\ndata: [DONE]\n\n"]


@async_test
async def test_one_poller_watches_the_clients_of_every_open_stream() -> None:
    """A poller task per stream woke the loop 4 times a second per stream."""

    def pollers() -> int:
        names = ("_watch_client", "_ClientWatch._poll")
        return sum(t.get_coro().__qualname__ in names for t in asyncio.all_tasks())  # type: ignore[union-attr]

    async with relay_env() as env:
        _, token = env.user_token()
        env.upstream.behaviour = stream(pieces=["x"] * 10, gap_s=0.2)
        streams = [asyncio.create_task(env.chat(token.key, stream=True)) for _ in range(6)]
        began = time.monotonic()
        while len(env.upstream.requests) < 6 and time.monotonic() - began < 3:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # every stream open: the upstream answers for 2 s
        assert pollers() == 1
        replies = await asyncio.gather(*streams)
        assert all(sse_events(r.body)[-1] == "[DONE]" for r in replies)
        await asyncio.sleep(0.4)
        assert pollers() == 0  # it ends with the last stream
