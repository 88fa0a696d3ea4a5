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
and send only get the time left); the SSE sink counts token events against ``max_tokens``.
Under gevent the deadline uses the stream's one idle timer: in the last idle period before
the deadline that timer is shortened to it on each read. A request that is aborted
(``request_timeout``, ``oversize``, ``overrun``), fails or raises closes its connection,
which is never reused. :meth:`TimingClient.request` is one exception boundary: anything the
client did not expect becomes ``client_exception`` with the exception in ``error`` (keys
masked); only ``KeyboardInterrupt``, ``SystemExit`` and gevent's ``GreenletExit``/``Timeout``
(``BaseException``: the end of a run) propagate. Buffers holding a partial event or line
grow in place and are searched only where new bytes arrived, so one huge event costs linear
time.

Hot path (one read per SSE event under load): under gevent a ``cooperative`` factory (see
:mod:`relaygate.load.geventio`) reads the underlying non-blocking socket and waits on its
read watcher, with one timer per stream for the idle timeout instead of one ``Timeout`` per
read; the SSE sink splits frames with ``bytes.find`` and recognises a plain token chunk by
byte search, parsing only the first token, role/finish/usage chunks and anything unusual as
JSON.

This module owns the exchange: :class:`TimingClient`, :class:`RequestResult`, the socket
reader and with it the deadline, the byte cap and the one exception boundary. The rest lives
by idea: :mod:`relaygate.load.http11` (HTTP/1.1 framing, the keep-alive pool),
:mod:`relaygate.load.body_sinks` (SSE events with the token fast path, other bodies) and
:mod:`relaygate.load.stamps` (kernel receive stamps on the monotonic clock).
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from relaygate.keys import mask_secrets
from relaygate.load import outcomes
from relaygate.load.body_sinks import BodySink, Overrun, SSESink
from relaygate.load.http11 import (
    Connection,
    ConnectionPool,
    Dechunker,
    ProtocolError,
    StaleConnection,
    content_length,
    parse_head,
    read_head,
    render_request,
)
from relaygate.load.stamps import (
    ANC_BYTES,
    MAX_KERNEL_AGE_NS,
    NS_PER_S,
    OFFSET_READ_MAX_NS,
    SO_TIMESTAMPNS,
    TIMESPEC,
    kernel_stamps_supported,
    realtime_offset,
)

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
_OVERRUN_MARGIN_MIN = 8
# header names whose values carry credentials: masked in every error text
_SECRET_HEADER_WORDS = ("auth", "key", "token", "cookie", "secret")
_DONE_DRAIN_S = 2.0


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


class _Abort(Exception):
    """The client ends the exchange on purpose; ``outcome`` is the class it lands in."""

    outcome = outcomes.CLIENT_EXCEPTION


class _DeadlineExceeded(_Abort):
    outcome = outcomes.REQUEST_TIMEOUT


class _Oversize(_Abort):
    outcome = outcomes.OVERSIZE


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
        tls = ssl.create_default_context() if self.scheme == "https" else None
        # Kernel receive stamps are CLOCK_REALTIME, converted with the monotonic clock; a
        # custom clock (tests) or TLS (no recvmsg on SSL sockets) reads user-space time.
        self.kernel_stamps = (
            kernel_stamps
            and clock is time.monotonic_ns
            and tls is None
            and kernel_stamps_supported()
        )
        self._pool = ConnectionPool(
            self.hostname,
            self.port,
            tls=tls,
            kernel_stamps=self.kernel_stamps,
            max_idle=max_idle,
        )
        self.cooperative = cooperative
        # Sent on every request (a call's own headers win), e.g. a relay's routing headers.
        self.headers = dict(headers or {})

    def in_flight(self) -> int:
        """Requests started through this client that have not returned yet."""
        return self._in_flight

    def close(self) -> None:
        """Close the idle connections (the client stays usable: it reconnects)."""
        self._pool.close()

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
            deadline_ns = start + int(self.request_timeout_s * NS_PER_S)
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
        raw = render_request(method, self.base_path + path, self.host_header, headers, body)
        start = result.t_start_ns
        pool = self._pool
        fresh = False
        for _attempt in range(2):
            conn: Connection | None = None
            try:
                conn = self._checkout(deadline_ns, fresh=fresh)
                keep = self._exchange(conn, raw, method, stream, result, deadline_ns, token_limit)
            except TimeoutError:
                result.outcome = outcomes.TIMEOUT
                result.error = f"no data for {self.timeout_s:g}s"
                result.t_end_ns = self.clock()
                pool.discard(conn)
                break
            except (_Abort, Overrun) as exc:
                result.outcome = exc.outcome
                result.error = str(exc)
                result.t_end_ns = self.clock()
                pool.discard(conn)
                break
            except (OSError, ProtocolError, StaleConnection) as exc:
                pool.discard(conn)
                if isinstance(exc, StaleConnection) and conn is not None and conn.reused:
                    # A keep-alive connection the server had already closed: nothing was
                    # processed, so one retry on a fresh connection is safe. The other idle
                    # connections are as old or older (a server's idle timeout closed them
                    # all), so they go too, and the retry never takes one of them.
                    result = RequestResult(t_intended_ns=result.t_intended_ns, t_start_ns=start)
                    pool.close()
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
                pool.discard(conn)
                raise
            else:
                pool.release(conn, keep)
                break
        return result

    def _phase_timeout_s(self, deadline_ns: int) -> float:
        """Socket timeout for connect/send: the idle timeout, or less near the deadline."""
        left_s = (deadline_ns - self.clock()) / NS_PER_S
        if left_s <= 0:
            raise _DeadlineExceeded(_deadline_text(self.request_timeout_s))
        return min(self.timeout_s, left_s)

    def _checkout(self, deadline_ns: int | None = None, *, fresh: bool = False) -> Connection:
        """An idle connection (unless ``fresh``), else a new one within the time left."""
        conn = None if fresh else self._pool.take_idle()
        if conn is not None:
            return conn
        timeout_s = self.timeout_s if deadline_ns is None else self._phase_timeout_s(deadline_ns)
        try:
            return self._pool.connect(timeout_s)
        except TimeoutError:
            if timeout_s < self.timeout_s:
                raise _DeadlineExceeded(_deadline_text(self.request_timeout_s)) from None
            raise

    def _exchange(
        self,
        conn: Connection,
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
        head, rest = read_head(reader.read)
        now = reader.stamp
        res.t_headers_ns = now
        status, res.headers, keep_alive = parse_head(head)
        res.status = status
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            res.t_end_ns = now
            res.outcome = outcomes.classify(status, stream=False)
            return keep_alive
        is_sse = stream and status == 200 and "event-stream" in res.headers.get("content-type", "")
        sink: SSESink | BodySink = SSESink(res, reader, token_limit) if is_sse else BodySink(res)
        feed = sink.feed
        dechunker: Dechunker | None = None
        remaining: int | None = None
        if "chunked" in res.headers.get("transfer-encoding", "").lower():
            dechunker = Dechunker()
        elif "content-length" in res.headers:
            remaining = content_length(res.headers["content-length"])
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
        self._offset = realtime_offset() if kernel else 0
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
        if left_ns < self._idle_s * NS_PER_S:
            self._capped = True
            self._apply(left_ns / NS_PER_S)
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
                        data, anc, _flags, _addr = raw.recvmsg(_RECV_BYTES, ANC_BYTES)
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
            # Kernel stamp (layout and trust limits: relaygate.load.stamps), inline because
            # this runs once per event. CLOCK_REALTIME -> CLOCK_MONOTONIC: the offset is
            # re-read when the two clock reads are close together (not preempted in
            # between), else the last good one.
            real = time.time_ns()
            after = time.monotonic_ns()
            if after - now < OFFSET_READ_MAX_NS:
                self._offset = real - ((now + after) >> 1)
            for level, kind, payload in anc:
                if kind == SO_TIMESTAMPNS and level == socket.SOL_SOCKET:
                    sec, nsec = TIMESPEC.unpack_from(payload)
                    kernel = sec * NS_PER_S + nsec - self._offset
                    if now - MAX_KERNEL_AGE_NS < kernel < now:
                        # never before the request was sent: t_sent_ns is read after
                        # sendall() returned, so it can lag the wire by a few µs
                        stamp = kernel if kernel > self.floor else self.floor
        self.stamp = stamp
        return data


def _error_text(res: RequestResult) -> str:
    """A short reason for a failed request: the OpenAI error message when there is one."""
    data = res.json()
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        code = err.get("code") or err.get("type") or ""
        return f"HTTP {res.status} {code}: {err.get('message', '')}"[:300]
    snippet = res.body[:120].decode("utf-8", "replace").strip()
    return f"HTTP {res.status}: {snippet}" if snippet else f"HTTP {res.status}"
