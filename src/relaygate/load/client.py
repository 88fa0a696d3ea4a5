"""A timing HTTP/1.1 client for OpenAI-style SSE streams, built on the stdlib ``socket``.

Why not Locust's ``FastHttpUser``: its ``iter_content``/``iter_lines`` wait for 1 KB before
yielding, which delays a 60-byte event by up to ~20 events (+400 ms TTFT at 20 ms ITL,
``LOCUST_BASELINE.md``), and its ``readline()`` splits on ``\\r\\n`` only. This client reads
with ``recv`` and stamps every buffer **when it arrives, before any parsing**; each SSE event
completed by that buffer gets that time. Under Locust, gevent has monkey-patched ``socket``,
so the same code is cooperative there and plain blocking in tests, without importing gevent.

Timestamps (all ``time.monotonic_ns()``, CLOCK_MONOTONIC on Linux, the clock the mock
upstream uses for its ``relaygate_emit_ns`` stamps, so the two are directly comparable):

==================  ========================================================================
``t_intended_ns``   when the request was due (pacer slot; = ``t_start_ns`` in closed loop)
``t_start_ns``      just before taking a connection (connect if none is idle)
``t_sent_ns``       right after ``sendall`` of the whole request returned
``t_headers_ns``    arrival of the buffer that completed the response headers
``t_first_event_ns``  arrival of the first complete SSE event of any kind (the "ack")
``t_first_token_ns``  arrival of the first event whose ``delta`` carries non-empty
                    ``content``, ``reasoning_content``/``reasoning`` or ``tool_calls``
                    (never the role-only chunk, never the usage-only chunk)
``token_event_ns``  arrival of every such token event (ITL = consecutive differences)
``t_last_token_ns``   arrival of the last token event
``t_end_ns``        arrival of the end of the response body (terminating chunk / EOF)
==================  ========================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from relaygate.load import outcomes
from relaygate.sse import SSEDecoder

__all__ = ["ProtocolError", "RequestResult", "TimingClient"]

_RECV_BYTES = 65536
_BODY_KEEP_BYTES = 65536
_DONE_DRAIN_S = 2.0


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 we can frame (bad status line, chunk size, …)."""


@dataclasses.dataclass(slots=True)
class RequestResult:
    """Everything measured about one request; see the module docstring for the timestamps."""

    outcome: str = outcomes.CONNECTION_ERROR
    status: int | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    t_intended_ns: int = 0
    t_start_ns: int = 0
    t_sent_ns: int | None = None
    t_headers_ns: int | None = None
    t_first_event_ns: int | None = None
    t_first_token_ns: int | None = None
    t_last_token_ns: int | None = None
    t_end_ns: int | None = None
    token_event_ns: list[int] = dataclasses.field(default_factory=list)
    emit_lag_ns: list[int] = dataclasses.field(default_factory=list)
    token_emit_lag_ns: list[int] = dataclasses.field(default_factory=list)
    first_token_emit_lag_ns: int | None = None
    events: int = 0
    malformed_events: int = 0
    saw_done: bool = False
    finish_reason: str | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None
    body: bytes = b""
    bytes_received: int = 0

    @property
    def output_tokens(self) -> int:
        """``usage.completion_tokens`` when the stream reported it, else the token events."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return len(self.token_event_ns)

    def json(self) -> Any:
        """The (non-stream) body parsed as JSON, or None."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


class _Dechunker:
    """Incremental ``Transfer-Encoding: chunked`` decoder."""

    __slots__ = ("_buf", "_remaining", "_state", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = 0
        self._state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailer
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if not self._buf and self._state == 0:
            # Fast path: one whole chunk per read, the common case for SSE (one event per
            # chunk, one chunk per TCP segment).
            nl = data.find(b"\n")
            if nl > 0:
                try:
                    size = int(data[:nl].split(b";", 1)[0], 16)
                except ValueError:
                    size = -1
                if size > 0 and len(data) == nl + 1 + size + 2 and data.endswith(b"\r\n"):
                    return data[nl + 1 : nl + 1 + size]
        buf = self._buf + data if self._buf else data
        out = bytearray()
        pos = 0
        size = len(buf)
        while pos < size and not self.done:
            if self._state == 1:
                take = min(self._remaining, size - pos)
                out += buf[pos : pos + take]
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = 2
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos:nl].strip()
            pos = nl + 1
            if self._state == 0:
                try:
                    chunk = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if chunk == 0:
                    self._state = 3
                else:
                    self._remaining = chunk
                    self._state = 1
            elif self._state == 2:
                self._state = 0
            elif not line:  # end of trailer
                self.done = True
        self._buf = buf[pos:]
        return bytes(out)


class _Connection:
    __slots__ = ("reused", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reused = False


class TimingClient:
    """Keep-alive HTTP/1.1 client that times SSE streams event by event.

    One instance per Locust user; it keeps a small pool of idle connections so the 429
    prober can run many requests at once through one client.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        clock: Callable[[], int] = time.monotonic_ns,
        max_idle: int = 64,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port], got {base_url!r}")
        self.scheme = parts.scheme
        self.hostname = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        default_port = self.port == (443 if self.scheme == "https" else 80)
        self.host_header = self.hostname if default_port else f"{self.hostname}:{self.port}"
        self.timeout_s = timeout_s
        self.clock = clock
        self._idle: list[_Connection] = []
        self._max_idle = max_idle
        self._ssl = ssl.create_default_context() if self.scheme == "https" else None

    def close(self) -> None:
        while self._idle:
            self._idle.pop().sock.close()

    def __enter__(self) -> TimingClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def post_json(
        self,
        path: str,
        payload: Mapping[str, Any] | bytes,
        headers: Mapping[str, str] | None = None,
        *,
        stream: bool = True,
        t_intended_ns: int | None = None,
    ) -> RequestResult:
        """POST a JSON body and time the answer (SSE when ``stream``)."""
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        all_headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if stream:
            all_headers["Accept"] = "text/event-stream"
        all_headers.update(headers or {})
        return self.request("POST", path, body, all_headers, stream, t_intended_ns)

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> RequestResult:
        return self.request("GET", path, b"", dict(headers or {}), False, None)

    def request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        stream: bool,
        t_intended_ns: int | None,
    ) -> RequestResult:
        head = [f"{method} {self.base_path}{path} HTTP/1.1", f"Host: {self.host_header}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        start = self.clock()
        result = RequestResult(t_intended_ns=t_intended_ns or start, t_start_ns=start)
        for _attempt in range(2):
            conn: _Connection | None = None
            try:
                conn = self._checkout()
                keep = self._exchange(conn, raw, method, stream, result)
            except TimeoutError:
                result.outcome = outcomes.TIMEOUT
                result.error = f"no data for {self.timeout_s:g}s"
                self._discard(conn)
                break
            except (OSError, ProtocolError, _StaleConnection) as exc:
                self._discard(conn)
                if isinstance(exc, _StaleConnection) and conn is not None and conn.reused:
                    # A keep-alive connection the server had already closed: nothing was
                    # processed, so one retry on a fresh connection is safe.
                    result = RequestResult(t_intended_ns=result.t_intended_ns, t_start_ns=start)
                    continue
                result.error = f"{type(exc).__name__}: {exc}"
                result.outcome = outcomes.classify(
                    result.status, stream=stream, connection_failed=True
                )
                result.t_end_ns = self.clock()
                break
            else:
                if keep and len(self._idle) < self._max_idle:
                    conn.reused = True
                    self._idle.append(conn)
                else:
                    conn.sock.close()
                break
        return result

    def _checkout(self) -> _Connection:
        if self._idle:
            return self._idle.pop()
        sock = socket.create_connection((self.hostname, self.port), timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is not None:
            sock = self._ssl.wrap_socket(sock, server_hostname=self.hostname)
        return _Connection(sock)

    @staticmethod
    def _discard(conn: _Connection | None) -> None:
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sock.close()

    def _exchange(
        self, conn: _Connection, raw: bytes, method: str, stream: bool, res: RequestResult
    ) -> bool:
        """Send, then read the whole answer into ``res``; True if the connection is reusable."""
        sock = conn.sock
        clock = self.clock
        sock.settimeout(self.timeout_s)
        sock.sendall(raw)
        res.t_sent_ns = clock()
        buf = b""
        while True:
            data = sock.recv(_RECV_BYTES)
            now = clock()
            if not data:
                if not buf:
                    raise _StaleConnection("connection closed before the status line")
                raise ProtocolError("connection closed inside the response headers")
            res.bytes_received += len(data)
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > 65536:
                raise ProtocolError("response headers larger than 64 KiB")
        res.t_headers_ns = now
        keep_alive = self._parse_head(buf[:end], res)
        rest = buf[end + 4 :]
        status = res.status or 0
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            res.t_end_ns = now
            res.outcome = outcomes.classify(status, stream=False)
            return keep_alive
        is_sse = stream and status == 200 and "event-stream" in res.headers.get("content-type", "")
        sink = _SSESink(res) if is_sse else _BodySink(res)
        dechunker: _Dechunker | None = None
        remaining: int | None = None
        if "chunked" in res.headers.get("transfer-encoding", "").lower():
            dechunker = _Dechunker()
        elif "content-length" in res.headers:
            remaining = int(res.headers["content-length"])
        else:
            keep_alive = False  # body runs until the server closes
        complete = False
        eof = False
        data = rest
        while True:
            if data:
                if dechunker is not None:
                    payload = dechunker.feed(data)
                    complete = dechunker.done
                elif remaining is not None:
                    payload = data[:remaining]
                    remaining -= len(payload)
                    complete = remaining <= 0
                else:
                    payload = data
                if payload:
                    sink.feed(payload, now)
            elif remaining == 0:
                complete = True
            if complete:
                break
            if res.saw_done:
                # [DONE] seen: the terminating chunk should follow at once; do not let a
                # server that keeps the body open hold this user for the full timeout.
                sock.settimeout(min(self.timeout_s, _DONE_DRAIN_S))
            try:
                data = sock.recv(_RECV_BYTES)
            except TimeoutError:
                if res.saw_done:
                    keep_alive = False
                    break
                raise
            now = clock()
            if not data:
                eof = True
                keep_alive = False
                break
            res.bytes_received += len(data)
        sink.close(now)
        res.t_end_ns = now
        if is_sse:
            res.outcome = outcomes.classify(
                status,
                stream=True,
                saw_done=res.saw_done,
                saw_finish=res.finish_reason is not None,
                saw_error_event=res.error is not None,
            )
        else:
            truncated = eof and (dechunker is not None or (remaining or 0) > 0)
            res.outcome = outcomes.classify(status, stream=False, connection_failed=truncated)
            if res.outcome != outcomes.OK and res.error is None:
                res.error = _error_text(res)
        return keep_alive and complete

    @staticmethod
    def _parse_head(head: bytes, res: RequestResult) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ProtocolError(f"bad status line {lines[0][:60]!r}")
        try:
            res.status = int(parts[1])
        except ValueError:
            raise ProtocolError(f"bad status line {lines[0][:60]!r}") from None
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                value = value.strip()
                # Repeated headers join with ", " as RFC 9110 allows for list-valued fields.
                res.headers[key] = f"{res.headers[key]}, {value}" if key in res.headers else value
        connection = res.headers.get("connection", "").lower()
        if parts[0] == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before answering."""


class _BodySink:
    """Keeps (the head of) a non-SSE body, e.g. a JSON answer or an error page."""

    __slots__ = ("_parts", "_res", "_size")

    def __init__(self, res: RequestResult) -> None:
        self._res = res
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, payload: bytes, now: int) -> None:
        if self._size < _BODY_KEEP_BYTES:
            self._parts.append(payload)
            self._size += len(payload)

    def close(self, now: int) -> None:
        self._res.body = b"".join(self._parts)[:_BODY_KEEP_BYTES]


class _SSESink:
    """Decodes SSE events and stamps each with the arrival time of the bytes completing it."""

    __slots__ = ("_decoder", "_general", "_res")

    def __init__(self, res: RequestResult) -> None:
        self._res = res
        self._decoder = SSEDecoder()
        self._general = False

    def feed(self, payload: bytes, now: int) -> None:
        # Fast path for the common frame ``data: {...}\n\n`` arriving whole: parse the JSON
        # bytes directly. Anything else (CR, comments, split or coalesced frames, multi-line
        # data, event names) goes through the general WHATWG decoder.
        if (
            payload.startswith(b"data:")
            and payload.endswith(b"\n\n")
            and payload.count(b"\n") == 2
            and b"\r" not in payload
            and not self._general
        ):
            data = payload[5:-2]
            self._data(data[1:] if data.startswith(b" ") else data, "message", now)
            return
        # Once a frame needed the general decoder it may hold a partial event, so it keeps
        # every later frame of this stream too.
        self._general = True
        for event in self._decoder.feed(payload):
            self._data(event.data.encode(), event.event, now)

    def close(self, now: int) -> None:
        for event in self._decoder.flush():
            self._data(event.data.encode(), event.event, now)

    def _data(self, data: bytes, name: str, now: int) -> None:
        res = self._res
        res.events += 1
        if res.t_first_event_ns is None:
            res.t_first_event_ns = now
        if data.strip() == b"[DONE]":
            res.saw_done = True
            return
        if name == "error":
            res.error = f"in-stream error event: {data[:200].decode('utf-8', 'replace')}"
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            res.malformed_events += 1
            return
        if not isinstance(obj, dict):
            res.malformed_events += 1
            return
        if obj.get("error"):
            res.error = f"in-stream error: {orjson.dumps(obj['error']).decode()[:200]}"
            return
        stamp = obj.get("relaygate_emit_ns")
        stamp_lag = now - stamp if isinstance(stamp, int) else None
        if stamp_lag is not None:
            res.emit_lag_ns.append(stamp_lag)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            completion = usage.get("completion_tokens")
            if isinstance(completion, int):
                res.completion_tokens = completion
            prompt = usage.get("prompt_tokens")
            if isinstance(prompt, int):
                res.prompt_tokens = prompt
        token = False
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and (
                delta.get("content")
                or delta.get("reasoning_content")
                or delta.get("reasoning")
                or delta.get("tool_calls")
            ):
                token = True
            finish = choice.get("finish_reason")
            if finish:
                res.finish_reason = str(finish)
        if token:
            if res.t_first_token_ns is None:
                res.t_first_token_ns = now
                res.first_token_emit_lag_ns = stamp_lag
            res.t_last_token_ns = now
            res.token_event_ns.append(now)
            if stamp_lag is not None:
                res.token_emit_lag_ns.append(stamp_lag)


def _error_text(res: RequestResult) -> str:
    """A short reason for a failed request: the OpenAI error message when there is one."""
    data = res.json()
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        code = err.get("code") or err.get("type") or ""
        return f"HTTP {res.status} {code}: {err.get('message', '')}"[:300]
    snippet = res.body[:120].decode("utf-8", "replace").strip()
    return f"HTTP {res.status}: {snippet}" if snippet else f"HTTP {res.status}"
