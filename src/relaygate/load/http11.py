"""HTTP/1.1 framing and keep-alive connections for :mod:`relaygate.load.client`.

Owns the wire format, not the timing or the bounds: rendering a request, reading and parsing
the response head, ``Content-Length`` values, the incremental ``Transfer-Encoding: chunked``
decoder, and the pool of idle keep-alive connections to one origin. Framing errors raise
:class:`ProtocolError`; a reused connection the server had already closed raises
:class:`StaleConnection` (safe to retry: nothing was processed).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from relaygate.load.stamps import enable_kernel_stamps

__all__ = [
    "CHUNK_LINE_MAX_BYTES",
    "HEAD_MAX_BYTES",
    "Connection",
    "ConnectionPool",
    "Dechunker",
    "ProtocolError",
    "StaleConnection",
    "content_length",
    "parse_head",
    "read_head",
    "render_request",
]

HEAD_MAX_BYTES = 65536
CHUNK_LINE_MAX_BYTES = 4096  # a chunk-size or trailer line (RFC 9112 sets no limit; we do)
_HEX = b"0123456789abcdefABCDEF"


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 we can frame (bad status line, chunk size, …)."""


class StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before answering."""


def render_request(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes
) -> bytes:
    """The bytes of one request (head in latin-1, as HTTP/1.1 allows, then ``body``)."""
    head = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT"):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def read_head(read: Callable[[], bytes]) -> tuple[bytes, bytes]:
    """Read until the end of the response head: (head without the blank line, bytes after)."""
    buf = bytearray()
    while True:
        data = read()
        if not data:
            if not buf:
                raise StaleConnection("connection closed before the status line")
            raise ProtocolError("connection closed inside the response headers")
        scan = max(len(buf) - 3, 0)
        buf += data
        end = buf.find(b"\r\n\r\n", scan)
        if end >= 0:
            return bytes(buf[:end]), bytes(buf[end + 4 :])
        if len(buf) > HEAD_MAX_BYTES:
            raise ProtocolError("response headers larger than 64 KiB")


def parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers (lower-case names) and whether the connection may be kept alive."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ProtocolError(f"bad status line {lines[0][:60]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise ProtocolError(f"bad status line {lines[0][:60]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            value = value.strip()
            # Repeated headers join with ", " as RFC 9110 allows for list-valued fields.
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    connection = headers.get("connection", "").lower()
    if parts[0] == "HTTP/1.0":
        return status, headers, "keep-alive" in connection
    return status, headers, "close" not in connection


def content_length(value: str) -> int:
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


def _chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (extensions after ``;`` ignored); -1 if it is not hex.

    Stricter than ``int(…, 16)``, which also takes ``-5``, ``+5``, ``0x5`` and ``1_0``.
    """
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 15 or digits.strip(_HEX):
        return -1
    return int(digits, 16)


class Dechunker:
    """Incremental ``Transfer-Encoding: chunked`` decoder.

    Only an incomplete size, CRLF or trailer line is kept between reads (at most
    ``CHUNK_LINE_MAX_BYTES``); chunk data passes straight through.
    """

    __slots__ = ("_buf", "_remaining", "_state", "done")

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = 0
        self._state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailer
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self._buf or self._state != 0:
            return self._feed(data)
        # Fast path: whole chunks, the common case for SSE (one event per chunk, one chunk
        # per TCP segment; several when a busy client reads late). The first chunk that is
        # not plain (extensions, the last chunk, cut by the read) and the rest go the slow way.
        pos = 0
        size_all = len(data)
        parts: list[bytes] = []
        while True:
            nl = data.find(b"\n", pos, pos + 17)
            line = data[pos:nl]
            # only hex digits (and the CR): anything odd takes the slow path
            if nl <= pos or line.translate(None, _HEX) not in (b"\r", b"") or line == b"\r":
                break
            start = nl + 1
            end = start + int(line, 16)
            if end == start or data[end : end + 2] != b"\r\n":
                break
            pos = end + 2
            if pos == size_all and not parts:
                return data[start:end]
            parts.append(data[start:end])
            if pos == size_all:
                return b"".join(parts)
        if not parts:
            return self._feed(data)
        parts.append(self._feed(data[pos:]))
        return b"".join(parts)

    def _feed(self, data: bytes) -> bytes:
        """The general decoder: any split of the chunked body, one state machine."""
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
                if size - pos > CHUNK_LINE_MAX_BYTES:
                    raise ProtocolError(f"chunk line longer than {CHUNK_LINE_MAX_BYTES} bytes")
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


class Connection:
    """One connection; ``reused`` once it has come back from the idle pool."""

    __slots__ = ("reused", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reused = False


class ConnectionPool:
    """Idle keep-alive connections to one origin, newest taken first, at most ``max_idle``.

    New connections get ``TCP_NODELAY``, kernel receive stamps when ``kernel_stamps`` and
    TLS when ``tls`` is a context. The host is resolved once and the addresses kept (again
    only after every address failed): under gevent each lookup is a trip through its thread
    pool, which a wave of users connecting at once queued behind one another.
    """

    __slots__ = ("_addresses", "_kernel_stamps", "_tls", "hostname", "idle", "max_idle", "port")

    def __init__(
        self,
        hostname: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        kernel_stamps: bool,
        max_idle: int,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.max_idle = max_idle
        self.idle: list[Connection] = []
        self._tls = tls
        self._kernel_stamps = kernel_stamps
        self._addresses: list[tuple[Any, ...]] | None = None

    def take_idle(self) -> Connection | None:
        """The most recently parked connection, or None when the pool is empty."""
        return self.idle.pop() if self.idle else None

    def connect(self, timeout_s: float) -> Connection:
        """A new connection; ``TimeoutError`` if it takes longer than ``timeout_s``."""
        addresses = self._addresses
        if addresses is None:
            addresses = socket.getaddrinfo(self.hostname, self.port, type=socket.SOCK_STREAM)
            self._addresses = addresses
        sock = None
        error: OSError = OSError(f"no address for {self.hostname}")
        for family, kind, proto, _name, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout_s)
                sock.connect(address)
                break
            except OSError as exc:
                sock.close()
                sock, error = None, exc
        if sock is None:
            self._addresses = None  # the next connection looks the host up again
            raise error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._kernel_stamps:
            enable_kernel_stamps(sock)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.hostname)
        return Connection(sock)

    def release(self, conn: Connection, reusable: bool) -> None:
        """Park ``conn`` for the next request if ``reusable`` and there is room, else close it."""
        if reusable and len(self.idle) < self.max_idle:
            conn.reused = True
            self.idle.append(conn)
        else:
            conn.sock.close()

    @staticmethod
    def discard(conn: Connection | None) -> None:
        """Close a connection that must never be reused (aborted, failed, or raised)."""
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sock.close()

    def close(self) -> None:
        """Close every idle connection."""
        while self.idle:
            self.idle.pop().sock.close()
