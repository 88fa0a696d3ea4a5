"""The upstream call: channel choice, retries, error translation and stream pass-through.

Upstream errors keep their status and OpenAI error object; anything the client could mistake
for its own fault (the channel key refused, a 200 carrying an error) becomes a 502. Streams are
decoded incrementally and every event is written to the client as soon as it is decoded: no
buffering, one ``data: [DONE]`` at the end of a normal stream, never an invented
``finish_reason``. What was streamed is recorded in an :class:`Outcome` for billing.

The hot path: upstream connections come from the app's pooled session and go back to it after
a stream (the chunked terminator is read after ``[DONE]``). A read of whole ``data: {…}``
frames that carry no usage, error or finish_reason is forwarded verbatim, without parsing, in
one write straight to the client's transport; its text is parsed only if billing needs it (no
usage arrived). Every upstream answer is bounded: a total deadline and a byte cap; a stream's
silences are bounded by one timer per bound, not one per read (:class:`_Silence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import re
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from relaygate.keys import masked_repr
from relaygate.reference.config import DEFAULT_UPSTREAM_DEADLINE_S, DEFAULT_UPSTREAM_MAX_BYTES
from relaygate.reference.store import Channel
from relaygate.serve import error_body, error_response
from relaygate.sse import SSEDecoder, SSEEvent, encode_event

__all__ = ["ClientGone", "Outcome", "UpstreamCall", "discard_capped", "forward", "inflated"]

RELAY_ERROR = "relay_error"
UPSTREAM_ERROR = "upstream_error"
#: Upstream headers a client needs to back off properly; passed through on error answers.
_PASS_HEADERS = ("retry-after", "retry-after-ms")
_PASS_PREFIX = "x-ratelimit-"
#: How often an idle stream checks whether its client is still connected.
_CLIENT_POLL_S = 0.25
#: Unparsed stream reads kept for counting before they are parsed (bounds memory per stream).
_UNPARSED_MAX_BYTES = 256 * 1024
#: How long a finished stream waits for the upstream's end of body, so the connection can go
#: back to the pool (it normally arrives with [DONE] or right after it).
_DRAIN_S = 0.25
#: Client write buffer above which a stream waits for the client to read (backpressure).
_WRITE_HIGH_WATER = 64 * 1024
#: Faults that change plain chunks (which the fast path forwards untouched): with any of them
#: on, every event is parsed. A new fault that rewrites streamed chunks belongs here
#: (tests/test_reference_hotpath.py checks every fault).
#: A JSON escape of a printable ASCII character: it may spell a key the fast path looks for.
_ESCAPED_ASCII = re.compile(rb"\\u00[2-7]")
_PARSE_EVERY_EVENT = frozenset(
    {"drop_tool_calls", "sse_keepalive_comments", "extra_response_fields", "none_strings"}
)


class ClientGone(Exception):
    """The client closed its connection while we were writing to it."""


class _UpstreamTooLarge(Exception):
    """The upstream's answer passed the byte cap."""


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
    #: Stream reads forwarded unparsed, each with the ``text_parts`` index its text goes at.
    unparsed: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    unparsed_bytes: int = 0

    def note_unparsed(self, frames: bytes) -> None:
        """Keep a read of plain content frames for counting; parse them once they add up."""
        if self.usage is not None:
            return  # billed by the upstream's usage: the text is never needed
        self.unparsed.append((len(self.text_parts), frames))
        self.unparsed_bytes += len(frames)
        if self.unparsed_bytes > _UNPARSED_MAX_BYTES:
            self.parse_unparsed()

    def parse_unparsed(self) -> None:
        """Put the text of the unparsed reads into ``text_parts``, in stream order."""
        if not self.unparsed:
            return
        merged: list[str] = []
        done = 0
        for at, frames in self.unparsed:
            merged += self.text_parts[done:at]
            done = at
            for frame in frames.split(b"\n\n")[:-1]:
                # As on_event reads it: a frame that is not a JSON object has no text.
                chunk = _json_or_none(frame[len(b"data: ") :])
                choices = chunk.get("choices") if isinstance(chunk, dict) else None
                for choice in choices if isinstance(choices, list) else ():
                    _choice_text(choice, merged)
        merged += self.text_parts[done:]
        self.text_parts = merged
        self.unparsed.clear()
        self.unparsed_bytes = 0

    def completion_text(self) -> str:
        """All completion text and tool-call arguments seen, for counting."""
        self.parse_unparsed()
        return "".join(self.text_parts)


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
    #: Total deadline of one upstream answer, connect to last byte.
    deadline_s: float = DEFAULT_UPSTREAM_DEADLINE_S
    #: Most bytes read of one upstream answer (body; a stream's events all together).
    max_bytes: int = DEFAULT_UPSTREAM_MAX_BYTES


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
    if status == 429 and "limiter_429_for_upstream" in faults:
        body = error_body(
            "rate limit exceeded for this key; retry later", RELAY_ERROR, "rate_limit_exceeded"
        )
    elif isinstance(error, dict):
        if "prefix_upstream_errors" in faults:
            error["message"] = f"upstream: {error.get('message', '')}"
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
    # total covers reading the body too: no answer holds a handler past the deadline.
    timeout = aiohttp.ClientTimeout(
        total=call.deadline_s, sock_connect=call.timeout_s, sock_read=call.timeout_s
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
        started_s = time.monotonic()
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
                f"upstream channel {channel.name!r} did not answer within "
                f"{min(call.timeout_s, call.deadline_s):g} s",
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
                raw = await _read_capped(upstream, call.max_bytes)
                failure = upstream_error_response(
                    upstream.status, raw, upstream.headers, channel, call.faults
                )
                if _retryable(upstream.status, call.faults) and not last:
                    continue
                return failure
            is_sse = upstream.content_type == "text/event-stream"
            if call.stream and is_sse:
                call.outcome.started = True
                return await _relay_stream(call, upstream, started_s)
            raw = await _read_capped(upstream, call.max_bytes)
            answer = _json_or_none(raw)
            if call.stream or not isinstance(answer, dict) or "error" in answer:
                return _error_in_200(raw, channel, call.faults, call.stream)
            call.outcome.started = True
            _record_body_usage(call.outcome, answer)
            rewritten = _rewrite_choices(answer, call.faults)
            rewritten = _reshape(answer, call.faults) or rewritten
            if _rewrite_answer(answer, call) or rewritten:
                raw = orjson.dumps(answer)
            if "html_content_type" in call.faults:
                return web.Response(body=raw, status=200, content_type="text/html")
            return _raw_json(200, raw, {})
        except TimeoutError:
            failure = error_response(
                504,
                _timeout_message(channel, call, started_s),
                UPSTREAM_ERROR,
                "upstream_timeout",
            )
        except _UpstreamTooLarge:
            return error_response(
                502,
                f"upstream channel {channel.name!r} answered more than {call.max_bytes} bytes",
                UPSTREAM_ERROR,
                "upstream_too_large",
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


def _timeout_message(channel: Channel, call: UpstreamCall, started_s: float) -> str:
    if time.monotonic() - started_s >= call.deadline_s - 0.01:
        return f"upstream channel {channel.name!r} did not finish within {call.deadline_s:g} s"
    return f"upstream channel {channel.name!r} stopped answering for {call.timeout_s:g} s"


async def discard_capped(upstream: aiohttp.ClientResponse, max_bytes: int) -> None:
    """Read an answer nobody uses to its end, but no more than ``max_bytes`` of it."""
    with contextlib.suppress(_UpstreamTooLarge):
        await _read_capped(upstream, max_bytes)


async def _read_capped(upstream: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole body, or :class:`_UpstreamTooLarge` as soon as it passes ``max_bytes``."""
    if (upstream.content_length or 0) > max_bytes:
        raise _UpstreamTooLarge
    chunks: list[bytes] = []
    size = 0
    while chunk := await upstream.content.readany():
        size += len(chunk)
        if size > max_bytes:
            raise _UpstreamTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _reshape(body: dict[str, Any], faults: frozenset[str]) -> bool:
    """Apply the extra_response_fields / none_strings faults to an answer or a chunk; True if
    ``body`` changed."""
    extra, none = "extra_response_fields" in faults, "none_strings" in faults
    if not (extra or none):
        return False
    if extra:
        body["relay_request_id"] = "rg-trace"
        if isinstance(body.get("usage"), dict):
            body["usage"]["relay_cost_usd"] = 0
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        holder = choice.get("message", choice.get("delta"))
        if extra:
            choice["relay_channel"] = "default"
            if isinstance(holder, dict):
                holder["relay_note"] = ""
        if none:
            for field in ("logprobs", "finish_reason"):
                if field in choice and choice[field] is None:
                    choice[field] = "None"
            if isinstance(holder, dict) and "content" in holder and holder["content"] is None:
                holder["content"] = "None"
    return True


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
    """Writes SSE frames to the client: what one upstream read produced goes out in one write
    (or everything at the end under the buffer_streams fault).

    On a chunked HTTP/1.1 answer the write goes straight to the transport as one HTTP chunk,
    as the mock upstream writes: aiohttp's writer path costs more per event than the relaying.
    """

    def __init__(
        self,
        response: web.StreamResponse,
        writer: AbstractStreamWriter,
        transport: asyncio.Transport | None,
        buffered: bool,
        keepalive_comments: bool = False,
    ) -> None:
        self.response = response
        self.writer = writer
        self.transport = transport if response.chunked else None
        self.buffered = buffered
        self.keepalive = keepalive_comments
        self.pending: list[bytes] = []
        self.frames: list[bytes] = []

    def add(self, data: bytes | str) -> None:
        """Queue one event (written by the next :meth:`flush`)."""
        frame = encode_event(data)
        if self.keepalive:
            frame = b": keep-alive\n\n" + frame
        self.pending.append(frame)

    def add_frames(self, frames: bytes) -> None:
        """Queue well-formed ``data: …\\n\\n`` frames as they are."""
        self.pending.append(frames)

    async def flush(self) -> None:
        pending = self.pending
        if not pending:
            return
        payload = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if self.buffered:
            self.frames.append(payload)
            return
        await self._write(payload)

    async def _write(self, payload: bytes) -> None:
        transport = self.transport
        try:
            if transport is None:
                await self.response.write(payload)
                return
            if transport.is_closing():
                raise ClientGone
            transport.write(b"%x\r\n%b\r\n" % (len(payload), payload))
            if transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
                await self.writer.drain()  # the client reads slowly: wait for it
        except (ConnectionError, RuntimeError) as exc:
            # aiohttp raises ConnectionResetError (or RuntimeError on a closed payload writer).
            raise ClientGone from exc

    async def close(self) -> None:
        """Write what is left and end the answer: the last events and the end of the body go
        out in one write (one packet less per stream for the client to wake up for)."""
        last = b"".join([*self.frames, *self.pending])
        self.frames.clear()
        self.pending.clear()
        if last and self.transport is not None and self.transport.is_closing():
            raise ClientGone
        try:
            await self.response.write_eof(last)
        except (ConnectionError, RuntimeError) as exc:
            if last:
                raise ClientGone from exc


class _ClientWatch:
    """Cancels a stream's handler when its client goes away while the upstream is silent.

    aiohttp only cancels handlers on disconnect when the server was started with
    ``handler_cancellation=True``; this covers servers started without it. One poller per
    event loop looks at every open stream (a task per stream cost each stream a timer wake-up
    four times a second); it ends when no stream is open.
    """

    def __init__(self) -> None:
        self.streams: dict[asyncio.Task[Any], web.Request] = {}
        self.poller: asyncio.Task[None] | None = None

    def add(self, task: asyncio.Task[Any], request: web.Request) -> None:
        self.streams[task] = request
        if self.poller is None or self.poller.done():
            self.poller = asyncio.get_running_loop().create_task(self._poll())

    def discard(self, task: asyncio.Task[Any]) -> None:
        self.streams.pop(task, None)

    async def _poll(self) -> None:
        while self.streams:
            await asyncio.sleep(_CLIENT_POLL_S)
            for task, request in list(self.streams.items()):
                transport = request.transport
                if transport is None or transport.is_closing():
                    del self.streams[task]
                    task.cancel()


_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ClientWatch] = (
    weakref.WeakKeyDictionary()
)


def _client_watch() -> _ClientWatch:
    loop = asyncio.get_running_loop()
    watch = _WATCHES.get(loop)
    if watch is None:
        watch = _WATCHES[loop] = _ClientWatch()
    return watch


class _Silence:
    """A stream's silence bound (``timeout_s`` without a byte while the relay waits for one)
    on one timer per ``timeout_s``: aiohttp's ``sock_read`` cancels and re-arms a timer on
    every read from the upstream, a timer handle per event that the mock's path does not have.

    Time spent writing to a slow client does not count: the upstream is not silent then, the
    relay is not listening. The bound ends the wait with a :class:`TimeoutError` on the
    upstream's body reader, as ``sock_read`` does.
    """

    __slots__ = ("content", "handle", "loop", "timeout_s", "waiting_since")

    def __init__(self, upstream: aiohttp.ClientResponse, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.content = upstream.content
        self.timeout_s = timeout_s
        self.waiting_since: float | None = None
        connection = upstream.connection
        if connection is not None and connection.protocol is not None:
            # aiohttp's ws_connect does the same; set again for the connection's next request.
            connection.protocol.read_timeout = None
        self.handle: asyncio.TimerHandle | None = self.loop.call_later(timeout_s, self._check)

    def _check(self) -> None:
        now = self.loop.time()
        since = self.waiting_since
        if since is not None and now - since >= self.timeout_s - 0.001:  # loop time: ms ticks
            self.handle = None
            self.content.set_exception(TimeoutError("upstream silent"))
            return
        self.handle = self.loop.call_at(
            (now if since is None else since) + self.timeout_s, self._check
        )

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


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

    def on_event(self, event: SSEEvent) -> str | None:
        """Forward one event; ``"done"`` or ``"error"`` ends the stream."""
        if event.is_done:
            return "done"
        try:
            chunk: Any = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            self.sender.add(event.data)
            return None
        if not isinstance(chunk, dict):
            self.sender.add(event.data)
            return None
        if chunk.get("error") is not None:
            self.sender.add(event.data)
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
        rewritten = _reshape(chunk, self.call.faults) or rewritten
        if _rewrite_answer(chunk, self.call) or rewritten:
            data = orjson.dumps(chunk)
        if "usage" not in chunk:
            self.sender.add(data)
            return None
        if not choices and usage is not None:
            if self._forward_usage_chunk():
                self.usage_sent = True
                self.sender.add(data)
            return None
        if self._forward_usage_chunk() and (usage is not None or self.call.client_wants_usage):
            if usage is not None:
                self.usage_sent = True
            self.sender.add(data)
            return None
        # The client did not ask for usage: drop the key (OpenAI's "usage": null included).
        del chunk["usage"]
        self.sender.add(orjson.dumps(chunk))
        return None

    def finish_normally(self) -> None:
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
            self.sender.add(
                orjson.dumps({"object": "chat.completion.chunk", "choices": [], "usage": usage})
            )
        if "drop_done" not in call.faults:
            self.sender.add("[DONE]")

    def finish_broken(self, code: str, message: str) -> None:
        """The upstream failed mid-stream: say so; never pretend it finished."""
        self.call.outcome.partial = True
        if "fake_finish_reason" in self.call.faults:
            fake = {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            self.sender.add(orjson.dumps(fake))
            if "drop_done" not in self.call.faults:
                self.sender.add("[DONE]")
            return
        if code:
            self.sender.add(orjson.dumps(error_body(message, UPSTREAM_ERROR, code)))

    async def pump(self, upstream: aiohttp.ClientResponse, started_s: float) -> tuple[str, str]:
        """Relay events until the stream ends; returns (end kind, message)."""
        call = self.call
        decoder = _StrictDataDecoder() if "strict_data_prefix" in call.faults else SSEDecoder()
        fast = call.answer_model is None and not call.faults & _PARSE_EVERY_EVENT
        # OpenAI (and the mock) send "usage":null in every chunk once usage is asked for; the
        # client gets them as they are when it asked for usage too, else they are stripped.
        usage_null_kept = self._forward_usage_chunk() and call.client_wants_usage
        silence = _Silence(upstream, call.timeout_s)
        try:
            return await self._pump(upstream, started_s, decoder, fast, usage_null_kept, silence)
        finally:
            silence.close()

    async def _pump(
        self,
        upstream: aiohttp.ClientResponse,
        started_s: float,
        decoder: SSEDecoder,
        fast: bool,
        usage_null_kept: bool,
        silence: _Silence,
    ) -> tuple[str, str]:
        call = self.call
        content = upstream.content
        sender = self.sender
        left = call.max_bytes
        loop_time = silence.loop.time
        while True:
            try:
                silence.waiting_since = loop_time()
                chunk = await content.readany()
                silence.waiting_since = None
            except TimeoutError:
                if time.monotonic() - started_s >= call.deadline_s - 0.01:
                    return "upstream_timeout", (
                        f"upstream did not finish within {call.deadline_s:g} s; the stream was cut"
                    )
                return "upstream_timeout", (
                    f"upstream sent nothing for {call.timeout_s:g} s; the stream was cut"
                )
            except aiohttp.ClientError:
                return "upstream_disconnected", "upstream closed the stream before it finished"
            left -= len(chunk)
            if left < 0:
                return "upstream_too_large", (
                    f"upstream sent more than {call.max_bytes} bytes; the stream was cut"
                )
            if not chunk:
                for event in decoder.flush():
                    end = self.on_event(event)
                    if end is not None:
                        return end, ""  # what is queued goes out with the stream's end
                await sender.flush()
                if self.finish_seen:
                    return "done", ""
                return "upstream_disconnected", "upstream closed the stream before it finished"
            end = self._relay_read(chunk, decoder, fast, usage_null_kept)
            if end is not None:
                return end, ""
            await sender.flush()

    def _relay_read(
        self, read: bytes, decoder: SSEDecoder, fast: bool, usage_null_kept: bool
    ) -> str | None:
        """Queue what one upstream read holds: runs of plain frames as they are, every other
        frame through the decoder and :meth:`on_event` (one frame at a time, so that a read
        that coalesced many events still takes the fast path after its first)."""
        pos = 0
        size = len(read)
        ascii_only = read.isascii()
        while pos < size:
            if fast and decoder.idle:
                cut = _plain_prefix(read, pos, usage_null_kept, ascii_only)
                if cut > pos:
                    plain = read if pos == 0 and cut == size else read[pos:cut]
                    self.sender.add_frames(plain)
                    self.call.outcome.note_unparsed(plain)
                    pos = cut
                    continue
            frame_end = read.find(b"\n\n", pos)
            nxt = size if frame_end == -1 or not fast else frame_end + 2
            for event in decoder.feed(read if pos == 0 and nxt == size else read[pos:nxt]):
                end = self.on_event(event)
                if end is not None:
                    return end
            pos = nxt
        return None


def _plain_prefix(read: bytes, start: int, usage_null_kept: bool, ascii_only: bool = True) -> int:
    """Where the run of plain frames that starts at ``read[start]`` ends (``start``: none).

    A plain frame is one line ``data: {…}`` and a blank line, with no usage (but
    ``"usage":null`` when ``usage_null_kept``), no error and no finish_reason but null:
    :meth:`_StreamRelay.on_event` would forward it unchanged and note only its text, so it is
    forwarded as it is and its text parsed later, if ever. Byte searches suffice: inside JSON
    strings quotes are escaped, so ``"usage"`` only ever matches a key, unless the key itself
    is spelt with escapes (``"\u0075sage"``, which orjson reads as ``"usage"``): a frame with an
    escaped printable ASCII character is parsed. Unless ``ascii_only`` (the whole read is
    ASCII), a frame that is not valid UTF-8 is parsed too (the decoder replaces bad bytes).
    """
    while (end := read.find(b"\n\n", start)) != -1:
        if not read.startswith(b"data: {", start) or read.find(b"\n", start, end) != -1:
            break
        if read.find(b"\r", start, end) != -1 or read.find(b'"error"', start, end) != -1:
            break
        if read.find(b"\\u", start, end) != -1 and _ESCAPED_ASCII.search(read, start, end):
            break
        if not ascii_only and not _valid_utf8(read, start, end):
            break
        usages = read.count(b'"usage"', start, end)
        if usages and (not usage_null_kept or usages != read.count(b'"usage":null', start, end)):
            break
        if read.count(b'"finish_reason"', start, end) != read.count(
            b'"finish_reason":null', start, end
        ):
            break
        start = end + 2
    return start


def _valid_utf8(read: bytes, start: int, end: int) -> bool:
    try:
        read[start:end].decode()
    except UnicodeDecodeError:
        return False
    return True


async def _relay_stream(
    call: UpstreamCall, upstream: aiohttp.ClientResponse, started_s: float
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    if call.request.version >= aiohttp.HttpVersion11:
        response.enable_chunked_encoding()  # so that _Sender can write HTTP chunks itself
    try:
        writer = await response.prepare(call.request)
    except (ConnectionError, RuntimeError):
        writer = None
    if writer is None:
        call.outcome.partial = call.outcome.client_gone = True  # left before the first byte
        return response
    sender = _Sender(
        response,
        writer,
        call.request.transport,
        buffered="buffer_streams" in call.faults,
        keepalive_comments="sse_keepalive_comments" in call.faults,
    )
    relay = _StreamRelay(call, sender)
    handler = asyncio.current_task()
    assert handler is not None
    watch = _client_watch()
    watch.add(handler, call.request)
    try:
        end, message = await relay.pump(upstream, started_s)
        if end == "done":
            relay.finish_normally()
        elif end == "error":
            relay.finish_broken("", "")
        else:
            relay.finish_broken(end, message)
        await sender.close()
    except ClientGone:
        call.outcome.partial = call.outcome.client_gone = True
        return response
    except asyncio.CancelledError:
        # The client went away (aiohttp or our watcher cancelled the handler).
        call.outcome.partial = call.outcome.client_gone = True
        raise
    finally:
        watch.discard(handler)
    if end == "done":
        # The client has its whole answer: a cancellation from here on changes nothing.
        await _drain(upstream)
    return response


async def _drain(upstream: aiohttp.ClientResponse) -> None:
    """Read what follows ``[DONE]`` (normally only the chunked terminator), so the connection
    goes back to the pool instead of being closed; an upstream that keeps talking loses it."""
    left = 64 * 1024
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_S):
            while left > 0 and not upstream.content.is_eof():
                chunk = await upstream.content.readany()
                if not chunk:
                    return
                left -= len(chunk)
