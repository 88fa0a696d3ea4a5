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

"Arrival" is the kernel's receive timestamp of the bytes (``SO_TIMESTAMPNS``, plain HTTP on
Linux; converted from CLOCK_REALTIME to CLOCK_MONOTONIC at the read), so the time a busy
client takes to get round to a socket is not added to TTFT/ITL; that delay is measured
instead (``recv_lag_ns``, kernel arrival -> ``recv`` returned). Without kernel stamps (TLS,
another OS, ``kernel_stamps=False``) arrival is when ``recv`` returned.

Bounds (every request ends in an outcome class, :mod:`relaygate.load.outcomes`):

``timeout_s`` (default 60 s)
    idle: no byte for this long (connect, headers or body) -> ``timeout``
``request_timeout_s`` (default :data:`DEFAULT_REQUEST_TIMEOUT_S` = 300 s)
    total deadline per exchange from ``t_start_ns`` (connect, send, headers, whole body) ->
    ``request_timeout``; long but finite, so a stream that drips a token every 100 ms
    forever still ends
``max_response_bytes`` (default :data:`DEFAULT_MAX_RESPONSE_BYTES` = 16 MiB)
    head + body bytes read per exchange -> ``oversize``; memory per request stays bounded
    by it (a non-stream body keeps only its first 64 KiB)
``max_tokens`` (per call, :meth:`TimingClient.post_json`)
    a stream with more than ``max_tokens + max(8, max_tokens // 10)`` token events ->
    ``overrun``

The reader (``_Reader``) enforces the deadline and the byte cap for the whole answer (connect
and send only get the time left). Under gevent the deadline uses the stream's one idle timer:
in the last idle period before the deadline that timer is shortened to it on each read. A
request that is aborted (``request_timeout``, ``oversize``, ``overrun``), fails or raises
closes its connection, which is never reused. :meth:`TimingClient.request` is one exception
boundary: anything the client did not expect becomes ``client_exception`` with the exception
in ``error`` (keys masked); only ``KeyboardInterrupt``, ``SystemExit`` and gevent's
``GreenletExit``/``Timeout`` (``BaseException``: the end of a run) propagate. Buffers
holding a partial event or line grow in place and are searched only where new bytes arrived,
so one huge event costs linear time.

Hot path (one read per SSE event under load): under gevent a ``cooperative`` factory (see
:mod:`relaygate.load.geventio`) reads the underlying non-blocking socket and waits on its
read watcher, with one timer per stream for the idle timeout instead of one ``Timeout`` per
read; SSE frames are split with ``bytes.find``; a plain token chunk is recognised by byte
search (``_fast_token``), and only the first token, role/finish/usage chunks and anything
unusual are parsed as JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from relaygate.keys import mask_secrets
from relaygate.load import outcomes
from relaygate.sse import SSEDecoder

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "CooperativeFactory",
    "CooperativeWait",
    "ProtocolError",
    "RequestResult",
    "TimingClient",
    "kernel_stamps_supported",
]

DEFAULT_REQUEST_TIMEOUT_S = 300.0
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024

_RECV_BYTES = 262144
_HEAD_MAX_BYTES = 65536
_CHUNK_LINE_MAX_BYTES = 4096  # a chunk-size or trailer line (RFC 9112 sets no limit; we do)
_OVERRUN_MARGIN_MIN = 8
_HEX = b"0123456789abcdefABCDEF"
# header names whose values carry credentials: masked in every error text
_SECRET_HEADER_WORDS = ("auth", "key", "token", "cookie", "secret")
_BODY_KEEP_BYTES = 65536
_DONE_DRAIN_S = 2.0
# SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) is 35 on every Linux architecture Python runs on;
# the stdlib does not export the constant.
_SO_TIMESTAMPNS: int | None = (
    getattr(socket, "SO_TIMESTAMPNS", 35) if sys.platform.startswith("linux") else None
)
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
_ANC_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
_MAX_KERNEL_AGE_NS = 10_000_000_000  # a kernel stamp older than this is not trusted
_OFFSET_READ_MAX_NS = 20_000  # a realtime/monotonic pair read further apart is not used
_NS_PER_S = 1_000_000_000


def kernel_stamps_supported() -> bool:
    """True when this platform can stamp received bytes in the kernel (Linux, 64-bit)."""
    return _SO_TIMESTAMPNS is not None and _ANC_BYTES > 0 and struct.calcsize("@l") == 8


class CooperativeWait(Protocol):
    """Waits until a socket is readable without blocking other users (gevent, …)."""

    timeout_s: float

    def wait(self) -> None:
        """Return when readable; raise ``TimeoutError`` after ``timeout_s`` with no data."""

    def close(self) -> None:
        """Stop the idle timer; called once the response is read (or failed)."""


# (socket, idle timeout s, last-activity clock) -> (non-blocking raw socket, waiter) or None
CooperativeFactory = Callable[
    [socket.socket, float, Callable[[], int]], "tuple[Any, CooperativeWait] | None"
]


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 we can frame (bad status line, chunk size, …)."""


class _Abort(Exception):
    """The client ends the exchange on purpose; ``outcome`` is the class it lands in."""

    outcome = outcomes.CLIENT_EXCEPTION


class _DeadlineExceeded(_Abort):
    outcome = outcomes.REQUEST_TIMEOUT


class _Oversize(_Abort):
    outcome = outcomes.OVERSIZE


class _Overrun(_Abort):
    outcome = outcomes.OVERRUN


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
    # per token event: kernel arrival -> recv returned (only with kernel stamps)
    recv_lag_ns: list[int] = dataclasses.field(default_factory=list)
    kernel_stamps: bool = False
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


def _chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions after ``;`` ignored); -1 if it is not hex.

    Stricter than ``int(…, 16)``, which also takes ``-5``, ``+5``, ``0x5`` and ``1_0``.
    """
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 15 or digits.strip(_HEX):
        return -1
    return int(digits, 16)


class _Dechunker:
    """Incremental ``Transfer-Encoding: chunked`` decoder.

    Only an incomplete size, CRLF or trailer line is kept between reads (at most
    ``_CHUNK_LINE_MAX_BYTES``); chunk data passes straight through.
    """

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
            if 0 < nl <= 16:
                line = data[:nl]
                # only hex digits (and the CR): extensions and anything odd take the slow path
                size = int(line, 16) if line.translate(None, _HEX) in (b"\r", b"") else -1
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
                if size - pos > _CHUNK_LINE_MAX_BYTES:
                    raise ProtocolError(f"chunk line longer than {_CHUNK_LINE_MAX_BYTES} bytes")
                break
            line = buf[pos:nl].strip()
            pos = nl + 1
            if self._state == 0:
                chunk = _chunk_size(line)
                if chunk < 0:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}")
                if chunk == 0:
                    self._state = 3
                else:
                    self._remaining = chunk
                    self._state = 1
            elif self._state == 2:
                if line:
                    raise ProtocolError(f"chunk data longer than its size: {line[:40]!r}")
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
    prober can run many requests at once through one client. ``timeout_s`` is the idle
    timeout, ``request_timeout_s`` the total deadline of one exchange (None: the default,
    :data:`DEFAULT_REQUEST_TIMEOUT_S`), ``max_response_bytes`` the cap on the bytes read for
    one answer (see the module docstring).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        request_timeout_s: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        clock: Callable[[], int] = time.monotonic_ns,
        max_idle: int = 64,
        kernel_stamps: bool = True,
        cooperative: CooperativeFactory | None = None,
        headers: Mapping[str, str] | None = None,
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
        if timeout_s <= 0 or (request_timeout_s is not None and request_timeout_s <= 0):
            raise ValueError("timeouts must be positive seconds")
        if max_response_bytes <= 0:
            raise ValueError(f"max_response_bytes must be positive, got {max_response_bytes}")
        self.timeout_s = timeout_s
        self.request_timeout_s = (
            DEFAULT_REQUEST_TIMEOUT_S if request_timeout_s is None else request_timeout_s
        )
        self.max_response_bytes = max_response_bytes
        self.clock = clock
        self._in_flight = 0
        self._idle: list[_Connection] = []
        self._max_idle = max_idle
        self._ssl = ssl.create_default_context() if self.scheme == "https" else None
        # Kernel receive stamps are CLOCK_REALTIME, converted with the monotonic clock; a
        # custom clock (tests) or TLS (no recvmsg on SSL sockets) reads user-space time.
        self.kernel_stamps = (
            kernel_stamps
            and clock is time.monotonic_ns
            and self._ssl is None
            and kernel_stamps_supported()
        )
        self.cooperative = cooperative
        # Sent on every request (a call's own headers win), e.g. a relay's routing headers.
        self.headers = dict(headers or {})

    def in_flight(self) -> int:
        """Requests started through this client that have not returned yet."""
        return self._in_flight

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
        max_tokens: int | None = None,
    ) -> RequestResult:
        """POST a JSON body and time the answer (SSE when ``stream``).

        ``max_tokens`` (what the body asked for): a stream with more than
        ``max_tokens + max(8, max_tokens // 10)`` token events is aborted as ``overrun``.
        """
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        all_headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if stream:
            all_headers["Accept"] = "text/event-stream"
        all_headers.update(headers or {})
        return self.request(
            "POST", path, body, all_headers, stream, t_intended_ns, max_tokens=max_tokens
        )

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
        *,
        max_tokens: int | None = None,
    ) -> RequestResult:
        """Send one request and read the whole answer; always returns a classified result.

        The one exception boundary of the client: whatever goes wrong ends in an outcome
        class; only ``BaseException`` that is not ``Exception`` (interrupts, gevent's
        ``GreenletExit``/``Timeout`` ending a run) propagates.
        """
        start = self.clock()
        result = RequestResult(t_intended_ns=t_intended_ns or start, t_start_ns=start)
        self._in_flight += 1
        try:
            if self.headers:
                headers = {**self.headers, **headers}
            deadline_ns = start + int(self.request_timeout_s * _NS_PER_S)
            token_limit = sys.maxsize
            if max_tokens is not None:
                token_limit = max_tokens + max(_OVERRUN_MARGIN_MIN, max_tokens // 10)
            result = self._request(
                method, path, body, headers, stream, result, deadline_ns, token_limit
            )
        except Exception as exc:  # the boundary: every request ends in an outcome class
            result.outcome = outcomes.CLIENT_EXCEPTION
            result.error = f"{type(exc).__name__}: {exc}"
            result.t_end_ns = self.clock()
        finally:
            self._in_flight -= 1
        if result.error:
            result.error = _mask(result.error, headers)
        return result

    def _request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        stream: bool,
        result: RequestResult,
        deadline_ns: int,
        token_limit: int,
    ) -> RequestResult:
        head = [f"{method} {self.base_path}{path} HTTP/1.1", f"Host: {self.host_header}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        start = result.t_start_ns
        fresh = False
        for _attempt in range(2):
            conn: _Connection | None = None
            try:
                conn = self._checkout(deadline_ns, fresh=fresh)
                keep = self._exchange(conn, raw, method, stream, result, deadline_ns, token_limit)
            except TimeoutError:
                result.outcome = outcomes.TIMEOUT
                result.error = f"no data for {self.timeout_s:g}s"
                result.t_end_ns = self.clock()
                self._discard(conn)
                break
            except _Abort as exc:
                result.outcome = exc.outcome
                result.error = str(exc)
                result.t_end_ns = self.clock()
                self._discard(conn)
                break
            except (OSError, ProtocolError, _StaleConnection) as exc:
                self._discard(conn)
                if isinstance(exc, _StaleConnection) and conn is not None and conn.reused:
                    # A keep-alive connection the server had already closed: nothing was
                    # processed, so one retry on a fresh connection is safe. The other idle
                    # connections are as old or older (a server's idle timeout closed them
                    # all), so they go too, and the retry never takes one of them.
                    result = RequestResult(t_intended_ns=result.t_intended_ns, t_start_ns=start)
                    self.close()
                    fresh = True
                    continue
                result.error = f"{type(exc).__name__}: {exc}"
                # a cut stream is truncated; a cut (or unframeable) JSON answer is not a stream
                sse = stream and "event-stream" in result.headers.get("content-type", "")
                result.outcome = outcomes.classify(
                    result.status, stream=sse, connection_failed=True
                )
                result.t_end_ns = self.clock()
                break
            except BaseException:
                self._discard(conn)
                raise
            else:
                if keep and len(self._idle) < self._max_idle:
                    conn.reused = True
                    self._idle.append(conn)
                else:
                    conn.sock.close()
                break
        return result

    def _phase_timeout_s(self, deadline_ns: int) -> float:
        """Socket timeout for connect/send: the idle timeout, or less near the deadline."""
        left_s = (deadline_ns - self.clock()) / _NS_PER_S
        if left_s <= 0:
            raise _DeadlineExceeded(_deadline_text(self.request_timeout_s))
        return min(self.timeout_s, left_s)

    def _checkout(self, deadline_ns: int | None = None, *, fresh: bool = False) -> _Connection:
        if self._idle and not fresh:
            return self._idle.pop()
        timeout_s = self.timeout_s if deadline_ns is None else self._phase_timeout_s(deadline_ns)
        try:
            sock = socket.create_connection((self.hostname, self.port), timeout=timeout_s)
        except TimeoutError:
            if timeout_s < self.timeout_s:
                raise _DeadlineExceeded(_deadline_text(self.request_timeout_s)) from None
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.kernel_stamps and _SO_TIMESTAMPNS is not None:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        if self._ssl is not None:
            sock = self._ssl.wrap_socket(sock, server_hostname=self.hostname)
        return _Connection(sock)

    @staticmethod
    def _discard(conn: _Connection | None) -> None:
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sock.close()

    def _exchange(
        self,
        conn: _Connection,
        raw: bytes,
        method: str,
        stream: bool,
        res: RequestResult,
        deadline_ns: int,
        token_limit: int,
    ) -> bool:
        """Send, then read the whole answer into ``res``; True if the connection is reusable."""
        sock = conn.sock
        timeout_s = self._phase_timeout_s(deadline_ns)
        sock.settimeout(timeout_s)
        try:
            sock.sendall(raw)
        except TimeoutError:
            if timeout_s < self.timeout_s:
                raise _DeadlineExceeded(_deadline_text(self.request_timeout_s)) from None
            raise
        res.t_sent_ns = self.clock()
        reader = _Reader(
            sock,
            self.clock,
            self.kernel_stamps,
            self.cooperative,
            self.timeout_s,
            deadline_ns=deadline_ns,
            request_timeout_s=self.request_timeout_s,
            max_bytes=self.max_response_bytes,
        )
        reader.floor = res.t_sent_ns
        res.kernel_stamps = reader.kernel
        try:
            return self._read_answer(reader, method, stream, res, token_limit)
        finally:
            res.bytes_received = reader.received
            reader.close()

    def _read_answer(
        self, reader: _Reader, method: str, stream: bool, res: RequestResult, token_limit: int
    ) -> bool:
        buf = bytearray()
        while True:
            data = reader.read()
            if not data:
                if not buf:
                    raise _StaleConnection("connection closed before the status line")
                raise ProtocolError("connection closed inside the response headers")
            scan = max(len(buf) - 3, 0)
            buf += data
            end = buf.find(b"\r\n\r\n", scan)
            if end >= 0:
                break
            if len(buf) > _HEAD_MAX_BYTES:
                raise ProtocolError("response headers larger than 64 KiB")
        now = reader.stamp
        res.t_headers_ns = now
        keep_alive = self._parse_head(bytes(buf[:end]), res)
        rest = bytes(buf[end + 4 :])
        status = res.status or 0
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            res.t_end_ns = now
            res.outcome = outcomes.classify(status, stream=False)
            return keep_alive
        is_sse = stream and status == 200 and "event-stream" in res.headers.get("content-type", "")
        sink: _SSESink | _BodySink = (
            _SSESink(res, reader, token_limit) if is_sse else _BodySink(res)
        )
        feed = sink.feed
        dechunker: _Dechunker | None = None
        remaining: int | None = None
        if "chunked" in res.headers.get("transfer-encoding", "").lower():
            dechunker = _Dechunker()
        elif "content-length" in res.headers:
            remaining = _content_length(res.headers["content-length"])
        else:
            keep_alive = False  # body runs until the server closes
        complete = False
        eof = False
        draining = False
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
                    feed(payload, now)
            elif remaining == 0:
                complete = True
            if complete:
                break
            if res.saw_done and not draining:
                # [DONE] seen: the terminating chunk should follow at once; do not let a
                # server that keeps the body open hold this user for the full timeout.
                draining = True
                reader.set_timeout(min(self.timeout_s, _DONE_DRAIN_S))
            try:
                data = reader.read()
            except TimeoutError:
                if res.saw_done:
                    keep_alive = False
                    break
                raise
            now = reader.stamp
            if not data:
                eof = True
                keep_alive = False
                break
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


def _content_length(value: str) -> int:
    """A ``Content-Length`` value; repeated identical values (``"5, 5"``) count once.

    RFC 9110 §8.6 lets a recipient accept a list of identical values; anything else (differing
    values, signs, non-ASCII digits) cannot frame the body.
    """
    values = {part.strip() for part in value.split(",")}
    if len(values) == 1:
        (single,) = values
        if single.isascii() and single.isdigit():
            return int(single)
    raise ProtocolError(f"bad Content-Length {value[:60]!r}")


def _deadline_text(request_timeout_s: float) -> str:
    return f"exchange not complete within request_timeout_s={request_timeout_s:g}s"


def _mask(text: str, headers: Mapping[str, str]) -> str:
    """``text`` with every credential-carrying header value (and any key) masked."""
    secrets: list[str] = []
    for name, value in headers.items():
        if any(word in name.lower() for word in _SECRET_HEADER_WORDS):
            secrets.append(value)
            scheme, _, credential = value.partition(" ")
            if credential and scheme.isalpha():
                secrets.append(credential.strip())
    return mask_secrets(text, *sorted(secrets, key=len, reverse=True))


class _Reader:
    """Reads one response: ``recv`` (``recvmsg`` with kernel stamps) and when bytes arrived.

    After :meth:`read`, ``stamp`` is the arrival time of the bytes returned (kernel receive
    stamp of the last segment read, never later than ``now``) and ``now`` the time ``recv``
    returned. With a cooperative waiter (gevent) the raw non-blocking socket is read and the
    waiter parks the greenlet until the socket is readable: one wake-up per read, no
    ``Timeout`` object, no failed ``recv`` first.

    The exchange's bounds live here: ``received`` counts every byte read (head and body) and
    passing ``max_bytes`` raises ``_Oversize``; no read starts after ``deadline_ns`` and no
    wait lasts beyond it (the idle timeout is shortened to the time left once that is less),
    else ``_DeadlineExceeded``.
    """

    __slots__ = (
        "_capped",
        "_coop",
        "_deadline_ns",
        "_idle_s",
        "_max_bytes",
        "_offset",
        "_raw",
        "_request_timeout_s",
        "_sock",
        "clock",
        "floor",
        "kernel",
        "last_ns",
        "now",
        "received",
        "stamp",
    )

    def __init__(
        self,
        sock: socket.socket,
        clock: Callable[[], int],
        kernel: bool,
        cooperative: CooperativeFactory | None,
        timeout_s: float,
        *,
        deadline_ns: int,
        request_timeout_s: float,
        max_bytes: int,
    ) -> None:
        self._sock = sock
        self.clock = clock
        self.kernel = kernel
        self.now = self.stamp = self.last_ns = self.floor = clock()
        self._offset = _realtime_offset() if kernel else 0
        self._idle_s = timeout_s
        self._capped = False
        self._request_timeout_s = request_timeout_s
        self._deadline_ns = deadline_ns
        self._max_bytes = max_bytes
        self.received = 0
        self._coop: CooperativeWait | None = None
        raw: Any = sock
        if cooperative is not None:
            io = cooperative(sock, timeout_s, self._last_activity)
            if io is not None:
                raw, self._coop = io
        self._raw = raw

    def _last_activity(self) -> int:
        return self.last_ns

    def set_timeout(self, seconds: float) -> None:
        """The idle timeout from now on (the total deadline still caps every wait)."""
        self._idle_s = seconds
        self._capped = False
        self._apply(seconds)

    def _apply(self, seconds: float) -> None:
        if self._coop is not None:
            self._coop.timeout_s = seconds
        else:
            self._sock.settimeout(seconds)

    def close(self) -> None:
        if self._coop is not None:
            self._coop.close()
            self._coop = None

    def _deadline(self) -> _DeadlineExceeded:
        return _DeadlineExceeded(_deadline_text(self._request_timeout_s))

    def read(self) -> bytes:
        data: bytes
        # The deadline, measured from the last read (the idle clock's origin, so the
        # cooperative timer fires at the deadline itself): only the last idle period before
        # it costs a timeout update per read.
        left_ns = self._deadline_ns - self.last_ns
        if left_ns <= 0:
            raise self._deadline()
        if left_ns < self._idle_s * _NS_PER_S:
            self._capped = True
            self._apply(left_ns / _NS_PER_S)
        raw = self._raw
        coop = self._coop
        try:
            if coop is not None:
                # Under load the socket is empty when we get here (every read drains it):
                # wait first instead of paying a failed recv + exception per event.
                coop.wait()
            while True:
                try:
                    if self.kernel:
                        data, anc, _flags, _addr = raw.recvmsg(_RECV_BYTES, _ANC_BYTES)
                    else:
                        data = raw.recv(_RECV_BYTES)
                        anc = None
                    break
                except (BlockingIOError, InterruptedError):
                    if coop is None:
                        raise
                    coop.wait()
        except TimeoutError:
            if self._capped:
                raise self._deadline() from None
            raise
        received = self.received + len(data)
        self.received = received
        if received > self._max_bytes:
            raise _Oversize(f"answer larger than max_response_bytes={self._max_bytes}")
        now = self.clock()
        self.now = self.last_ns = now
        stamp = now
        if anc:
            # CLOCK_REALTIME -> CLOCK_MONOTONIC: the offset is re-read when the two clock
            # reads are close together (not preempted in between), else the last good one.
            real = time.time_ns()
            after = time.monotonic_ns()
            if after - now < _OFFSET_READ_MAX_NS:
                self._offset = real - ((now + after) >> 1)
            for level, kind, payload in anc:
                if kind == _SO_TIMESTAMPNS and level == socket.SOL_SOCKET:
                    sec, nsec = _TIMESPEC.unpack_from(payload)
                    kernel = sec * _NS_PER_S + nsec - self._offset
                    if now - _MAX_KERNEL_AGE_NS < kernel < now:
                        # never before the request was sent: t_sent_ns is read after
                        # sendall() returned, so it can lag the wire by a few µs
                        stamp = kernel if kernel > self.floor else self.floor
        self.stamp = stamp
        return data


def _realtime_offset() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC in ns, from the closest of a few paired reads."""
    best = None
    offset = 0
    for _ in range(5):
        before = time.monotonic_ns()
        real = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best:
            best = after - before
            offset = real - ((before + after) >> 1)
    return offset


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


_STAMP_RE = re.compile(rb'"relaygate_emit_ns":(\d+)[,}]')
_CONTENT = b'"content":"'


def _fast_token(data: bytes) -> int | None:
    """Byte-level check for the common token chunk; returns its emit stamp (0 if none).

    ``None`` means "parse it as JSON": anything but exactly one ``delta`` with non-empty
    ``content`` written ``"content":"…``, no non-null ``finish_reason``/``usage``, no
    ``error``, ``tool_calls`` or reasoning keys, and at most one well-formed stamp. Key names
    found this way are real keys: inside JSON strings a quote is always escaped.
    """
    if data[:1] != b"{" or data[-1:] != b"}":
        return None
    pos = data.find(_CONTENT)
    if pos < 0 or data[pos + 11 : pos + 12] in (b'"', b""):
        return None
    if (
        data.count(b'"content"') != 1
        or data.count(b'"delta"') != 1
        or b'"error"' in data
        or b'"tool_calls"' in data
        or b'"reasoning' in data
        or data.count(b'"finish_reason"') != data.count(b'"finish_reason":null')
        or data.count(b'"usage"') != data.count(b'"usage":null')
    ):
        return None
    if b'"relaygate_emit_ns"' not in data:
        return 0
    match = _STAMP_RE.search(data, pos)
    if match is None or data.count(b'"relaygate_emit_ns"') != 1:
        return None
    return int(match.group(1))


class _TokenTemplate:
    """The bytes around the content of a token chunk that passed :func:`_fast_token`.

    Chunks of one stream differ only in the content string and the stamp (same id,
    ``created``, model, key order). A chunk that starts with ``head``, has a content string
    (first unescaped quote ends it) and then exactly ``tail`` (plus stamp digits and ``}``)
    has the same structure as the validated one, so it is a token chunk too: one
    ``startswith``, one ``find`` and one compare instead of a dozen scans.
    """

    __slots__ = ("head", "stamped", "tail")

    def __init__(self, head: bytes, tail: bytes, stamped: bool) -> None:
        self.head = head
        self.tail = tail
        self.stamped = stamped

    @classmethod
    def of(cls, data: bytes) -> _TokenTemplate | None:
        pos = data.find(_CONTENT)
        if pos < 0:
            return None
        start = pos + len(_CONTENT)
        end = _string_end(data, start)
        if end < 0:
            return None
        tail = data[end:]
        mark = tail.find(b'"relaygate_emit_ns":')
        if mark < 0:
            return cls(data[:start], tail, False)
        digits = tail[mark + 20 : -1]
        if not digits.isdigit() or tail[-1:] != b"}":
            return None
        return cls(data[:start], tail[: mark + 20], True)

    def match(self, data: bytes) -> int | None:
        """The emit stamp (0 without) if ``data`` fits the template, else None."""
        head = self.head
        if not data.startswith(head):
            return None
        start = len(head)
        end = _string_end(data, start)
        if end <= start:  # no end, or empty content (not a token)
            return None
        tail = self.tail
        if not self.stamped:
            return 0 if len(data) - end == len(tail) and data.startswith(tail, end) else None
        if not data.startswith(tail, end) or data[-1:] != b"}":
            return None
        digits = data[end + len(tail) : -1]
        return int(digits) if digits.isdigit() else None


def _string_end(data: bytes, start: int) -> int:
    """Index of the quote ending the JSON string that starts at ``start`` (-1 if none)."""
    end = data.find(b'"', start)
    while end > start and data[end - 1] == 0x5C:  # backslash: count the run, odd = escaped
        run = 1
        while end - 1 - run >= start and data[end - 1 - run] == 0x5C:
            run += 1
        if run % 2 == 0:
            break
        end = data.find(b'"', end + 1)
    return end


class _SSESink:
    """Splits SSE events and stamps each with the arrival of the bytes completing it.

    Fast path (no ``\\r`` in the stream): events are cut at ``\\n\\n`` with ``bytes.find``;
    a single ``data:`` line is taken as is, any other event (comments, ``event:``, several
    lines) goes through the WHATWG decoder one whole event at a time, so the decoder never
    holds a partial event. A stream with a ``\\r`` (CRLF or CR line ends) goes to the decoder
    from there on.

    A partial event waits in a ``bytearray`` that grows in place; each read searches only its
    new bytes for the end of the event, so an event arriving in many reads costs time linear
    in its size. ``work_bytes`` counts the bytes searched or copied on that path (tests hold
    it linear). More than ``token_limit`` token events raise ``_Overrun``.
    """

    __slots__ = (
        "_decoder",
        "_general",
        "_pending",
        "_reader",
        "_res",
        "_template",
        "_token_limit",
        "work_bytes",
    )

    def __init__(
        self, res: RequestResult, reader: _Reader | None = None, token_limit: int = sys.maxsize
    ) -> None:
        self._res = res
        self._reader = reader
        self._decoder = SSEDecoder()
        self._general = False
        self._pending = bytearray()
        self._template: _TokenTemplate | None = None
        self._token_limit = token_limit
        self.work_bytes = 0

    def feed(self, payload: bytes, now: int) -> None:
        if self._general:
            for event in self._decoder.feed(payload):
                self._data(event.data.encode(), event.event, now)
            return
        pending = self._pending
        if pending:
            if b"\r" in payload:
                self._to_general(bytes(pending) + payload, now)
                return
            scan = len(pending) - 1  # a "\n\n" may straddle the old and the new bytes
            pending += payload
            end = pending.find(b"\n\n", scan)
            self.work_bytes += len(pending) - scan
            if end < 0:
                return
            buf = bytes(pending)
            self.work_bytes += len(buf)
            pending.clear()
        else:
            if b"\r" in payload:
                self._to_general(payload, now)
                return
            buf = payload
            end = buf.find(b"\n\n")
            if end < 0:
                pending += buf
                return
        pos = 0
        while end >= 0:
            if end > pos:
                if buf.startswith(b"data:", pos) and buf.find(b"\n", pos, end) < 0:
                    if buf[pos + 5 : pos + 6] == b" ":
                        self._data(buf[pos + 6 : end], "message", now)
                    else:
                        self._data(buf[pos + 5 : end], "message", now)
                else:
                    for event in self._decoder.feed(buf[pos : end + 2]):
                        self._data(event.data.encode(), event.event, now)
            pos = end + 2
            end = buf.find(b"\n\n", pos)
        if pos < len(buf):
            pending += memoryview(buf)[pos:]

    def _to_general(self, data: bytes, now: int) -> None:
        self._general = True
        self._pending.clear()
        self.feed(data, now)

    def close(self, now: int) -> None:
        if self._pending:
            for event in self._decoder.feed(bytes(self._pending)):
                self._data(event.data.encode(), event.event, now)
            self._pending.clear()
        for event in self._decoder.flush():
            self._data(event.data.encode(), event.event, now)

    def _data(self, data: bytes, name: str, now: int) -> None:
        res = self._res
        res.events += 1
        if res.t_first_event_ns is None:
            res.t_first_event_ns = now
        if name == "message" and res.t_first_token_ns is not None:
            template = self._template
            stamp = None if template is None else template.match(data)
            if stamp is None:
                stamp = _fast_token(data)
                if stamp is not None and template is None:
                    self._template = _TokenTemplate.of(data)
            if stamp is not None:
                # Token chunk after the first: stamps only, no JSON.
                res.t_last_token_ns = now
                tokens = res.token_event_ns
                tokens.append(now)
                if stamp:
                    lag = now - stamp
                    res.emit_lag_ns.append(lag)
                    res.token_emit_lag_ns.append(lag)
                reader = self._reader
                if reader is not None and reader.kernel:
                    res.recv_lag_ns.append(reader.now - now)
                if len(tokens) > self._token_limit:
                    raise self._overrun()
                return
        self._parse(data, name, now)

    def _overrun(self) -> _Overrun:
        return _Overrun(
            f"{len(self._res.token_event_ns)} token events, more than max_tokens allows "
            f"({self._token_limit} with the margin)"
        )

    def _parse(self, data: bytes, name: str, now: int) -> None:
        res = self._res
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
            reader = self._reader
            if reader is not None and reader.kernel:
                res.recv_lag_ns.append(reader.now - now)
            if len(res.token_event_ns) > self._token_limit:
                raise self._overrun()


def _error_text(res: RequestResult) -> str:
    """A short reason for a failed request: the OpenAI error message when there is one."""
    data = res.json()
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        code = err.get("code") or err.get("type") or ""
        return f"HTTP {res.status} {code}: {err.get('message', '')}"[:300]
    snippet = res.body[:120].decode("utf-8", "replace").strip()
    return f"HTTP {res.status}: {snippet}" if snippet else f"HTTP {res.status}"
