"""Bounded HTTP for every client the harness owns: one total deadline and one byte cap per
request (admin APIs, health checks, journals).

httpx's timeouts are per operation: a server that drips a byte a second, or sends 50 MB, never
trips them. :class:`BoundedTransport` wraps httpx's transport so that each request ends within
its deadline and its cap, or fails with one line naming the URL (secrets masked) and the bound.

Exceptions (both are :class:`httpx.HTTPError`, so existing ``except httpx.HTTPError`` holds):

* :class:`DeadlineExceeded` (an :class:`httpx.ReadTimeout`) - no complete answer in time;
* :class:`ByteCapExceeded` (an :class:`httpx.ReadError`) - the answer is longer than the cap.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from relaygate.keys import mask_secrets

__all__ = [
    "DEFAULT_MAX_BYTES",
    "BoundedTransport",
    "ByteCapExceeded",
    "DeadlineExceeded",
    "Watchdog",
    "bounded_client",
    "tls_context",
]

# Admin APIs, health checks and journals answer in kilobytes; 16 MiB is far past any of them.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


class DeadlineExceeded(httpx.ReadTimeout):
    """The answer did not finish within the request's total deadline."""


class ByteCapExceeded(httpx.ReadError):
    """The answer is longer than the request's byte cap."""


class Watchdog:
    """The total deadline of one exchange.

    When the deadline passes, the watchdog shuts the connection's socket down, which ends the
    read the client is blocked in. ``finish`` (under the lock) makes sure it never touches a
    connection that already went back to the pool for another exchange.
    """

    def __init__(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.fired = False
        self._socket: socket.socket | None = None
        self._finished = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, response: httpx.Response) -> None:
        """Watch the socket ``response`` is read from."""
        stream = response.extensions.get("network_stream")
        self.watch_stream(stream)

    def watch_stream(self, stream: Any) -> None:
        """Watch the socket of an httpcore network stream (None: nothing to watch)."""
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._socket = sock if isinstance(sock, socket.socket) else None
        if self.expired():
            self._fire()

    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.deadline

    def _fire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.fired = True
            if self._socket is not None:
                # socket.socket's own shutdown, also for a TLS socket: it wakes the blocked
                # recv without touching the TLS object the reading thread is using.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._socket, socket.SHUT_RDWR)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
        self._timer.cancel()


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB" if n >= 1024 * 1024 else f"{n} bytes"


class _Bounds:
    """The bounds of one request and the one-line errors that name them."""

    def __init__(
        self, request: httpx.Request, timeout_s: float, max_bytes: int, secrets: tuple[str, ...]
    ) -> None:
        self.request = request
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.where = mask_secrets(f"{request.method} {request.url}", *secrets)

    def deadline(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"{self.where}: no complete answer within {self.timeout_s:g} s (total deadline)",
            request=self.request,
        )

    def byte_cap(self) -> ByteCapExceeded:
        return ByteCapExceeded(
            f"{self.where}: answer longer than {_size(self.max_bytes)} (byte cap)",
            request=self.request,
        )


class _BoundedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, watchdog: Watchdog, bounds: _Bounds) -> None:
        self._inner = inner
        self._watchdog = watchdog
        self._bounds = bounds

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in self._inner:
                received += len(chunk)
                if received > self._bounds.max_bytes:
                    raise self._bounds.byte_cap()
                if self._watchdog.expired():
                    raise self._bounds.deadline()
                yield chunk
        except (DeadlineExceeded, ByteCapExceeded):
            raise
        except Exception as exc:
            # The watchdog ends a read by shutting the socket down; whatever the layers below
            # make of that (not always an httpx error), past the deadline it is the deadline.
            if self._watchdog.expired():
                raise self._bounds.deadline() from exc
            raise

    def close(self) -> None:
        self._watchdog.finish()  # before the connection can go back to the pool
        self._inner.close()


class BoundedTransport(httpx.BaseTransport):
    """httpx's transport with a total deadline and a byte cap on every request.

    The deadline covers connecting and the headers too: the socket is watched from the
    moment it is connected (httpcore's ``trace`` extension), so a server that drips its
    headers is cut as well. The cap counts the bytes as they arrive on the wire.
    """

    def __init__(
        self,
        *,
        timeout_s: float,
        max_bytes: int = DEFAULT_MAX_BYTES,
        secrets: Iterable[str | None] = (),
        inner: httpx.BaseTransport | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.secrets = tuple(s for s in secrets if s)
        self._inner = inner or httpx.HTTPTransport(verify=tls_context())

    def add_secret(self, secret: str | None) -> None:
        """Mask ``secret`` in every later error message."""
        if secret:
            self.secrets = (*self.secrets, secret)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        bounds = _Bounds(request, self.timeout_s, self.max_bytes, self.secrets)
        watchdog = Watchdog(self.timeout_s)
        outer_trace = request.extensions.get("trace")

        def trace(event: str, info: Mapping[str, Any]) -> None:
            if event == "connection.connect_tcp.complete":
                watchdog.watch_stream(info.get("return_value"))
            if outer_trace is not None:
                outer_trace(event, info)

        request.extensions = {**request.extensions, "trace": trace}
        try:
            response = self._inner.handle_request(request)
        except Exception as exc:
            watchdog.finish()
            if isinstance(exc, httpx.TimeoutException) or watchdog.expired():
                raise bounds.deadline() from exc
            raise
        except BaseException:
            watchdog.finish()
            raise
        watchdog.watch(response)
        if isinstance(response.stream, httpx.SyncByteStream):
            response.stream = _BoundedStream(response.stream, watchdog, bounds)
        else:
            watchdog.finish()
        return response

    def close(self) -> None:
        self._inner.close()


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one TLS context of this process, for every client relaygate makes.

    httpx builds a new one per client by default, loading the whole CA bundle each time (0.1-0.4
    s of CPU): a suite run makes a dozen clients, most of them to plain-HTTP loopback servers.
    This is httpx's own default context (certifi's CAs, ``SSL_CERT_FILE`` honoured), made once.
    """
    return httpx.create_ssl_context()


def bounded_client(
    base_url: str = "",
    *,
    timeout_s: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    secrets: Iterable[str | None] = (),
    headers: Mapping[str, str] | None = None,
) -> httpx.Client:
    """An :class:`httpx.Client` whose every request has a total deadline (``timeout_s``) and a
    byte cap (``max_bytes``); a breach raises :class:`DeadlineExceeded` or
    :class:`ByteCapExceeded` naming the URL (``secrets`` masked) and the bound.

    Proxies from the environment are ignored (``trust_env=False``): the harness talks to the
    relays it was given, and a proxy mount would bypass the bounds.
    """
    return httpx.Client(
        base_url=base_url.rstrip("/"),
        transport=BoundedTransport(timeout_s=timeout_s, max_bytes=max_bytes, secrets=secrets),
        timeout=timeout_s,
        headers=dict(headers or {}),
        trust_env=False,
    )
