"""HTTP to the relay under test and to the mock upstream's journal.

Every exchange with the relay has one total deadline (``--relay-timeout``, 30 s: it covers a
stream that drips forever, not only a silent one) and one byte cap (``--relay-max-bytes``,
16 MiB); an answer cut by either is marked (``Exchange.cut_reason``) so no case judges it as
complete. Every exchange remembers how to reproduce itself as a ``curl`` line (secrets
masked), and streams are read as they arrive with a monotonic timestamp per event, so a case
can tell a streamed answer from a buffered one.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import httpx
import orjson

from relaygate.bounded import Watchdog, tls_context
from relaygate.keys import mask_key, mask_secrets, sensitive_header
from relaygate.sse import SSEDecoder
from relaygate.suite.target import DEFAULT_MAX_BYTES

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT_S",
    "FORCE_WEATHER_TOOL",
    "WEATHER_TOOLS",
    "Exchange",
    "Meter",
    "RelayClient",
    "StreamEvent",
    "StreamExchange",
    "UpstreamJournal",
    "byte_cap_reason",
    "chat_body",
    "curl_command",
    "deadline_reason",
    "header_pairs",
    "new_tag",
    "sdk_http_client",
]

_UNSET: Any = object()
# The total deadline of one exchange (--relay-timeout).
DEFAULT_TIMEOUT_S = 30.0


def new_tag(case_id: str) -> str:
    """A tag unique to one request of one case, to find it in the upstream journal."""
    return f"{case_id}.{uuid.uuid4().hex[:10]}"


def chat_body(
    model: str = "gpt-4o",
    text: str = "Say hello.",
    directive: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A minimal chat completions body; ``directive`` is appended to the user message."""
    content = f"{text} {directive}" if directive else text
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


#: The one tool the cases offer (``tools``), and ``tool_choice`` forcing a call of it.
WEATHER_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
FORCE_WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_weather"}}


def header_pairs(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A journal entry's headers as (name, value) pairs (the journal keeps duplicates)."""
    headers = entry.get("headers") or []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(pair[0]), str(pair[1])) for pair in headers if len(pair) == 2]


def curl_command(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    secrets: Iterable[str | None] = (),
) -> str:
    """A shell-quoted curl for a request, for a failure's "Reproduce" line.

    Credentials are masked: ``Authorization`` and every header named like a key or token
    (:func:`relaygate.keys.sensitive_header`), every value in ``secrets`` (the run's keys and
    ``--relay-header`` values) and anything shaped like a key, in headers and body alike.
    """
    secrets = tuple(secrets)
    parts = ["curl", "-sS", "-X", method, url]
    for name, value in headers.items():
        if sensitive_header(name):
            scheme, _, secret = value.partition(" ")
            value = f"{scheme} {mask_key(secret)}" if secret else mask_key(scheme)
        parts += ["-H", f"{name}: {value}"]
    if body:
        text = body.decode("utf-8", "replace")
        if len(text) > 2000:
            text = text[:2000] + "…(truncated)"
        parts += ["--data-raw", text]
    return mask_secrets(" ".join(shlex.quote(p) for p in parts), *secrets)


def _size(n_bytes: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= size and n_bytes % size == 0:
            return f"{n_bytes // size} {unit}"
    return f"{n_bytes} bytes"


def deadline_reason(timeout_s: float) -> str:
    """The cut reason of an answer that outlived the total deadline."""
    return (
        f"the relay's answer did not finish within {timeout_s:g} s "
        "(total deadline; --relay-timeout)"
    )


def byte_cap_reason(max_bytes: int) -> str:
    """The cut reason of an answer longer than the byte cap."""
    return f"the relay sent more than {_size(max_bytes)} (byte cap; --relay-max-bytes)"


@dataclasses.dataclass
class Exchange:
    """One request and its answer.

    ``cut_reason`` is set when the client stopped reading (total deadline, byte cap): the
    answer is then incomplete, ``status`` is 0 (so no case takes it for a served answer; the
    status the relay sent is in ``sent_status``) and :meth:`describe` leads with the reason.
    """

    method: str
    url: str
    status: int
    headers: httpx.Headers
    body: bytes
    elapsed_s: float
    curl: str
    cut_reason: str | None = None
    sent_status: int | None = None

    @property
    def content_type(self) -> str:
        return str(self.headers.get("content-type", "")).split(";")[0].strip().lower()

    def json(self) -> Any:
        """The parsed JSON body, or None when the body is not JSON (or was cut)."""
        if self.cut_reason is not None:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    @property
    def error(self) -> dict[str, Any] | None:
        """The OpenAI error object ``{"message", "type", "param", "code"}`` if there is one."""
        data = self.json()
        error = data.get("error") if isinstance(data, dict) else None
        return error if isinstance(error, dict) else None

    def describe(self) -> str:
        snippet = self.body[:300].decode("utf-8", "replace")
        text = f"HTTP {self.status} {self.content_type or '-'} {snippet!r}"
        if self.cut_reason is not None:
            sent = f"HTTP {self.sent_status} " if self.sent_status else ""
            text = f"cut: {self.cut_reason} (after {sent}{len(self.body)} bytes); {text}"
        return text


@dataclasses.dataclass
class StreamEvent:
    data: str
    arrived_ns: int

    def json(self) -> Any:
        try:
            return orjson.loads(self.data)
        except orjson.JSONDecodeError:
            return None


@dataclasses.dataclass
class StreamExchange(Exchange):
    """A streamed answer: the raw bytes plus each SSE event with its arrival time."""

    events: list[StreamEvent] = dataclasses.field(default_factory=list)
    sent_ns: int = 0
    raw_chunks: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    malformed_lines: int = 0
    transport_error: str | None = None

    @property
    def data_events(self) -> list[StreamEvent]:
        return [e for e in self.events if e.data.strip() != "[DONE]"]

    @property
    def done_count(self) -> int:
        return sum(1 for e in self.events if e.data.strip() == "[DONE]")

    def chunks(self) -> list[dict[str, Any]]:
        out = []
        for event in self.data_events:
            data = event.json()
            if isinstance(data, dict):
                out.append(data)
        return out

    def content_events(self) -> list[StreamEvent]:
        """Events that carry generated text or tool-call arguments (not the role chunk)."""
        out = []
        for event in self.data_events:
            data = event.json()
            if not isinstance(data, dict):
                continue
            for choice in data.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls"):
                    out.append(event)
                    break
        return out


@dataclasses.dataclass
class _Answer:
    status: int
    headers: httpx.Headers
    chunks: list[tuple[int, bytes]]
    cut_reason: str | None
    transport_error: httpx.HTTPError | None
    elapsed_s: float


def _bounded_exchange(
    http: httpx.Client,
    method: str,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    timeout_s: float,
    max_bytes: int,
    *,
    raw: bool,
    on_chunk: Callable[[int, bytes], bool] | None = None,
) -> _Answer:
    """One exchange within the total deadline and the byte cap; ``on_chunk`` returning True
    stops reading (the caller has what it wanted: not a cut)."""
    started = time.perf_counter()
    watchdog = Watchdog(timeout_s)
    status, got_headers = 0, httpx.Headers()
    chunks: list[tuple[int, bytes]] = []
    received = 0
    cut: str | None = None
    error: httpx.HTTPError | None = None
    try:
        with http.stream(method, url, content=body, headers=headers) as response:
            status, got_headers = response.status_code, response.headers
            watchdog.watch(response)
            try:
                for chunk in response.iter_raw() if raw else response.iter_bytes():
                    now = time.monotonic_ns()
                    if received + len(chunk) > max_bytes:
                        chunks.append((now, chunk[: max_bytes - received]))
                        cut = byte_cap_reason(max_bytes)
                        break
                    received += len(chunk)
                    chunks.append((now, chunk))
                    if watchdog.expired():
                        cut = deadline_reason(timeout_s)
                        break
                    if on_chunk is not None and on_chunk(now, chunk):
                        break
            except httpx.HTTPError as exc:
                if watchdog.expired():
                    cut = deadline_reason(timeout_s)
                else:
                    error = exc
            finally:
                watchdog.finish()  # before the connection can go back to the pool
    except httpx.TimeoutException:
        # no answer (headers) within the deadline: httpx's per-operation timeouts fired
        cut = deadline_reason(timeout_s)
    finally:
        watchdog.finish()
    return _Answer(status, got_headers, chunks, cut, error, time.perf_counter() - started)


class Meter(Protocol):
    """Sees every request the client sends (``before`` may refuse it by raising) and every
    answer: the live audit's cost control (:class:`relaygate.suite.budget.LiveMeter`)."""

    def before(self, method: str, path: str, content: bytes | None) -> None: ...

    def after(self, method: str, path: str, content: bytes | None, exchange: Exchange) -> None: ...


class RelayClient:
    """Calls to the relay under test: every exchange has one total deadline (``timeout_s``)
    and one byte cap (``max_bytes``), and reproduces itself as a curl with secrets masked."""

    def __init__(
        self,
        base_url: str,
        key: str | None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        extra_headers: Mapping[str, str] | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.extra_headers = dict(extra_headers or {})
        self.secrets = (key, *secrets)
        self.meter: Meter | None = None
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False, verify=tls_context())

    def __repr__(self) -> str:
        return f"RelayClient({self.base_url!r}, key={mask_key(self.key)!r})"

    def close(self) -> None:
        self._http.close()

    def _headers(
        self, key: str | None, headers: Mapping[str, str] | None, has_json: bool
    ) -> dict[str, str]:
        out = dict(self.extra_headers)
        if has_json:
            out["Content-Type"] = "application/json"
        if key is not None:
            out["Authorization"] = f"Bearer {key}"
        out.update(headers or {})
        return out

    def _prepare(
        self, json: Any, content: bytes | None, key: Any, headers: Mapping[str, str] | None
    ) -> tuple[bytes | None, dict[str, str]]:
        body = orjson.dumps(json) if json is not _UNSET else content
        use_key = self.key if key is _UNSET else key
        return body, self._headers(use_key, headers, json is not _UNSET)

    def _curl(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> str:
        return curl_command(method, url, headers, body, self.secrets)

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        *,
        raw: bool,
        on_chunk: Callable[[int, bytes], bool] | None = None,
    ) -> _Answer:
        return _bounded_exchange(
            self._http,
            method,
            url,
            body,
            headers,
            self.timeout_s,
            self.max_bytes,
            raw=raw,
            on_chunk=on_chunk,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = _UNSET,
        content: bytes | None = None,
        key: Any = _UNSET,
        headers: Mapping[str, str] | None = None,
    ) -> Exchange:
        """``key=None`` sends no Authorization header; the default sends the funded key.

        An answer cut by the deadline or the byte cap comes back with ``cut_reason`` set; a
        connection error raises :class:`httpx.HTTPError` as before.
        """
        url = self.base_url + path
        body, hdrs = self._prepare(json, content, key, headers)
        if self.meter is not None:
            self.meter.before(method, path, body)
        answer = self._send(method, url, body, hdrs, raw=False)
        if answer.transport_error is not None:
            raise answer.transport_error
        exchange = Exchange(
            method=method,
            url=url,
            status=0 if answer.cut_reason else answer.status,
            headers=answer.headers,
            body=b"".join(c for _, c in answer.chunks),
            elapsed_s=answer.elapsed_s,
            curl=self._curl(method, url, hdrs, body),
            cut_reason=answer.cut_reason,
            sent_status=answer.status or None,
        )
        if self.meter is not None:
            self.meter.after(method, path, body, exchange)
        return exchange

    def chat(self, body: Mapping[str, Any], *, key: Any = _UNSET) -> Exchange:
        return self.request("POST", "/v1/chat/completions", json=dict(body), key=key)

    def stream(
        self,
        body: Mapping[str, Any],
        *,
        key: Any = _UNSET,
        path: str = "/v1/chat/completions",
        stop_after_events: int | None = None,
    ) -> StreamExchange:
        """POST a ``stream: true`` request and time every SSE event as it arrives.

        ``stop_after_events`` closes the connection after that many data events (a client
        that goes away mid-stream).
        """
        payload = {**body, "stream": True}
        url = self.base_url + path
        raw, hdrs = self._prepare(payload, None, key, None)
        decoder = SSEDecoder()
        events: list[StreamEvent] = []

        def on_chunk(now: int, chunk: bytes) -> bool:
            for event in decoder.feed(chunk):
                events.append(StreamEvent(event.data, now))
            return stop_after_events is not None and len(events) >= stop_after_events

        if self.meter is not None:
            self.meter.before("POST", path, raw)
        sent_ns = time.monotonic_ns()
        answer = self._send("POST", url, raw, hdrs, raw=True, on_chunk=on_chunk)
        stopped = stop_after_events is not None and len(events) >= stop_after_events
        if answer.cut_reason is None and answer.transport_error is None and not stopped:
            for event in decoder.flush():
                events.append(StreamEvent(event.data, time.monotonic_ns()))
        exchange = StreamExchange(
            method="POST",
            url=url,
            status=0 if answer.cut_reason else answer.status,
            headers=answer.headers,
            body=b"".join(c for _, c in answer.chunks),
            elapsed_s=answer.elapsed_s,
            curl=self._curl("POST", url, {**hdrs, "Accept": "text/event-stream"}, raw) + " -N",
            cut_reason=answer.cut_reason,
            sent_status=answer.status or None,
            events=events,
            sent_ns=sent_ns,
            raw_chunks=answer.chunks,
            malformed_lines=decoder.malformed_lines,
            transport_error=(
                None
                if answer.transport_error is None
                else f"{type(answer.transport_error).__name__}: {answer.transport_error}"
            ),
        )
        if self.meter is not None:
            self.meter.after("POST", path, raw, exchange)
        return exchange


class _SDKExchange:
    """What one SDK request sent and got, handed to the client's :class:`Meter` once its
    answer is closed: the SDK's requests count against the live budget like the suite's own."""

    def __init__(self, meter: Meter, request: Any, content: bytes | None) -> None:
        self._meter = meter
        self._method = str(request.method)
        self._url = str(request.url)
        self._path = str(request.url.path)
        self._content = content
        self._started = time.perf_counter()
        self.sent_ns = time.monotonic_ns()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[tuple[int, bytes]] = []
        self.cut_reason: str | None = None
        self._reported = False

    def before(self) -> None:
        self._meter.before(self._method, self._path, self._content)

    def report(self) -> None:
        """Once: the answer as an :class:`Exchange` (a :class:`StreamExchange` for SSE)."""
        if self._reported:
            return
        self._reported = True
        raw = b"".join(chunk for _, chunk in self.chunks)
        headers = httpx.Headers(self.headers)
        try:  # the body as the SDK read it (content-encoding undone)
            body = httpx.Response(self.status, headers=self.headers, content=raw).content
        except httpx.HTTPError:
            body = raw
        common: dict[str, Any] = {
            "method": self._method,
            "url": self._url,
            "status": 0 if self.cut_reason else self.status,
            "headers": headers,
            "body": body,
            "elapsed_s": time.perf_counter() - self._started,
            "curl": "",
            "cut_reason": self.cut_reason,
            "sent_status": self.status or None,
        }
        exchange: Exchange
        if "text/event-stream" in headers.get("content-type", ""):
            decoder = SSEDecoder()
            now = time.monotonic_ns()
            events = [StreamEvent(e.data, now) for e in [*decoder.feed(body), *decoder.flush()]]
            exchange = StreamExchange(
                **common, events=events, sent_ns=self.sent_ns, raw_chunks=self.chunks
            )
        else:
            exchange = Exchange(**common)
        self._meter.after(self._method, self._path, self._content, exchange)


def sdk_http_client(
    timeout_s: float, max_bytes: int = DEFAULT_MAX_BYTES, *, meter: Meter | None = None
) -> Any:
    """An HTTP client for the official OpenAI SDK (``OpenAI(http_client=...)``) with the
    suite's total deadline and byte cap per request: the SDK's own ``timeout`` is httpx's,
    per operation, so a stream that drips forever would never end.

    Built on the httpx the installed SDK uses (``openai.DefaultHttpxClient``'s). A request
    past the deadline raises that library's ``ReadTimeout``, an answer past the cap its
    ``ReadError``, each with the reason; the SDK reports them as its timeout/connection errors.
    With ``meter`` (the suite client's, in live mode) every request is metered as the suite's
    own are: ``before`` may hold it back (the budget), ``after`` counts and prices its answer.
    """
    import openai

    client_cls = openai.DefaultHttpxClient
    lib: Any = sys.modules[client_cls.__mro__[1].__module__.partition(".")[0]]

    class BoundedStream(lib.SyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, watchdog: Watchdog, seen: _SDKExchange | None) -> None:
            self._inner = inner
            self._watchdog = watchdog
            self._seen = seen

        def __iter__(self) -> Iterator[bytes]:
            received = 0
            seen = self._seen
            try:
                for chunk in self._inner:
                    received += len(chunk)
                    if received > max_bytes:
                        if seen is not None:
                            seen.cut_reason = byte_cap_reason(max_bytes)
                        raise lib.ReadError(byte_cap_reason(max_bytes))
                    if self._watchdog.expired():
                        if seen is not None:
                            seen.cut_reason = deadline_reason(timeout_s)
                        raise lib.ReadTimeout(deadline_reason(timeout_s))
                    if seen is not None:
                        seen.chunks.append((time.monotonic_ns(), chunk))
                    yield chunk
            except Exception as exc:
                # The watchdog ends a read by shutting the socket down: whatever the layers
                # below make of that (httpcore's own RemoteProtocolError included), past the
                # deadline it is the deadline.
                if self._watchdog.expired() and not isinstance(exc, lib.ReadTimeout):
                    if seen is not None:
                        seen.cut_reason = deadline_reason(timeout_s)
                    raise lib.ReadTimeout(deadline_reason(timeout_s)) from exc
                raise
            finally:
                if seen is not None:
                    seen.report()  # read to the end, cut, or left: metered as it stands

        def close(self) -> None:
            self._watchdog.finish()  # before the connection can go back to the pool
            self._inner.close()
            if self._seen is not None:
                self._seen.report()

    class BoundedTransport(lib.BaseTransport):  # type: ignore[misc]
        def __init__(self) -> None:
            self._inner = lib.HTTPTransport(verify=tls_context())

        def handle_request(self, request: Any) -> Any:
            seen = None
            if meter is not None:
                seen = _SDKExchange(meter, request, request.read() or None)
                seen.before()  # may hold the request back (pytest.skip): nothing is sent
            watchdog = Watchdog(timeout_s)
            try:
                response = self._inner.handle_request(request)
            except lib.TimeoutException as exc:
                watchdog.finish()
                raise lib.ReadTimeout(deadline_reason(timeout_s), request=request) from exc
            except BaseException:
                watchdog.finish()
                raise
            watchdog.watch(response)
            if seen is not None:
                seen.status = response.status_code
                seen.headers = list(response.headers.raw)
            response.stream = BoundedStream(response.stream, watchdog, seen)
            return response

        def close(self) -> None:
            self._inner.close()

    return client_cls(transport=BoundedTransport(), timeout=timeout_s)


class UpstreamJournal:
    """The mock upstream's journal: what the relay really forwarded."""

    def __init__(
        self, base_url: str, timeout_s: float = 10.0, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._http = httpx.Client(timeout=timeout_s, verify=tls_context())

    def close(self) -> None:
        self._http.close()

    def entries(self, tag: str) -> list[dict[str, Any]]:
        """The journal entries for ``tag``; an answer cut by the deadline or the byte cap
        raises :class:`httpx.ReadError` with the reason (it is no ground truth)."""
        url = httpx.URL(self.base_url + "/_relaygate/journal", params={"tag": tag, "limit": 1000})
        answer = _bounded_exchange(
            self._http, "GET", str(url), None, {}, self.timeout_s, self.max_bytes, raw=True
        )
        if answer.transport_error is not None:
            raise answer.transport_error
        if answer.cut_reason is not None:
            reason = answer.cut_reason.replace("the relay", "the mock upstream")
            raise httpx.ReadError(f"journal {url}: {reason}")
        response = httpx.Response(  # decodes the raw body (content-encoding) once
            answer.status,
            headers=answer.headers,
            content=b"".join(c for _, c in answer.chunks),
            request=httpx.Request("GET", url),
        )
        response.raise_for_status()
        data = response.json()
        return list(data.get("data", []))

    def wait_entries(
        self, tag: str, count: int = 1, timeout_s: float = 2.0
    ) -> list[dict[str, Any]]:
        """Entries for ``tag``, waiting briefly for ``count`` of them (requests race us)."""
        deadline = time.monotonic() + timeout_s
        entries = self.entries(tag)
        while len(entries) < count and time.monotonic() < deadline:
            time.sleep(0.02)
            entries = self.entries(tag)
        return entries

    def healthy(self) -> bool:
        """True when the mock upstream answers its health URL with 200 within the bounds."""
        url = self.base_url + "/_relaygate/health"
        try:
            answer = _bounded_exchange(
                self._http, "GET", url, None, {}, self.timeout_s, self.max_bytes, raw=True
            )
        except httpx.HTTPError:
            return False
        return answer.status == 200 and answer.cut_reason is None and answer.transport_error is None
