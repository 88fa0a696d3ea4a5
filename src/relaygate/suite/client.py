"""HTTP to the relay under test and to the mock upstream's journal.

Every call has a timeout, every exchange remembers how to reproduce itself as a ``curl``
line (keys masked), and streams are read as they arrive with a monotonic timestamp per
event, so a case can tell a streamed answer from a buffered one.
"""

from __future__ import annotations

import dataclasses
import shlex
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from relaygate.keys import mask_key
from relaygate.sse import SSEDecoder

__all__ = [
    "Exchange",
    "RelayClient",
    "StreamEvent",
    "StreamExchange",
    "UpstreamJournal",
    "chat_body",
    "curl_command",
    "header_pairs",
    "new_tag",
]

_UNSET: Any = object()


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


def header_pairs(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A journal entry's headers as (name, value) pairs (the journal keeps duplicates)."""
    headers = entry.get("headers") or []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(pair[0]), str(pair[1])) for pair in headers if len(pair) == 2]


def curl_command(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> str:
    """A shell-quoted curl for a request, the Authorization secret masked (for failures)."""
    return _curl(method, url, headers, body)


def _curl(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> str:
    parts = ["curl", "-sS", "-X", method, url]
    for name, value in headers.items():
        if name.lower() == "authorization":
            scheme, _, secret = value.partition(" ")
            value = f"{scheme} {mask_key(secret)}" if secret else mask_key(scheme)
        parts += ["-H", f"{name}: {value}"]
    if body:
        text = body.decode("utf-8", "replace")
        if len(text) > 2000:
            text = text[:2000] + "…(truncated)"
        parts += ["--data-raw", text]
    return " ".join(shlex.quote(p) for p in parts)


@dataclasses.dataclass
class Exchange:
    """One request and its complete answer."""

    method: str
    url: str
    status: int
    headers: httpx.Headers
    body: bytes
    elapsed_s: float
    curl: str

    @property
    def content_type(self) -> str:
        return str(self.headers.get("content-type", "")).split(";")[0].strip().lower()

    def json(self) -> Any:
        """The parsed JSON body, or None when the body is not JSON."""
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
        return f"HTTP {self.status} {self.content_type or '-'} {snippet!r}"


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


class RelayClient:
    """Calls to the relay under test, with a timeout and curl reproduction on every call."""

    def __init__(
        self,
        base_url: str,
        key: str | None,
        timeout_s: float = 30.0,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout_s = timeout_s
        self.extra_headers = dict(extra_headers or {})
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)

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
        """``key=None`` sends no Authorization header; the default sends the funded key."""
        url = self.base_url + path
        body, hdrs = self._prepare(json, content, key, headers)
        started = time.perf_counter()
        response = self._http.request(method, url, content=body, headers=hdrs)
        return Exchange(
            method=method,
            url=url,
            status=response.status_code,
            headers=response.headers,
            body=response.content,
            elapsed_s=time.perf_counter() - started,
            curl=_curl(method, url, hdrs, body),
        )

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
        chunks: list[tuple[int, bytes]] = []
        error: str | None = None
        sent_ns = time.monotonic_ns()
        started = time.perf_counter()
        with self._http.stream("POST", url, content=raw, headers=hdrs) as response:
            try:
                for chunk in response.iter_raw():
                    now = time.monotonic_ns()
                    chunks.append((now, chunk))
                    for event in decoder.feed(chunk):
                        events.append(StreamEvent(event.data, now))
                    if stop_after_events is not None and len(events) >= stop_after_events:
                        break
                else:
                    for event in decoder.flush():
                        events.append(StreamEvent(event.data, time.monotonic_ns()))
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            status, headers = response.status_code, response.headers
        return StreamExchange(
            method="POST",
            url=url,
            status=status,
            headers=headers,
            body=b"".join(c for _, c in chunks),
            elapsed_s=time.perf_counter() - started,
            curl=_curl("POST", url, {**hdrs, "Accept": "text/event-stream"}, raw) + " -N",
            events=events,
            sent_ns=sent_ns,
            raw_chunks=chunks,
            malformed_lines=decoder.malformed_lines,
            transport_error=error,
        )


class UpstreamJournal:
    """The mock upstream's journal: what the relay really forwarded."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def entries(self, tag: str) -> list[dict[str, Any]]:
        response = self._http.get(
            self.base_url + "/_relaygate/journal", params={"tag": tag, "limit": 1000}
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
        try:
            return self._http.get(self.base_url + "/_relaygate/health").status_code == 200
        except httpx.HTTPError:
            return False
