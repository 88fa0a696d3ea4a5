"""Writing one SSE stream on its directed schedule, with the directed framing faults.

Item ``i`` of a stream is due at an absolute time computed from the request's arrival (no
drift): the role chunk at ``arrival + role_ms``, content event ``i`` at
``arrival + ttft_ms + i * itl_ms``, the finish chunk, usage chunk and ``[DONE]`` right after
the last content event. Framing faults (``framing=``):

* ``nospace``: ``data:{...}`` instead of ``data: {...}``.
* ``crlf``: every line ends in ``\\r\\n``, so an event ends in ``\\r\\n\\r\\n``.
* ``split``: every write is cut in two at its middle byte (inside the JSON) and the halves are
  written ``split_gap_ms`` apart, as two HTTP chunks.
* ``coalesce``: every item due at the same time goes out in one write (one HTTP chunk): the
  role chunk waits for content event 0 (and the tool-call header), events with equal due times
  share a write (all of them when ``itl_ms=0``), and the finish chunk, usage chunk and
  ``[DONE]`` share the last content event's write. Without ``coalesce`` every item is its own
  write.

A plain (directive-free) answer with several choices writes, for each content event, one SSE
event per choice in one write; likewise its role chunks and finish chunks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator

from aiohttp import web

from relaygate.mock.clock import Clock, TimingStats
from relaygate.mock.journal import JournalEntry
from relaygate.mock.responses import StreamPayloads

__all__ = ["StreamPlan", "write_stream"]

_monotonic_ns = time.monotonic_ns

# Item kinds of a stream, in the order they go out.
_ROLE, _HEADER, _CONTENT, _ERROR, _ABORT, _FINISH, _USAGE, _DONE = range(8)


@dataclasses.dataclass(frozen=True, slots=True)
class StreamPlan:
    """Everything :func:`write_stream` needs; times are absolute ``monotonic_ns``."""

    payloads: StreamPayloads
    role_ns: int
    first_ns: int
    itl_ns: int
    error_payload: bytes
    stream_error_after: int | None = None
    disconnect_after: int | None = None
    framing: frozenset[str] = frozenset()
    split_gap_ns: int = 2_000_000
    send_done: bool = True
    stamp: str = "none"


def _items(plan: StreamPlan) -> Iterator[tuple[int, int, int]]:
    """``(due_ns, kind, content_index)`` in emission order."""
    p = plan.payloads
    if p.role is not None:
        yield (plan.first_ns if "coalesce" in plan.framing else plan.role_ns), _ROLE, 0
    if p.header is not None:
        yield plan.first_ns, _HEADER, 0
    faults = [k for k in (plan.stream_error_after, plan.disconnect_after) if k is not None]
    cut = min([p.count, *faults])
    for index in range(cut):
        yield plan.first_ns + index * plan.itl_ns, _CONTENT, index
    # Whatever ends the stream goes out right after the last content event.
    end_ns = plan.first_ns + max(cut - 1, 0) * plan.itl_ns
    if faults:
        fault_ns = plan.first_ns + cut * plan.itl_ns if cut < p.count else end_ns
        error_first = plan.stream_error_after is not None and (
            plan.disconnect_after is None or plan.stream_error_after <= plan.disconnect_after
        )
        yield fault_ns, (_ERROR if error_first else _ABORT), cut
        return
    yield end_ns, _FINISH, 0
    if p.usage is not None:
        yield end_ns, _USAGE, 0
    if plan.send_done:
        yield end_ns, _DONE, 0


class _Writer:
    """Renders items into SSE frames and writes them, timing every content event."""

    def __init__(
        self,
        resp: web.StreamResponse,
        transport: asyncio.Transport | None,
        plan: StreamPlan,
        clock: Clock,
        stats: TimingStats,
        entry: JournalEntry,
    ) -> None:
        self.resp = resp
        self.transport = transport
        self.chunked = resp.chunked
        self.plan = plan
        self.clock = clock
        self.stats = stats
        self.entry = entry
        self.prefix = b"data:" if "nospace" in plan.framing else b"data: "
        self.end = b"\r\n\r\n" if "crlf" in plan.framing else b"\n\n"
        self.split = "split" in plan.framing
        self.last_content_ns = 0
        p = plan.payloads
        self._fixed = {
            _ROLE: p.role or b"",
            _HEADER: p.header or b"",
            _ERROR: plan.error_payload,
            _FINISH: p.finish,
            _USAGE: p.usage or b"",
            _DONE: b"[DONE]",
        }
        self._frames = [self.prefix + p.content(i) + self.end for i in range(min(p.count, 2))]
        self._last_frame = self.prefix + p.content(p.count - 1) + self.end if p.count else b""
        # A plain answer's events: one SSE event per choice, written together.
        self._groups = [self._join(group) for group in p.groups]
        self._multi = {
            kind: self._join(payloads)
            for kind, payloads in ((_ROLE, p.roles), (_FINISH, p.finishes))
            if payloads
        }

    def _join(self, payloads: tuple[bytes, ...]) -> bytes:
        return b"".join([self.prefix + payload + self.end for payload in payloads])

    def render(self, kind: int, index: int, now_ns: int) -> bytes:
        stamp = self.plan.stamp
        p = self.plan.payloads
        if kind == _CONTENT:
            if self._groups:
                return self._groups[index]
            if stamp == "none":
                if index < 2:
                    return self._frames[index]
                return self._last_frame if index == p.count - 1 else self._frames[1]
            payload = p.stamped(f" {now_ns}") if stamp == "content" else p.content(index)
        elif kind in self._multi:
            return self._multi[kind]
        else:
            payload = self._fixed[kind]
        if stamp == "field" and kind != _DONE:
            payload = payload[:-1] + b',"relaygate_emit_ns":' + str(now_ns).encode() + b"}"
        return self.prefix + payload + self.end

    async def write(self, group: list[tuple[int, int, int]]) -> None:
        """Write one group of items, all due at ``group[0][0]`` (or abort the connection)."""
        due_ns = group[0][0]
        await self.clock.sleep_until(due_ns)
        if group[0][1] == _ABORT:
            if self.transport is not None:
                self.transport.abort()
            return
        now = _monotonic_ns()
        if len(group) == 1:
            data = self.render(group[0][1], group[0][2], now)
        else:
            data = b"".join([self.render(kind, index, now) for _, kind, index in group])
        if self.split and len(data) > 1:
            half = len(data) // 2
            await self._send(data[:half])
            await self.clock.sleep_until(now + self.plan.split_gap_ns)
            await self._send(data[half:])
        else:
            await self._send(data)
        self._account(group, now)

    async def _send(self, data: bytes) -> None:
        """One write = one HTTP chunk. Written straight to the transport: aiohttp's writer
        path costs more per event than everything else here (its end-of-body marker still
        comes from aiohttp when the handler returns)."""
        transport = self.transport
        if not self.chunked or transport is None:
            await self.resp.write(data)
            return
        if transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def _account(self, group: list[tuple[int, int, int]], now_ns: int) -> None:
        entry = self.entry
        stats = self.stats
        for item_due, kind, index in group:
            entry.events += 1
            if entry.first_event_ns is None:
                entry.first_event_ns = now_ns
            entry.last_event_ns = now_ns
            if kind != _CONTENT:
                continue
            stats.events += 1
            stats.write_lateness.record_ns(now_ns - item_due)
            if index > 0:
                stats.gap_error.record_ns(now_ns - self.last_content_ns - self.plan.itl_ns)
            self.last_content_ns = now_ns


async def write_stream(
    resp: web.StreamResponse,
    transport: asyncio.Transport | None,
    plan: StreamPlan,
    clock: Clock,
    stats: TimingStats,
    entry: JournalEntry,
) -> str:
    """Write the whole stream on a prepared ``resp``; returns the journal's answer kind.

    ``stream`` (complete), ``stream_error`` (in-stream error event), ``disconnect`` (directed
    abort) or ``client_gone`` (the client went away first).
    """
    writer = _Writer(resp, transport, plan, clock, stats, entry)
    coalesce = "coalesce" in plan.framing
    group: list[tuple[int, int, int]] = []
    last_kind = _DONE
    try:
        for item in _items(plan):
            if group and (not coalesce or item[0] != group[0][0] or item[1] == _ABORT):
                await writer.write(group)
                group = []
            group.append(item)
            last_kind = item[1]
        if group:
            await writer.write(group)
    except ConnectionError:
        return "client_gone"
    if last_kind == _ABORT:
        return "disconnect"
    return "stream_error" if last_kind == _ERROR else "stream"
