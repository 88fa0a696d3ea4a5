"""Incremental Server-Sent Events decoding, tolerant the way a careful client must be.

Fed bytes as they arrive, :class:`SSEDecoder` yields complete events. It follows the
WHATWG rules that matter for OpenAI-style streams: lines end in ``\\n``, ``\\r\\n`` or ``\\r``;
``data:`` with or without the space; several ``data`` lines join with ``\\n``; comments
(``:``) are skipped; an event ends at a blank line. Events split across reads or coalesced
into one read decode the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

__all__ = ["SSEDecoder", "SSEEvent", "encode_event"]


@dataclasses.dataclass(slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None

    @property
    def is_done(self) -> bool:
        return self.data.strip() == "[DONE]"


class SSEDecoder:
    """Feed raw bytes; iterate complete :class:`SSEEvent` objects."""

    def __init__(self) -> None:
        # The unfinished line, in pieces: joined once when its end arrives, so a long event
        # read in small pieces costs linear time, not quadratic (no re-copy per read).
        self._pending: list[bytes] = []
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._pending_cr = False
        self.malformed_lines = 0

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        if b"\n" not in chunk and b"\r" not in chunk:
            if chunk:
                self._pending.append(chunk)
            return
        buffer = b"".join((*self._pending, chunk)) if self._pending else chunk
        self._pending = []
        start = 0
        length = len(buffer)
        while start < length:
            nl = buffer.find(b"\n", start)
            cr = buffer.find(b"\r", start, nl if nl != -1 else length)
            if cr != -1:
                end, nxt = cr, cr + 1
                if nxt < length and buffer[nxt] == 0x0A:
                    nxt += 1
                elif nxt == length:
                    self._pending_cr = True
            elif nl != -1:
                end, nxt = nl, nl + 1
            else:
                break
            event = self._line(buffer[start:end])
            if event is not None:
                yield event
            start = nxt
        if start < length:
            self._pending.append(buffer[start:])

    def flush(self) -> Iterator[SSEEvent]:
        """End of stream: a final event without its blank line is still returned."""
        if self._pending:
            event = self._line(b"".join(self._pending))
            self._pending = []
            if event is not None:
                yield event
        if self._data:
            yield self._dispatch()

    def _dispatch(self) -> SSEEvent:
        event = SSEEvent("\n".join(self._data), self._event or "message", self._id)
        self._data = []
        self._event = ""
        return event

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch() if self._data else None
        line = raw.decode("utf-8", "replace")
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        elif name != "retry":
            self.malformed_lines += 1
        return None


def encode_event(data: bytes | str) -> bytes:
    """One well-formed ``data: …\\n\\n`` frame."""
    payload = data.encode() if isinstance(data, str) else data
    return b"data: " + payload + b"\n\n"
