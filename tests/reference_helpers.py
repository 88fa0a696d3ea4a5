"""Test helpers for the reference relay: a tiny scriptable fake upstream and a relay harness.

Tests are plain sync functions (no pytest-asyncio): :func:`async_test` runs a coroutine test
with ``asyncio.run``. :func:`relay_env` starts the fake upstream and the relay on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from relaygate.reference.app import build_state, create_app
from relaygate.reference.config import RateLimit, RelayConfig
from relaygate.reference.store import RelayState, Token, User

UPSTREAM_KEY = "sk-channelKEY0123456789abcdefghijklmnopqrstuvwxyzABCD"
ADMIN_TOKEN = "admin-token-for-tests"
MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo", "gpt-4", "text-embedding-3-small"]

Behaviour = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test with ``asyncio.run`` (parameters pass through)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


# --- fake upstream behaviours -----------------------------------------------------------------


def completion_body(
    content: str = "hello", usage: tuple[int, int] | None = (10, 20)
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return body


def ok(
    usage: tuple[int, int] | None = (10, 20), content: str = "hello", delay_s: float = 0
) -> Behaviour:
    """A non-stream 200 completion with the given usage."""

    async def behave(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if delay_s:
            await asyncio.sleep(delay_s)
        if request.path.endswith("/embeddings"):
            return web.json_response(
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.0]}],
                    "usage": {"prompt_tokens": usage[0] if usage else 0, "total_tokens": 0},
                }
            )
        return web.json_response(completion_body(content, usage))

    return behave


def fail(
    status: int,
    body: Any = None,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> Behaviour:
    """An error answer; ``body`` is JSON-encoded unless it is bytes."""

    async def behave(request: web.Request, _body: dict[str, Any]) -> web.StreamResponse:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return web.Response(status=status, body=raw, headers=headers, content_type=content_type)

    return behave


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


@dataclasses.dataclass
class StreamScript:
    """What a streaming fake upstream sends."""

    pieces: Sequence[str] = ("Hel", "lo", " world")
    usage: tuple[int, int] | None = (10, 3)
    #: auto: iff the relay asked (it always should); always; never
    usage_chunk: str = "auto"
    usage_null: bool = True
    done: bool = True
    finish: bool = True
    gap_s: float = 0.0
    drop_after: int | None = None
    error_after: int | None = None
    nospace: bool = False
    crlf: bool = False


def stream(script: StreamScript | None = None, **kwargs: Any) -> Behaviour:
    """An SSE stream following ``script`` (or a StreamScript built from kwargs)."""
    s = script or StreamScript(**kwargs)

    async def behave(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sep = b"\r\n\r\n" if s.crlf else b"\n\n"
        prefix = b"data:" if s.nospace else b"data: "

        async def send(data: Any) -> None:
            raw = data if isinstance(data, bytes) else orjson.dumps(data)
            await response.write(prefix + raw + sep)

        extra = {"usage": None} if s.usage_null else {}
        await send(chunk("", **extra))
        for i, piece in enumerate(s.pieces):
            if s.drop_after is not None and i == s.drop_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if s.error_after is not None and i == s.error_after:
                await send(
                    {"error": {"message": "boom", "type": "server_error", "code": "stream_failed"}}
                )
                return response
            if s.gap_s:
                await asyncio.sleep(s.gap_s)
            await send(chunk(piece, **extra))
        if s.finish:
            await send(chunk(None, "stop", **extra))
        wants = (body.get("stream_options") or {}).get("include_usage")
        if s.usage is not None and (
            s.usage_chunk == "always" or (s.usage_chunk == "auto" and wants)
        ):
            p, c = s.usage
            await send(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
                }
            )
        if s.done:
            await response.write(prefix + b"[DONE]" + sep)
        return response

    return behave


class FakeUpstream:
    """Records what the relay forwarded and answers with ``behaviour`` (or ``script`` in turn)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.behaviour: Behaviour = ok()
        self.script: list[Behaviour] = []
        self.cancelled = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        self.requests.append(
            {
                "path": request.path,
                "headers": dict(request.headers),
                "body": body,
                "at": time.monotonic(),
            }
        )
        behaviour = self.script.pop(0) if self.script else self.behaviour
        try:
            return await behaviour(request, body)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


# --- the relay harness ------------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        error = self.json()["error"]
        assert isinstance(error, dict)
        return error


@dataclasses.dataclass
class Env:
    upstream: FakeUpstream
    state: RelayState
    url: str
    upstream_url: str
    session: aiohttp.ClientSession

    def user_token(
        self, quota: int = 10**9, group: str = "default", **token: Any
    ) -> tuple[User, Token]:
        user = self.state.create_user(
            {"username": f"u{len(self.state.users) + 1}", "group": group, "quota": quota}
        )
        token.setdefault("remain_quota", 10**9)
        return user, self.state.create_token({"user_id": user.id, **token})

    async def request(
        self,
        method: str,
        path: str,
        key: str | None = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        body = orjson.dumps(json) if json is not None else data
        async with self.session.request(method, self.url + path, data=body, headers=hdrs) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def chat(self, key: str | None, model: str = "gpt-4o", **fields: Any) -> Reply:
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
        return await self.request("POST", "/v1/chat/completions", key, payload)

    async def admin(
        self, method: str, path: str, json: Any = None, token: str = ADMIN_TOKEN
    ) -> Reply:
        return await self.request(
            method, "/api/admin" + path, json=json, headers={"Authorization": f"Bearer {token}"}
        )


@contextlib.asynccontextmanager
async def relay_env(
    faults: Sequence[str] = (),
    rate_limit: str | None = None,
    retry_times: int = 0,
    upstream_timeout_s: float = 5.0,
    max_body_bytes: int = 8 * 1024 * 1024,
    channels: int = 1,
) -> AsyncIterator[Env]:
    """Fake upstream + relay (one channel per ``channels``, all serving :data:`MODELS`)."""
    upstream = FakeUpstream()
    upstream_server = TestServer(upstream.app(), host="127.0.0.1")
    await upstream_server.start_server()
    upstream_url = str(upstream_server.make_url("")).rstrip("/")
    config = RelayConfig(
        admin_token=ADMIN_TOKEN,
        faults=frozenset(faults),
        rate_limit=RateLimit.parse(rate_limit) if rate_limit else None,
        retry_times=retry_times,
        upstream_timeout_s=upstream_timeout_s,
        max_body_bytes=max_body_bytes,
    )
    state = build_state(config)
    for i in range(channels):
        state.create_channel(
            {
                "name": f"ch{i + 1}",
                "base_url": upstream_url,
                "key": UPSTREAM_KEY,
                "models": MODELS,
                "groups": ["default", "vip", "svip"],
            }
        )
    relay_server = TestServer(create_app(config, state), host="127.0.0.1")
    await relay_server.start_server()
    session = aiohttp.ClientSession()
    try:
        yield Env(
            upstream, state, str(relay_server.make_url("")).rstrip("/"), upstream_url, session
        )
    finally:
        await session.close()
        await relay_server.close()
        await upstream_server.close()


def sse_events(body: bytes) -> list[str]:
    """The ``data`` of each frame of a relayed stream (always written as ``data: x\\n\\n``)."""
    frames = body.decode().split("\n\n")
    assert frames[-1] == "", f"stream does not end with a blank line: {body[-40:]!r}"
    out = []
    for frame in frames[:-1]:
        assert frame.startswith("data: "), f"malformed frame {frame!r}"
        out.append(frame[len("data: ") :])
    return out


async def settle(state: RelayState, timeout_s: float = 2.0) -> None:
    """Wait until no relayed request is in flight (billing happens as a request ends)."""
    deadline = time.monotonic() + timeout_s
    while state.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert state.in_flight == 0, "requests still in flight"
