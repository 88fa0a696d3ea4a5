"""The upstream call: channel choice, retries, error translation and stream pass-through.

Upstream errors keep their status and OpenAI error object; anything the client could mistake
for its own fault (the channel key refused, a 200 carrying an error) becomes a 502. Streams are
decoded incrementally and every event is written to the client as soon as it is decoded: no
buffering, one ``data: [DONE]`` at the end of a normal stream, never an invented
``finish_reason``. What was streamed is recorded in an :class:`Outcome` for billing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from relaygate.keys import masked_repr
from relaygate.reference.store import Channel
from relaygate.serve import error_body, error_response
from relaygate.sse import SSEDecoder, SSEEvent, encode_event

__all__ = ["ClientGone", "Outcome", "UpstreamCall", "forward", "inflated"]

RELAY_ERROR = "relay_error"
UPSTREAM_ERROR = "upstream_error"
#: Upstream headers a client needs to back off properly; passed through on error answers.
_PASS_HEADERS = ("retry-after", "retry-after-ms")
_PASS_PREFIX = "x-ratelimit-"
#: How often an idle stream checks whether its client is still connected.
_CLIENT_POLL_S = 0.25


class ClientGone(Exception):
    """The client closed its connection while we were writing to it."""


@dataclasses.dataclass(slots=True)
class Outcome:
    """What happened upstream, for billing and the request log."""

    #: True once the upstream accepted the request (a 2xx we are relaying).
    started: bool = False
    #: The stream ended early (upstream dropped, in-stream error, client left).
    partial: bool = False
    #: The client left before the answer was fully written.
    client_gone: bool = False
    #: (prompt, completion) as the upstream reported them, when it did.
    usage: tuple[int, int] | None = None
    #: Completion text and tool-call arguments seen, for counting when no usage arrived.
    text_parts: list[str] = dataclasses.field(default_factory=list)


@masked_repr("client_key")
@dataclasses.dataclass(slots=True)
class UpstreamCall:
    """Everything :func:`forward` needs to make one relayed call."""

    request: web.Request
    session: aiohttp.ClientSession
    path: str
    body: bytes
    channels: list[Channel]
    stream: bool
    client_wants_usage: bool
    client_key: str
    request_id: str
    faults: frozenset[str]
    retry_times: int
    timeout_s: float
    prompt_tokens: int
    outcome: Outcome
    #: Exact local (prompt, completion) counts of what was streamed so far.
    count_usage: Callable[[], tuple[int, int]]
    #: The ``model`` written into every answer and chunk instead of the upstream's (a fault).
    answer_model: str | None = None


def _pick(channels: list[Channel], tried: set[int]) -> Channel:
    """Highest priority among untried channels (all, once every one was tried), random tier."""
    pool = [c for c in channels if c.id not in tried] or channels
    top = max(c.priority for c in pool)
    return random.choice([c for c in pool if c.priority == top])


def _upstream_url(channel: Channel, path: str) -> str:
    # A base URL may be given with or without its /v1 suffix.
    base = channel.base_url
    if base.endswith("/v1") and path.startswith("/v1/"):
        path = path[3:]
    return base + path


def _retryable(status: int, faults: frozenset[str]) -> bool:
    if status >= 500 or status == 429:
        return True
    return "retry_4xx" in faults and 400 <= status < 500


def _passed_headers(
    headers: Mapping[str, str], status: int, faults: frozenset[str]
) -> dict[str, str]:
    out = {
        k: v
        for k, v in headers.items()
        if k.lower() in _PASS_HEADERS or k.lower().startswith(_PASS_PREFIX)
    }
    if status == 429 and "drop_retry_after" in faults:
        out = {k: v for k, v in out.items() if k.lower() not in _PASS_HEADERS}
    return out


def _hide_key(body: dict[str, Any], channel: Channel, faults: frozenset[str]) -> bytes:
    """Serialise an error body; the channel key never leaves (unless leak_channel_key)."""
    if "leak_channel_key" in faults:
        error = body.get("error")
        if isinstance(error, dict):
            error["message"] = f"{error.get('message', '')} (channel key {channel.key})"
        return orjson.dumps(body)
    return orjson.dumps(body).replace(channel.key.encode(), b"sk-***")


def upstream_error_response(
    status: int,
    raw: bytes,
    headers: Mapping[str, str],
    channel: Channel,
    faults: frozenset[str],
) -> web.Response:
    """The client's answer to an upstream error status."""
    if status in (401, 403) and "passthrough_upstream_auth" not in faults:
        body = error_body(
            f"upstream refused channel {channel.name!r}'s credentials (HTTP {status}); your "
            "API key is fine, the relay admin must fix the channel key",
            UPSTREAM_ERROR,
            "upstream_auth_failed",
        )
        return _raw_json(502, _hide_key(body, channel, faults), {})
    parsed = _json_or_none(raw)
    if parsed is None and status >= 400 and "passthrough_html_errors" in faults:
        return web.Response(
            status=status,
            body=raw.replace(channel.key.encode(), b"sk-***"),
            headers={
                "Content-Type": headers.get("Content-Type", "text/html"),
                **_passed_headers(headers, status, faults),
            },
        )
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if status >= 500 and "mask_upstream_5xx" in faults:
        body = error_body("upstream request failed", RELAY_ERROR, "upstream_failed")
        return _raw_json(502, orjson.dumps(body), _passed_headers(headers, status, faults))
    if isinstance(error, dict):
        body = {"error": error}
    else:
        what = "a non-JSON body" if parsed is None else "a body without an error object"
        body = error_body(
            f"upstream returned HTTP {status} with {what}",
            UPSTREAM_ERROR,
            "bad_response_status_code",
        )
    out_status = status if status >= 400 else 502
    if out_status == 429 and "rewrite_429" in faults:
        out_status = 500
    return _raw_json(
        out_status, _hide_key(body, channel, faults), _passed_headers(headers, status, faults)
    )


def _raw_json(status: int, body: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _error_in_200(
    raw: bytes, channel: Channel, faults: frozenset[str], stream: bool
) -> web.Response:
    """A 2xx that is not a usable answer: an error object, or not what was asked for."""
    parsed = _json_or_none(raw)
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        status = 200 if "pass_200_error" in faults else 502
        return _raw_json(status, _hide_key({"error": parsed["error"]}, channel, faults), {})
    what = "without an event stream" if stream else "with a body that is not a JSON object"
    return error_response(
        502, f"upstream answered HTTP 200 {what}", UPSTREAM_ERROR, "bad_response_body"
    )


async def forward(call: UpstreamCall) -> web.StreamResponse:
    """Send the request upstream (with retries) and relay the answer."""
    tried: set[int] = set()
    # The retry_4xx fault retries even with retry_times 0, so a one-channel relay shows it.
    attempts = 1 + call.retry_times + ("retry_4xx" in call.faults)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=call.timeout_s, sock_read=call.timeout_s
    )
    failure: web.Response | None = None
    for attempt in range(attempts):
        last = attempt == attempts - 1
        channel = _pick(call.channels, tried)
        tried.add(channel.id)
        headers = {
            "Authorization": f"Bearer {channel.key}",
            "Content-Type": "application/json",
            "X-Relaygate-Request-Id": call.request_id,
        }
        if "forward_client_key" in call.faults:
            headers["X-Api-Key"] = call.client_key
        try:
            upstream = await call.session.post(
                _upstream_url(channel, call.path),
                data=call.body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            )
        except TimeoutError:
            failure = error_response(
                504,
                f"upstream channel {channel.name!r} did not answer within {call.timeout_s:g} s",
                UPSTREAM_ERROR,
                "upstream_timeout",
            )
            continue
        except aiohttp.ClientError as exc:
            failure = error_response(
                502,
                f"upstream channel {channel.name!r} is unreachable ({type(exc).__name__})",
                UPSTREAM_ERROR,
                "upstream_unreachable",
            )
            continue
        try:
            if not 200 <= upstream.status < 300:
                raw = await upstream.read()
                failure = upstream_error_response(
                    upstream.status, raw, upstream.headers, channel, call.faults
                )
                if _retryable(upstream.status, call.faults) and not last:
                    continue
                return failure
            is_sse = upstream.content_type == "text/event-stream"
            if call.stream and is_sse:
                call.outcome.started = True
                return await _relay_stream(call, upstream)
            raw = await upstream.read()
            answer = _json_or_none(raw)
            if call.stream or not isinstance(answer, dict) or "error" in answer:
                return _error_in_200(raw, channel, call.faults, call.stream)
            call.outcome.started = True
            _record_body_usage(call.outcome, answer)
            rewritten = _rewrite_choices(answer, call.faults)
            if _rewrite_answer(answer, call) or rewritten:
                raw = orjson.dumps(answer)
            if "html_content_type" in call.faults:
                return web.Response(body=raw, status=200, content_type="text/html")
            return _raw_json(200, raw, {})
        except TimeoutError:
            failure = error_response(
                504,
                f"upstream channel {channel.name!r} stopped answering for {call.timeout_s:g} s",
                UPSTREAM_ERROR,
                "upstream_timeout",
            )
        except aiohttp.ClientError as exc:
            failure = error_response(
                502,
                f"upstream channel {channel.name!r} dropped the connection ({type(exc).__name__})",
                UPSTREAM_ERROR,
                "upstream_unreachable",
            )
        finally:
            if call.outcome.partial:
                # Stop the upstream generating (and charging) for a stream nobody reads.
                upstream.close()
            else:
                upstream.release()
    assert failure is not None
    return failure


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _usage_pair(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    if prompt < 0 or completion < 0 or prompt + completion == 0:
        return None
    return prompt, completion


def _choice_text(choice: Any, parts: list[str]) -> str | None:
    """Append a choice's completion text / tool-call arguments; return its finish_reason."""
    if not isinstance(choice, dict):
        return None
    for holder in (choice.get("delta"), choice.get("message"), choice):
        if not isinstance(holder, dict):
            continue
        for field in ("content", "text", "reasoning_content"):
            value = holder.get(field)
            if isinstance(value, str):
                parts.append(value)
        calls = holder.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    parts.append(function["arguments"])
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) else None


def _rewrite_choices(body: dict[str, Any], faults: frozenset[str]) -> bool:
    """Apply the normalize_finish_reason / drop_finish_reason / drop_tool_calls faults; True
    if ``body`` changed."""
    changed = False
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        reason = choice.get("finish_reason")
        if "normalize_finish_reason" in faults and reason is not None and reason != "stop":
            choice["finish_reason"] = "stop"
            changed = True
        if "drop_finish_reason" in faults and reason is not None:
            choice["finish_reason"] = None
            changed = True
        delta = choice.get("delta")
        if "drop_tool_calls" in faults and isinstance(delta, dict) and "tool_calls" in delta:
            del delta["tool_calls"]
            changed = True
    return changed


def inflated(tokens: int) -> int:
    """A token count as the inflate_usage fault shows and bills it (+10% + 7; 0 stays 0)."""
    return tokens + tokens // 10 + 7 if tokens else 0


def _inflated_usage(usage: dict[str, Any]) -> dict[str, Any]:
    out = dict(usage)
    for field in ("prompt_tokens", "completion_tokens"):
        if isinstance(out.get(field), int):
            out[field] = inflated(out[field])
    out["total_tokens"] = out["prompt_tokens"] + out.get("completion_tokens", 0)
    return out


def _rewrite_answer(body: dict[str, Any], call: UpstreamCall) -> bool:
    """Apply the answer_model and inflate_usage faults to a body or chunk; True if changed."""
    changed = False
    if call.answer_model is not None and "model" in body:
        body["model"] = call.answer_model
        changed = True
    usage = body.get("usage")
    if "inflate_usage" in call.faults and _usage_pair(usage) is not None:
        assert isinstance(usage, dict)
        body["usage"] = _inflated_usage(usage)
        changed = True
    return changed


def _record_body_usage(outcome: Outcome, body: dict[str, Any]) -> None:
    outcome.usage = _usage_pair(body.get("usage"))
    if outcome.usage is None:
        choices = body.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            _choice_text(choice, outcome.text_parts)


class _Sender:
    """Writes SSE frames to the client, one write per event (or all at the end when buffering)."""

    def __init__(
        self, response: web.StreamResponse, buffered: bool, keepalive_comments: bool = False
    ) -> None:
        self.response = response
        self.buffered = buffered
        self.keepalive = keepalive_comments
        self.frames: list[bytes] = []

    async def send(self, data: bytes | str) -> None:
        frame = encode_event(data)
        if self.keepalive:
            frame = b": keep-alive\n\n" + frame
        if self.buffered:
            self.frames.append(frame)
            return
        await self._write(frame)

    async def _write(self, payload: bytes) -> None:
        try:
            await self.response.write(payload)
        except (ConnectionError, RuntimeError) as exc:
            # aiohttp raises ConnectionResetError (or RuntimeError on a closed payload writer).
            raise ClientGone from exc

    async def close(self) -> None:
        if self.frames:
            await self._write(b"".join(self.frames))
            self.frames.clear()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.response.write_eof()


async def _watch_client(request: web.Request, task: asyncio.Task[Any]) -> None:
    """Cancel the handler when the client goes away while the upstream is silent.

    aiohttp only cancels handlers on disconnect when the server was started with
    ``handler_cancellation=True``; this covers servers started without it.
    """
    while True:
        await asyncio.sleep(_CLIENT_POLL_S)
        transport = request.transport
        if transport is None or transport.is_closing():
            task.cancel()
            return


class _StrictDataDecoder(SSEDecoder):
    """one-api's parser (strict_data_prefix fault): a ``data:`` line without the space is lost."""

    def _line(self, raw: bytes) -> SSEEvent | None:
        if raw.startswith(b"data:") and not raw.startswith(b"data: "):
            return None
        return super()._line(raw)


class _StreamRelay:
    """Per-stream state: decode upstream events, forward or strip them, note usage/finish."""

    def __init__(self, call: UpstreamCall, sender: _Sender) -> None:
        self.call = call
        self.sender = sender
        self.finish_seen = False
        self.usage_sent = False

    def _forward_usage_chunk(self) -> bool:
        faults = self.call.faults
        if "always_usage_chunk" in faults:
            return True
        return self.call.client_wants_usage and "no_usage_chunk" not in faults

    async def on_event(self, event: SSEEvent) -> str | None:
        """Forward one event; ``"done"`` or ``"error"`` ends the stream."""
        if event.is_done:
            return "done"
        try:
            chunk: Any = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            await self.sender.send(event.data)
            return None
        if not isinstance(chunk, dict):
            await self.sender.send(event.data)
            return None
        if chunk.get("error") is not None:
            await self.sender.send(event.data)
            return "error"
        outcome = self.call.outcome
        usage = _usage_pair(chunk.get("usage"))
        if usage is not None:
            outcome.usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if _choice_text(choice, outcome.text_parts) is not None:
                self.finish_seen = True
        data: bytes | str = event.data
        rewritten = _rewrite_choices(chunk, self.call.faults)
        if _rewrite_answer(chunk, self.call) or rewritten:
            data = orjson.dumps(chunk)
        if "usage" not in chunk:
            await self.sender.send(data)
            return None
        if not choices and usage is not None:
            if self._forward_usage_chunk():
                self.usage_sent = True
                await self.sender.send(data)
            return None
        if self._forward_usage_chunk() and (usage is not None or self.call.client_wants_usage):
            if usage is not None:
                self.usage_sent = True
            await self.sender.send(data)
            return None
        # The client did not ask for usage: drop the key (OpenAI's "usage": null included).
        del chunk["usage"]
        await self.sender.send(orjson.dumps(chunk))
        return None

    async def finish_normally(self) -> None:
        call = self.call
        if not self.usage_sent and self._forward_usage_chunk() and call.client_wants_usage:
            # The upstream sent no usage chunk: synthesise one from exact local counts.
            prompt, completion = call.count_usage()
            call.outcome.usage = (prompt, completion)
            if "inflate_usage" in call.faults:
                prompt, completion = inflated(prompt), inflated(completion)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            await self.sender.send(
                orjson.dumps({"object": "chat.completion.chunk", "choices": [], "usage": usage})
            )
        if "drop_done" not in call.faults:
            await self.sender.send("[DONE]")

    async def finish_broken(self, code: str, message: str) -> None:
        """The upstream failed mid-stream: say so; never pretend it finished."""
        self.call.outcome.partial = True
        if "fake_finish_reason" in self.call.faults:
            fake = {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            await self.sender.send(orjson.dumps(fake))
            if "drop_done" not in self.call.faults:
                await self.sender.send("[DONE]")
            return
        if code:
            await self.sender.send(orjson.dumps(error_body(message, UPSTREAM_ERROR, code)))

    async def pump(self, upstream: aiohttp.ClientResponse) -> tuple[str, str]:
        """Relay events until the stream ends; returns (end kind, message)."""
        decoder = _StrictDataDecoder() if "strict_data_prefix" in self.call.faults else SSEDecoder()
        while True:
            try:
                chunk = await upstream.content.readany()
            except TimeoutError:
                return "upstream_timeout", (
                    f"upstream sent nothing for {self.call.timeout_s:g} s; the stream was cut"
                )
            except aiohttp.ClientError:
                return "upstream_disconnected", "upstream closed the stream before it finished"
            events = decoder.feed(chunk) if chunk else decoder.flush()
            for event in events:
                end = await self.on_event(event)
                if end is not None:
                    return end, ""
            if not chunk:
                if self.finish_seen:
                    return "done", ""
                return "upstream_disconnected", "upstream closed the stream before it finished"


async def _relay_stream(call: UpstreamCall, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    try:
        await response.prepare(call.request)
    except (ConnectionError, RuntimeError):
        call.outcome.partial = call.outcome.client_gone = True  # left before the first byte
        return response
    sender = _Sender(
        response,
        buffered="buffer_streams" in call.faults,
        keepalive_comments="sse_keepalive_comments" in call.faults,
    )
    relay = _StreamRelay(call, sender)
    handler = asyncio.current_task()
    assert handler is not None
    watcher = asyncio.create_task(_watch_client(call.request, handler))
    try:
        end, message = await relay.pump(upstream)
        if end == "done":
            await relay.finish_normally()
        elif end == "error":
            await relay.finish_broken("", "")
        else:
            await relay.finish_broken(end, message)
        await sender.close()
    except ClientGone:
        call.outcome.partial = call.outcome.client_gone = True
    except asyncio.CancelledError:
        # The client went away (aiohttp or our watcher cancelled the handler).
        call.outcome.partial = call.outcome.client_gone = True
        raise
    finally:
        watcher.cancel()
    return response
