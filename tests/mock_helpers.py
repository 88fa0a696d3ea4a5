"""Helpers for the mock upstream's tests: an in-process server thread and a raw HTTP client."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop
from aiohttp import web

from relaygate import tokens
from relaygate.mock.app import create_app
from relaygate.mock.config import MockConfig

KEY = "sk-relaygate-upstream"
AUTH = {"Authorization": f"Bearer {KEY}"}


class MockThread:
    """The mock app served by its own uvloop loop in a background thread (127.0.0.1)."""

    def __init__(self, config: MockConfig | None = None) -> None:
        self.app = create_app(config or MockConfig())
        self.port = 0
        self._loop = uvloop.new_event_loop()
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def __enter__(self) -> MockThread:
        # The real server warms its tokenizers at start; so does this one, so that no test's
        # timing depends on being the first to count tokens in its process (pytest -n 4).
        tokens.warm()
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("mock thread did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class RawResponse:
    """A response read byte by byte: status, headers, raw body, HTTP chunks and their times."""

    status: int
    headers: dict[str, str]
    raw: bytes
    chunks: list[bytes] = field(default_factory=list)
    chunk_ns: list[int] = field(default_factory=list)
    terminated: bool = False
    sent_ns: int = 0

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks) if self.chunks else self.raw

    def json(self) -> Any:
        return orjson.loads(self.body)

    def events(self) -> list[str]:
        """``data`` of each SSE event (standard framing only)."""
        text = self.body.decode()
        return [
            block.partition("data:")[2].lstrip(" ")
            for block in text.replace("\r\n", "\n").split("\n\n")
            if block.strip()
        ]

    def event_json(self) -> list[Any]:
        return [orjson.loads(e) for e in self.events() if e != "[DONE]"]


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw_body: bytes | None = None,
    timeout: float = 10.0,
) -> RawResponse:
    """One request on a fresh connection (``Connection: close``), read to EOF."""
    if raw_body is None and body is not None:
        raw_body = orjson.dumps(body)
    all_headers = {"Host": f"127.0.0.1:{port}", "Connection": "close", **AUTH, **(headers or {})}
    if raw_body is not None:
        all_headers.setdefault("Content-Type", "application/json")
        all_headers["Content-Length"] = str(len(raw_body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in all_headers.items()
    )
    data = head.encode() + b"\r\n" + (raw_body or b"")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sent_ns = time.monotonic_ns()
        sock.sendall(data)
        return _read_response(sock, sent_ns)


def _read_response(sock: socket.socket, sent_ns: int) -> RawResponse:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        part = sock.recv(65536)
        if not part:
            raise ConnectionError(f"connection closed before headers: {buffer!r}")
        buffer += part
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    response = RawResponse(status, headers, b"", sent_ns=sent_ns)
    chunked = headers.get("transfer-encoding") == "chunked"
    raw = rest
    now = time.monotonic_ns()
    pos = 0
    while True:
        if chunked:
            while True:
                line_end = raw.find(b"\r\n", pos)
                if line_end < 0:
                    break
                size = int(raw[pos:line_end], 16)
                if size == 0:
                    response.terminated = raw.find(b"\r\n", line_end + 2) >= 0
                    if response.terminated:
                        break
                    break
                if len(raw) < line_end + 2 + size + 2:
                    break
                response.chunks.append(raw[line_end + 2 : line_end + 2 + size])
                response.chunk_ns.append(now)
                pos = line_end + 2 + size + 2
            if response.terminated:
                break
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            part = b""
        now = time.monotonic_ns()
        if not part:
            break
        raw += part
    response.raw = raw
    return response


def chat(content: str, **extra: Any) -> dict[str, Any]:
    """A chat request body with one user message."""
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra}


def error_of(response: RawResponse) -> dict[str, Any]:
    """The ``error`` object of an OpenAI JSON error answer (asserts the shape)."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


def iter_sse(raw: bytes) -> Iterator[str]:
    """SSE ``data`` values decoded with the project's tolerant decoder."""
    from relaygate.sse import SSEDecoder

    decoder = SSEDecoder()
    for event in decoder.feed(raw):
        yield event.data
    for event in decoder.flush():
        yield event.data
