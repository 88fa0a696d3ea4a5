"""Incremental Server-Sent Events decoding, tolerant the way a careful client must be.

Fed bytes as they arrive, :class:`SSEDecoder` yields complete events. It follows the
WHATWG rules that matter for OpenAI-style streams: lines end in ``\\n``, ``\\r\\n`` or ``\\r``;
``data:`` with or without the space; several ``data`` lines join with ``\\n``; comments
(``:``) are skipped; an event ends at a blank line; a UTF-8 byte order mark at the very start
of the stream is ignored. Events split across reads or coalesced into one read decode the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

__all__ = ["SSEDecoder", "SSEEvent", "encode_event"]

_BOM = b"\xef\xbb\xbf"


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
        self._buffer = bytearray()
        self._scanned = 0  # the buffer's first bytes up to here hold no line end
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._pending_cr = False
        self._at_start = True  # the stream's first bytes may be a byte order mark
        self.malformed_lines = 0
        # bytes searched while a line was incomplete: linear in the input (tests hold it)
        self.work_bytes = 0

    @property
    def idle(self) -> bool:
        """Past the stream's start with no partial line or event pending: the next bytes
        begin a new event (a relay may then forward whole frames without decoding them)."""
        return not (self._at_start or self._buffer or self._data or self._pending_cr)

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        if self._at_start:
            chunk = bytes(self._buffer) + chunk
            self._buffer.clear()
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._buffer += chunk  # too short to tell yet
                return
            self._at_start = False
            chunk = chunk.removeprefix(_BOM)
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        buffer = self._buffer
        buffer += chunk
        # A partial line grows in place and only its new bytes are searched, so a long
        # line arriving in many small reads costs linear time, not quadratic.
        start = 0
        scan = self._scanned
        length = len(buffer)
        while start < length:
            frm = start if start > scan else scan
            nl = buffer.find(b"\n", frm)
            cr = buffer.find(b"\r", frm, nl if nl != -1 else length)
            self.work_bytes += (nl if nl != -1 else length) - frm
            if cr != -1:
                end, nxt = cr, cr + 1
                if nxt < length and buffer[nxt] == 0x0A:
                    nxt += 1
                elif nxt == length:
                    self._pending_cr = True
            elif nl != -1:
                end, nxt = nl, nl + 1
            else:
                scan = length
                break
            event = self._line(bytes(buffer[start:end]))
            if event is not None:
                yield event
            start = nxt
        if start:
            del buffer[:start]
        self._scanned = max(scan - start, 0)

    def flush(self) -> Iterator[SSEEvent]:
        """End of stream: a final event without its blank line is still returned."""
        if self._buffer:
            event = self._line(bytes(self._buffer))
            self._buffer.clear()
            self._scanned = 0
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
