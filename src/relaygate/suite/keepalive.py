"""Two requests on one HTTP/1.1 connection: is the connection still usable after an answer?

The suite's httpx client cannot ask this: its pool quietly opens a new connection when it
sees the old one closed, so a relay that drops the connection after an error answer (without
``Connection: close``) looks fine to it, while a client that sends its next request on the
kept-alive connection gets a reset. :func:`two_on_one_connection` sends exactly two requests on
one TCP (or TLS) connection, parses the answers with h11, never retries and never reconnects,
and bounds each exchange by the suite's total deadline and byte cap.

It talks to the relay directly: a relay reached through an HTTP proxy (``HTTPS_PROXY`` and
friends) cannot be probed this way (:func:`proxied`).
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import time
import urllib.request
from collections.abc import Mapping

import certifi
import h11
import httpx

from relaygate.suite.client import Exchange, byte_cap_reason, curl_command, deadline_reason

__all__ = ["KeptAlive", "RawRequest", "proxied", "two_on_one_connection"]

_READ_SIZE = 65536


@dataclasses.dataclass(frozen=True)
class RawRequest:
    """One request: method, path under the relay's base URL, headers, body."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None = None


@dataclasses.dataclass(frozen=True)
class KeptAlive:
    """What the two requests on one connection got.

    ``first``: the first answer (``status`` 0 and ``cut_reason`` set when it was cut).
    ``close_announced``: the first answer said the connection ends (``Connection: close``, or
    HTTP/1.0 without keep-alive): the second request was not sent.
    ``second``: the second answer, or None when it was not sent or got none; ``dropped`` then
    says how the connection failed (closed, reset) when it was sent.
    ``curl``: both requests on one connection (``curl … --next …``), secrets masked.
    """

    first: Exchange
    close_announced: bool
    second: Exchange | None
    dropped: str | None
    curl: str


class _Dropped(Exception):
    """The connection failed before a complete answer arrived."""


class _Cut(Exception):
    """The deadline or the byte cap ended the read."""


def proxied(base_url: str) -> bool:
    """True when the environment routes ``base_url`` through an HTTP proxy (httpx would)."""
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies()
    if url.scheme not in proxies and "all" not in proxies:
        return False
    return not urllib.request.proxy_bypass(url.host)


def _connect(url: httpx.URL, timeout_s: float) -> socket.socket:
    port = url.port or (443 if url.scheme == "https" else 80)
    sock = socket.create_connection((url.host, port), timeout=timeout_s)
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=certifi.where())
        # HTTP/1.1 only: keep-alive is an HTTP/1.1 question (h2 multiplexes instead).
        context.set_alpn_protocols(["http/1.1"])
        sock = context.wrap_socket(sock, server_hostname=url.host)
    return sock


def _host_header(url: httpx.URL) -> str:
    default = 443 if url.scheme == "https" else 80
    return url.host if url.port in (None, default) else f"{url.host}:{url.port}"


def _exchange(
    sock: socket.socket,
    conn: h11.Connection,
    url: httpx.URL,
    request: RawRequest,
    timeout_s: float,
    max_bytes: int,
) -> tuple[int, httpx.Headers, bytes, float]:
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    body = request.body or b""
    headers = [("Host", _host_header(url)), *request.headers.items()]
    if request.body is not None or request.method in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(len(body))))
    target = url.raw_path.rstrip(b"/") + request.path.encode()
    out = conn.send(h11.Request(method=request.method, target=target, headers=headers))
    out += conn.send(h11.Data(data=body)) if body else b""
    out += conn.send(h11.EndOfMessage())
    try:
        sock.sendall(out)
    except OSError as exc:
        raise _Dropped(f"sending failed: {type(exc).__name__}: {exc}") from exc
    status = 0
    got: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []
    received = 0
    eof = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if eof:
                raise _Dropped("the relay closed the connection (EOF) before answering") from exc
            raise _Dropped(f"the answer is not HTTP/1.1: {exc}") from exc
        if event is h11.NEED_DATA:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Cut(deadline_reason(timeout_s))
            sock.settimeout(remaining)
            try:
                data = sock.recv(_READ_SIZE)
            except TimeoutError as exc:
                raise _Cut(deadline_reason(timeout_s)) from exc
            except OSError as exc:
                raise _Dropped(f"{type(exc).__name__}: {exc}") from exc
            eof = not data
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status, got = event.status_code, list(event.headers)
        elif isinstance(event, h11.Data):
            received += len(event.data)
            if received > max_bytes:
                raise _Cut(byte_cap_reason(max_bytes))
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise _Dropped("the relay closed the connection without an answer")
    decoded = httpx.Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in got])
    return status, decoded, b"".join(chunks), time.perf_counter() - started


def _as_exchange(
    request: RawRequest,
    url: str,
    curl: str,
    answer: tuple[int, httpx.Headers, bytes, float] | None,
    cut: str | None = None,
) -> Exchange:
    status, headers, body, elapsed_s = answer or (0, httpx.Headers(), b"", 0.0)
    return Exchange(request.method, url, status, headers, body, elapsed_s, curl, cut_reason=cut)


def two_on_one_connection(
    base_url: str,
    first: RawRequest,
    second: RawRequest,
    *,
    timeout_s: float,
    max_bytes: int,
    secrets: tuple[str | None, ...] = (),
) -> KeptAlive:
    """Send ``first``, read its answer, then ``second`` on the same connection (unless the
    first answer announced the close). Each exchange has its own total deadline and byte cap.
    A connection that cannot be opened raises :class:`OSError`."""
    url = httpx.URL(base_url.rstrip("/"))
    urls = [str(url) + r.path for r in (first, second)]
    curls = [
        curl_command(r.method, u, r.headers, r.body, secrets)
        for r, u in zip((first, second), urls, strict=True)
    ]
    curl = curls[0] + " --next " + curls[1].removeprefix("curl ")
    conn = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=max_bytes)
    with _connect(url, timeout_s) as sock:
        try:
            answer = _exchange(sock, conn, url, first, timeout_s, max_bytes)
        except _Cut as cut:
            return KeptAlive(
                _as_exchange(first, urls[0], curls[0], None, str(cut)), False, None, None, curl
            )
        except _Dropped as exc:
            raise ConnectionError(f"no answer to the first request: {exc}") from exc
        first_ex = _as_exchange(first, urls[0], curls[0], answer)
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return KeptAlive(first_ex, True, None, None, curl)
        conn.start_next_cycle()
        try:
            answer = _exchange(sock, conn, url, second, timeout_s, max_bytes)
        except _Dropped as exc:
            return KeptAlive(first_ex, False, None, str(exc), curl)
        except _Cut as cut:
            cut_ex = _as_exchange(second, urls[1], curls[1], None, str(cut))
            return KeptAlive(first_ex, False, cut_ex, None, curl)
    return KeptAlive(first_ex, False, _as_exchange(second, urls[1], curls[1], answer), None, curl)
