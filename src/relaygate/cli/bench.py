"""``relaygate bench``: how much the mock upstream can take, and how exactly it keeps time.

The mock runs in a separate process, started the way the embedded stack starts it
(:class:`relaygate.stack.ChildServer`: port 0, its ready line read, its stderr logged); this
process drives it with a minimal asyncio + uvloop client: raw keep-alive HTTP/1.1 connections
and an ``asyncio.Protocol`` that parses the chunked body as bytes arrive and stamps each content
event with ``time.monotonic_ns()`` in ``data_received``. Three measurements:

1. **held**: open ``--hold-streams`` slow streams at once and check that all were open together
   (client-side interval overlap, and the mock's own peak) and that all completed.
2. **throughput**: ``--streams`` concurrent closed-loop streams of ``--chunks`` events every
   ``--itl-ms`` for ``--duration-s``: content events per second delivered.
3. **jitter** during (2): the mock's own write lateness and gap error (``/_relaygate/stats``)
   and the gap error the client observed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any, cast

from relaygate.stack import LOOPBACK, ChildServer

__all__ = ["add_arguments", "run"]

_KEY = "sk-relaygate-upstream"
# The mock's control API (stats, reset) answers a few hundred bytes at once.
_CONTROL_TIMEOUT_S = 10.0
_CONTROL_MAX_BYTES = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``relaygate bench``; ``--help`` shows each default."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--streams", type=int, default=500, help="concurrent streams (2, 3)")
    parser.add_argument(
        "--itl-ms", type=float, default=50.0, help="gap between events (2, 3); 20 saturates it"
    )
    parser.add_argument("--chunks", type=int, default=40, help="content events per stream")
    parser.add_argument("--duration-s", type=float, default=8.0, help="measured window (2, 3)")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured ramp-up")
    parser.add_argument(
        "--hold-streams", type=int, default=2000, help="slow streams held at once (1)"
    )
    parser.add_argument(
        "--hold-itl-ms", type=float, default=500.0, help="gap between events of held streams"
    )
    parser.add_argument(
        "--hold-ttft-ms",
        type=float,
        default=5000.0,
        help="first event of held streams (long enough to open all of them)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _percentile(values: array[float] | list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class _StreamProtocol(asyncio.Protocol):
    """One keep-alive connection; streams requests one after another and times events."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._in_body = False
        self._done: asyncio.Future[bool] | None = None
        self.status = 0
        self.headers_ns = 0
        self.event_ns: list[int] = []
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(False)

    def request(self, raw: bytes) -> asyncio.Future[bool]:
        """Send one request; the future is True when the stream completed."""
        assert self.transport is not None
        self._buffer = b""
        self._in_body = False
        self.event_ns = []
        self._done = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._done

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buffer = self._buffer + data
        if not self._in_body:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            self.status = int(buffer[9:12])
            self.headers_ns = now
            self._in_body = True
            buffer = buffer[end + 4 :]
        pos = 0
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buffer[pos:line_end], 16)
            if size == 0:
                if self._done is not None and not self._done.done():
                    self._done.set_result(self.status == 200)
                pos = len(buffer)
                break
            chunk_end = line_end + 2 + size
            if len(buffer) < chunk_end + 2:
                break
            if b'"content":" tok' in buffer[line_end + 2 : chunk_end]:
                self.event_ns.append(now)
            pos = chunk_end + 2
        self._buffer = buffer[pos:]


def _request(host: str, itl_ms: float, chunks: int, tag: str, ttft_ms: float = 0.0) -> bytes:
    import orjson

    directive = (
        f"[[relaygate ttft_ms={ttft_ms:g} itl_ms={itl_ms:g} chunks={chunks} prompt_tokens=10 "
        f"tag={tag}]]"
    )
    body = orjson.dumps(
        {
            "model": "gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": "bench " + directive}],
        }
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connect(host: str, port: int) -> _StreamProtocol:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_StreamProtocol, host, port)
    await protocol.connected  # uvloop calls connection_made after create_connection returns
    return protocol


async def _control(
    host: str, port: int, method: str, path: str, timeout_s: float | None = None
) -> dict[str, Any]:
    """One call to the mock's control API, within a total deadline and a byte cap.

    The deadline is read at call time (``_CONTROL_TIMEOUT_S`` unless given), never bound
    when the module is imported.
    """
    import orjson

    if timeout_s is None:
        timeout_s = _CONTROL_TIMEOUT_S

    where = f"{method} http://{host}:{port}{path}"

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            raw = bytearray()
            while chunk := await reader.read(65536):
                raw += chunk
                if len(raw) > _CONTROL_MAX_BYTES:
                    raise RuntimeError(
                        f"{where}: answer longer than {_CONTROL_MAX_BYTES} bytes (byte cap)"
                    )
            return bytes(raw)
        finally:
            writer.close()

    try:
        raw = await asyncio.wait_for(exchange(), timeout_s)
    except TimeoutError:
        raise RuntimeError(
            f"{where}: no complete answer within {timeout_s:g} s (total deadline)"
        ) from None
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{where}: {head.splitlines()[0]!r} {body[:300]!r}")
    result: dict[str, Any] = orjson.loads(body)
    return result


async def _hold(
    host: str, port: int, streams: int, itl_ms: float, ttft_ms: float
) -> dict[str, Any]:
    """Phase 1: ``streams`` slow streams at once."""
    chunks = 8
    gate = asyncio.Semaphore(256)  # connect in waves: a 2000-SYN burst overflows the backlog
    raw = _request(host, itl_ms, chunks, "bench-hold", ttft_ms)
    await _control(host, port, "POST", "/_relaygate/stats/reset")

    async def one() -> tuple[bool, int, int]:
        async with gate:
            protocol = await _connect(host, port)
            done = protocol.request(raw)
        try:
            ok = await asyncio.wait_for(done, (ttft_ms + itl_ms * chunks) / 1000 + 20)
        finally:
            assert protocol.transport is not None
            protocol.transport.close()
        return ok and len(protocol.event_ns) == chunks, protocol.headers_ns, protocol.event_ns[-1]

    started = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(streams)), return_exceptions=True)
    elapsed = time.monotonic() - started
    stats = await _control(host, port, "GET", "/_relaygate/stats")
    spans = [r for r in results if isinstance(r, tuple)]
    completed = sum(1 for ok, _, _ in spans if ok)
    # The streams were all open at once iff the latest open precedes the earliest end.
    all_open = bool(spans) and max(s[1] for s in spans) < min(s[2] for s in spans)
    marks = sorted([(s[1], 1) for s in spans] + [(s[2], -1) for s in spans])
    overlap = peak = 0
    for _, step in marks:
        overlap += step
        peak = max(peak, overlap)
    return {
        "streams": streams,
        "ttft_ms": ttft_ms,
        "itl_ms": itl_ms,
        "chunks": chunks,
        "completed": completed,
        "errors": len(results) - len(spans),
        "client_peak_open": peak,
        "all_open_at_once": all_open,
        "mock_peak_active": stats["streams"]["peak_active"],
        "elapsed_s": round(elapsed, 2),
    }


async def _throughput(
    host: str,
    port: int,
    streams: int,
    itl_ms: float,
    chunks: int,
    warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:
    """Phases 2 and 3: closed-loop streams; events/s and jitter in the measured window."""
    raw = _request(host, itl_ms, chunks, "bench-load")
    protocols: list[_StreamProtocol] = []
    for _ in range(0, streams, 100):
        wave = [_connect(host, port) for _ in range(min(100, streams - len(protocols)))]
        protocols.extend(await asyncio.gather(*wave))
    loop = asyncio.get_running_loop()
    start = loop.time()
    window = [0, 0]
    gap_errors: array[float] = array("d")
    events = [0]
    failures = [0]
    itl_ns = int(itl_ms * 1e6)

    async def worker(protocol: _StreamProtocol, offset_s: float) -> None:
        await asyncio.sleep(offset_s)
        while loop.time() - start < warmup_s + duration_s:
            ok = await asyncio.wait_for(protocol.request(raw), itl_ms * chunks / 1000 + 30)
            if not ok:
                failures[0] += 1
                return
            begin, end = window
            times = protocol.event_ns
            if begin and (not end or times[-1] <= end):
                for index, t in enumerate(times):
                    if t >= begin:
                        events[0] += 1
                        if index:
                            gap_errors.append((t - times[index - 1] - itl_ns) / 1e6)

    # Spread the starts over one stream's length, so arrivals (and due times) are spread.
    spread_s = itl_ms * chunks / 1000
    tasks = [
        asyncio.ensure_future(worker(p, spread_s * i / streams)) for i, p in enumerate(protocols)
    ]
    await asyncio.sleep(warmup_s)
    await _control(host, port, "POST", "/_relaygate/stats/reset")
    cpu_before = _cpu_s(), time.process_time(), _machine_busy_s()
    window[0] = time.monotonic_ns()
    await asyncio.sleep(duration_s)
    window[1] = time.monotonic_ns()
    stats = await _control(host, port, "GET", "/_relaygate/stats")
    cpu_after = _cpu_s(), time.process_time(), _machine_busy_s()
    await asyncio.wait_for(asyncio.gather(*tasks), itl_ms * chunks / 1000 + 30)
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    measured_s = (window[1] - window[0]) / 1e9
    # Events of streams that ended inside the window, over the window.
    client_gap = {
        "count": len(gap_errors),
        "p50": round(_percentile(gap_errors, 0.5), 4),
        "p99": round(_percentile(gap_errors, 0.99), 4),
        "max_abs": round(max((abs(v) for v in gap_errors), default=math.nan), 4),
    }
    return {
        "streams": streams,
        "itl_ms": itl_ms,
        "chunks": chunks,
        "window_s": round(measured_s, 2),
        "client_events_per_s": round(events[0] / measured_s, 1),
        "mock_events_per_s": stats["events_per_s"],
        "failures": failures[0],
        "mock_write_lateness_ms": stats["write_lateness_ms"],
        "mock_gap_error_ms": stats["gap_error_ms"],
        "client_gap_error_ms": client_gap,
        "mock_cpu_pct": round(100 * (cpu_after[0] - cpu_before[0]) / measured_s, 1),
        "client_cpu_pct": round(100 * (cpu_after[1] - cpu_before[1]) / measured_s, 1),
        # Everything else on the machine (other tenants), 100 = one core.
        "other_cpu_pct": round(
            100
            * (
                (cpu_after[2] - cpu_before[2])
                - (cpu_after[0] - cpu_before[0])
                - (cpu_after[1] - cpu_before[1])
            )
            / measured_s,
            1,
        ),
    }


_MOCK_PID = [0]


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu_s() -> float:
    """CPU seconds used so far by the mock process (from /proc; NaN where unavailable)."""
    try:
        with open(f"/proc/{_MOCK_PID[0]}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_mock(log_dir: Path) -> tuple[ChildServer, str, int]:
    """The mock upstream in its own process (the embedded stack's way), ready; its host, port."""
    mock = ChildServer(
        "mock-upstream",
        ["mock-upstream", "--host", LOOPBACK, "--port", "0", "--journal-size", "1000"],
        log_dir,
    )
    try:
        ready = mock.wait_ready(30.0)
    except BaseException:
        mock.stop()
        raise
    host, _, port = str(ready["url"]).rpartition("/")[2].rpartition(":")
    _MOCK_PID[0] = int(ready["pid"])
    return mock, host, int(port)


def _table(result: dict[str, Any]) -> str:
    hold, load = result["held"], result["throughput"]
    lat, gap, cgap = (
        load["mock_write_lateness_ms"],
        load["mock_gap_error_ms"],
        load["client_gap_error_ms"],
    )
    rows = [
        (
            f"held streams (ttft {hold['ttft_ms']:g} ms, {hold['chunks']} events "
            f"every {hold['itl_ms']:g} ms)",
            f"{hold['completed']}/{hold['streams']} completed; all open at once: "
            f"{hold['all_open_at_once']} (client peak {hold['client_peak_open']}, mock peak "
            f"{hold['mock_peak_active']})",
        ),
        (
            f"events/s at {load['streams']} streams (itl {load['itl_ms']:g} ms)",
            f"{load['client_events_per_s']:,.0f} delivered "
            f"(mock wrote {load['mock_events_per_s']:,.0f})",
        ),
        ("mock write lateness ms p50 / p99 / max", f"{lat['p50']} / {lat['p99']} / {lat['max']}"),
        (
            "mock gap error ms p50 / p99 / min / max",
            f"{gap['p50']} / {gap['p99']} / {gap['min']} / {gap['max']}",
        ),
        (
            "client gap error ms p50 / p99 / max |e|",
            f"{cgap['p50']} / {cgap['p99']} / {cgap['max_abs']}",
        ),
        (
            "CPU % (mock / bench client / rest of machine)",
            f"{load['mock_cpu_pct']} / {load['client_cpu_pct']} / {load['other_cpu_pct']}",
        ),
        (
            "targets",
            f"held >= 2000: {result['targets']['held_2000']}; mock gap error p99 <= 1 ms: "
            f"{result['targets']['gap_p99_le_1ms']}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


async def _bench(args: argparse.Namespace, host: str, port: int) -> dict[str, Any]:
    held = await _hold(host, port, args.hold_streams, args.hold_itl_ms, args.hold_ttft_ms)
    load = await _throughput(
        host, port, args.streams, args.itl_ms, args.chunks, args.warmup_s, args.duration_s
    )
    gap = load["mock_gap_error_ms"]
    gap_p99 = max(abs(gap["p99"] or 0), abs(gap["min"] or 0)) if gap["count"] else math.inf
    return {
        "held": held,
        "throughput": load,
        "targets": {
            "held_2000": held["completed"] >= 2000 and held["all_open_at_once"],
            "gap_p99_le_1ms": gap["count"] > 0 and abs(gap["p99"]) <= 1.0,
            "gap_error_abs_bound_ms": gap_p99,
        },
    }


def run(args: argparse.Namespace) -> int:
    """Start the mock, run the three measurements, print the table (or JSON)."""
    import orjson

    from relaygate.cli.mock_upstream import raise_open_files_limit

    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    raise_open_files_limit()
    with tempfile.TemporaryDirectory(prefix="relaygate-bench-") as log_dir:
        mock, host, port = _start_mock(Path(log_dir))
        try:
            budget = 60 + args.duration_s + args.warmup_s
            result = asyncio.run(asyncio.wait_for(_bench(args, host, port), budget))
        finally:
            mock.stop(timeout_s=10.0)
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(_table(result))
    return 0
