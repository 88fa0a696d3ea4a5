"""A tiny HTTP/1.1 server on 127.0.0.1 whose connection handling a test chooses: it answers
every request with one canned answer, counts the requests it received, and then keeps the
connection, closes it after saying so, closes it silently, closes it without answering, or
holds it without answering ("hang", until the server stops)."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Literal

Mode = Literal["keep", "announce_close", "drop", "no_answer", "hang"]

_BODY = b'{"error": {"message": "bad key", "type": "invalid_request_error", "code": "x"}}'


class RawHttpServer:
    """``with RawHttpServer("drop", status=401) as server: server.url, server.requests``."""

    def __init__(self, mode: Mode, status: int = 401, extra_headers: str = "") -> None:
        self.mode = mode
        self.status = status
        self.extra_headers = extra_headers
        self.requests = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> RawHttpServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket, buffer: bytes) -> bytes | None:
        while b"\r\n\r\n" not in buffer:
            data = conn.recv(65536)
            if not data:
                return None
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            data = conn.recv(65536)
            if not data:
                return None
            rest += data
        with self._lock:
            self.requests += 1
        return rest[length:]

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buffer = b""
        with conn:
            while True:
                try:
                    rest = self._read_request(conn, buffer)
                except OSError:
                    return
                if self.mode == "hang":
                    self._stop.wait(10)
                if rest is None or self.mode in ("no_answer", "hang"):
                    return
                buffer = rest
                close = "Connection: close\r\n" if self.mode == "announce_close" else ""
                conn.sendall(
                    f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(_BODY)}\r\n{close}{self.extra_headers}\r\n".encode()
                    + _BODY
                )
                if self.mode != "keep":
                    return
