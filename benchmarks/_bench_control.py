"""Benchmark helper: minimal asyncio + uvloop control client (not Locust), same measurements.

python _bench_control.py URL KEY PROMPT USERS SECONDS OUT.json

Each user is a closed loop on one HTTP/1.1 keep-alive connection (a new one only after the
server closed it or a stream failed), like the Locust clients. The response is framed by
``Transfer-Encoding: chunked`` or ``Content-Length`` (else it runs to EOF and the connection
is not reused). Every stream is bounded: ``STREAM_LIMIT_S`` in all (connect, send, whole
answer) and ``STREAM_MAX_BYTES`` read; a stream cut by either, or by a framing error, counts
in ``failed`` and is no sample. Arrival stamps are user space (when the read returned), as
for ``relaygate-user`` and stock. Only streams sent inside the measurement window
(``$BENCH_FROM_NS``..``$BENCH_UNTIL_NS``) are recorded; with ``$BENCH_TTFT_MS`` (the directed
TTFT) ``ttft_excess`` also holds measured TTFT (first token - request written) minus it.
"""

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import orjson
import uvloop

from relaygate.load.histogram import Histogram

STREAM_LIMIT_S = 120.0
STREAM_MAX_BYTES = 16 * 1024 * 1024
LINE_MAX_BYTES = 65536  # a head, chunk-size or SSE line longer than this is a framing error
_READ_BYTES = 65536


class Framing(Exception):
    """The answer cannot be framed (bad status line, chunk size, Content-Length, …)."""


class Budget:
    """The byte cap of one stream: every byte read is charged here."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = STREAM_MAX_BYTES

    def charge(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise Framing(f"answer larger than {STREAM_MAX_BYTES} bytes")


async def read_head(reader: asyncio.StreamReader, budget: Budget) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names; repeats joined with ", ")."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")  # bounded by the reader's limit
    except asyncio.LimitOverrunError:
        raise Framing("response head too long") from None
    budget.charge(len(head))
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "HTTP/1.1" or not parts[1].isdigit():
        raise Framing(f"bad status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return int(parts[1]), headers


async def body(
    reader: asyncio.StreamReader, headers: dict[str, str], budget: Budget, framed: list[bool]
) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive; ``framed[0]`` is True once it ended by its framing."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\n")
            budget.charge(len(line))
            digits = line.split(b";", 1)[0].strip()
            if not digits or len(digits) > 15 or digits.strip(b"0123456789abcdefABCDEF"):
                raise Framing(f"bad chunk size line {line[:40]!r}")
            size = int(digits, 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\n")) not in (b"\r\n", b"\n"):
                    budget.charge(len(trailer))
                framed[0] = True
                return
            budget.charge(size + 2)
            data = await reader.readexactly(size + 2)
            if data[-2:] != b"\r\n":
                raise Framing("chunk data longer than its size")
            yield data[:-2]
    elif "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        value = values.pop() if len(values) == 1 else ""
        if not (value.isascii() and value.isdigit()):
            raise Framing(f"bad Content-Length {headers['content-length'][:40]!r}")
        remaining = int(value)
        budget.charge(remaining)
        while remaining:
            data = await reader.read(min(remaining, _READ_BYTES))
            if not data:
                raise Framing("connection closed inside the body")
            remaining -= len(data)
            yield data
        framed[0] = True
    else:
        while data := await reader.read(_READ_BYTES):
            budget.charge(len(data))
            yield data


async def exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: bytes,
    measured: bool,
    out: dict,
    ttft_ns: int | None,
) -> bool:
    """One stream on an open connection; returns True when the connection may be reused."""
    budget = Budget()
    writer.write(request)
    sent = time.monotonic_ns()
    status, headers = await read_head(reader, budget)
    framed = [False]
    first = measured
    last_lag = None
    pending = b""
    async for data in body(reader, headers, budget, framed):
        now = time.monotonic_ns()
        lines = (pending + data).split(b"\n") if pending else data.split(b"\n")
        pending = lines.pop()  # an incomplete line waits for the next read (bounded by budget)
        for line in lines:
            if not line.startswith(b"data: {") or not measured:
                continue
            obj = orjson.loads(line[6:])
            stamp = obj.get("relaygate_emit_ns")
            choices = obj.get("choices") or [{}]
            if stamp is None or not (choices[0].get("delta") or {}).get("content"):
                continue
            lag = now - stamp
            out["event"].record(lag / 1e6)
            out["events"] += 1
            if first:
                out["ttft"].record(lag / 1e6)
                if ttft_ns is not None:
                    out["ttft_excess"].record((now - sent - ttft_ns) / 1e6)
                first = False
            elif last_lag is not None:
                out["itl"].record(abs(lag - last_lag) / 1e6)
            last_lag = lag
    out["streams"] += measured and status == 200
    out["failed"] += status != 200
    return framed[0] and "close" not in headers.get("connection", "").lower()


async def user(
    host: str, port: int, request: bytes, deadline: float, out: dict, ttft_ns: int | None
) -> None:
    """Closed loop of streams; only streams sent inside the measurement window are recorded."""
    from_ns = int(os.environ.get("BENCH_FROM_NS", "0"))
    until_ns = int(os.environ.get("BENCH_UNTIL_NS", str(1 << 62)))
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    loop = asyncio.get_running_loop()
    try:
        while time.monotonic() < deadline:
            measured = from_ns <= time.monotonic_ns() < until_ns
            keep = False
            try:
                # Bounded like every request the harness sends: STREAM_LIMIT_S in all.
                async with asyncio.timeout_at(loop.time() + STREAM_LIMIT_S):
                    if conn is None:
                        conn = await asyncio.open_connection(host, port, limit=LINE_MAX_BYTES)
                        out["connections"] += 1
                    keep = await exchange(*conn, request, measured, out, ttft_ns)
            except (TimeoutError, OSError, Framing, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ValueError):  # fmt: skip
                out["failed"] += 1
                await asyncio.sleep(0.01)  # a refused connection must not spin
            if not keep and conn is not None:
                conn[1].close()
                conn = None
    finally:
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(TimeoutError, OSError):
                async with asyncio.timeout(1.0):
                    await conn[1].wait_closed()


async def main(url: str, key: str, prompt: str, users: int, seconds: float, path: str) -> None:
    parts = urlsplit(url)
    body_bytes = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    )
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body_bytes)}\r\n\r\n"
    ).encode() + body_bytes
    ttft_ms = os.environ.get("BENCH_TTFT_MS")
    ttft_ns = int(float(ttft_ms) * 1e6) if ttft_ms else None
    out = {
        "ttft": Histogram(),
        "event": Histogram(),
        "itl": Histogram(),
        "ttft_excess": Histogram(),
        "streams": 0,
        "events": 0,
        "failed": 0,
        "connections": 0,
    }
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(user(parts.hostname, parts.port, request, deadline, out, ttft_ns) for _ in range(users))
    )
    with open(path, "wb") as handle:
        handle.write(
            orjson.dumps(
                {
                    "ttft_err": out["ttft"].to_dict(),
                    "event_err": out["event"].to_dict(),
                    "itl_err": out["itl"].to_dict(),
                    "ttft_excess": out["ttft_excess"].to_dict(),
                    "streams": out["streams"],
                    "events": out["events"],
                    "failed": out["failed"],
                    "connections": out["connections"],
                }
            )
        )


if __name__ == "__main__":
    uvloop.install()
    url, key, prompt, users, seconds, path = sys.argv[1:7]
    asyncio.run(main(url, key, prompt, int(users), float(seconds), path))
