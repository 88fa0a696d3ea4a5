"""What the timing client does with a response body, event by event.

Owns :class:`SSESink` (splits an SSE body into events, stamps each with the arrival of the
bytes that completed it, and records token events) with its fast path, and :class:`BodySink`
(keeps the head of any other body). The fast path is the per-event hot path under load:
frames split with ``bytes.find``; a plain token chunk recognised by byte search
(:func:`fast_token`), then by the stream's :class:`TokenTemplate`; only the first token,
role/finish/usage chunks and anything unusual are parsed as JSON. The sink also holds the
one per-event bound, ``max_tokens``: past it, :class:`Overrun`.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Protocol

import orjson

from relaygate.load import outcomes
from relaygate.sse import SSEDecoder

if TYPE_CHECKING:
    from relaygate.load.client import RequestResult

__all__ = [
    "BodySink",
    "Overrun",
    "ReadTimes",
    "SSESink",
    "TokenTemplate",
    "fast_token",
]

_BODY_KEEP_BYTES = 65536


class Overrun(Exception):
    """More token events than ``max_tokens`` allows; the client ends the stream."""

    outcome = outcomes.OVERRUN


class ReadTimes(Protocol):
    """What the sink reads from the client's socket reader after each read."""

    kernel: bool  # arrival stamps are the kernel's
    now: int  # when the last ``recv`` returned


class BodySink:
    """Keeps (the head of) a non-SSE body, e.g. a JSON answer or an error page."""

    __slots__ = ("_parts", "_res", "_size")

    def __init__(self, res: RequestResult) -> None:
        self._res = res
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, payload: bytes, now: int) -> None:
        if self._size < _BODY_KEEP_BYTES:
            self._parts.append(payload)
            self._size += len(payload)

    def close(self, now: int) -> None:
        self._res.body = b"".join(self._parts)[:_BODY_KEEP_BYTES]


_STAMP_RE = re.compile(rb'"relaygate_emit_ns":(\d+)[,}]')
_CONTENT = b'"content":"'


def fast_token(data: bytes) -> int | None:
    """Byte-level check for the common token chunk; returns its emit stamp (0 if none).

    ``None`` means "parse it as JSON": anything but exactly one ``delta`` with non-empty
    ``content`` written ``"content":"…``, no non-null ``finish_reason``/``usage``, no
    ``error``, ``tool_calls`` or reasoning keys, and at most one well-formed stamp. Key names
    found this way are real keys: inside JSON strings a quote is always escaped.
    """
    if data[:1] != b"{" or data[-1:] != b"}":
        return None
    pos = data.find(_CONTENT)
    if pos < 0 or data[pos + 11 : pos + 12] in (b'"', b""):
        return None
    if (
        data.count(b'"content"') != 1
        or data.count(b'"delta"') != 1
        or b'"error"' in data
        or b'"tool_calls"' in data
        or b'"reasoning' in data
        or data.count(b'"finish_reason"') != data.count(b'"finish_reason":null')
        or data.count(b'"usage"') != data.count(b'"usage":null')
    ):
        return None
    if b'"relaygate_emit_ns"' not in data:
        return 0
    match = _STAMP_RE.search(data, pos)
    if match is None or data.count(b'"relaygate_emit_ns"') != 1:
        return None
    return int(match.group(1))


class TokenTemplate:
    """The bytes around the content of a token chunk that passed :func:`fast_token`.

    Chunks of one stream differ only in the content string and the stamp (same id,
    ``created``, model, key order). A chunk that starts with ``head``, has a content string
    (first unescaped quote ends it) and then exactly ``tail`` (plus stamp digits and ``}``)
    has the same structure as the validated one, so it is a token chunk too: one
    ``startswith``, one ``find`` and one compare instead of a dozen scans.
    """

    __slots__ = ("head", "stamped", "tail")

    def __init__(self, head: bytes, tail: bytes, stamped: bool) -> None:
        self.head = head
        self.tail = tail
        self.stamped = stamped

    @classmethod
    def of(cls, data: bytes) -> TokenTemplate | None:
        pos = data.find(_CONTENT)
        if pos < 0:
            return None
        start = pos + len(_CONTENT)
        end = _string_end(data, start)
        if end < 0:
            return None
        tail = data[end:]
        mark = tail.find(b'"relaygate_emit_ns":')
        if mark < 0:
            return cls(data[:start], tail, False)
        digits = tail[mark + 20 : -1]
        if not digits.isdigit() or tail[-1:] != b"}":
            return None
        return cls(data[:start], tail[: mark + 20], True)

    def match(self, data: bytes) -> int | None:
        """The emit stamp (0 without) if ``data`` fits the template, else None."""
        head = self.head
        if not data.startswith(head):
            return None
        start = len(head)
        end = _string_end(data, start)
        if end <= start:  # no end, or empty content (not a token)
            return None
        tail = self.tail
        if not self.stamped:
            return 0 if len(data) - end == len(tail) and data.startswith(tail, end) else None
        if not data.startswith(tail, end) or data[-1:] != b"}":
            return None
        digits = data[end + len(tail) : -1]
        return int(digits) if digits.isdigit() else None


def _string_end(data: bytes, start: int) -> int:
    """Index of the quote ending the JSON string that starts at ``start`` (-1 if none)."""
    end = data.find(b'"', start)
    while end > start and data[end - 1] == 0x5C:  # backslash: count the run, odd = escaped
        run = 1
        while end - 1 - run >= start and data[end - 1 - run] == 0x5C:
            run += 1
        if run % 2 == 0:
            break
        end = data.find(b'"', end + 1)
    return end


class SSESink:
    """Splits SSE events and stamps each with the arrival of the bytes completing it.

    Fast path (no ``\\r`` in the stream): events are cut at ``\\n\\n`` with ``bytes.find``;
    a single ``data:`` line is taken as is, any other event (comments, ``event:``, several
    lines) goes through the WHATWG decoder one whole event at a time, so the decoder never
    holds a partial event. A stream with a ``\\r`` (CRLF or CR line ends) goes to the decoder
    from there on.

    A partial event waits in a ``bytearray`` that grows in place; each read searches only its
    new bytes for the end of the event, so an event arriving in many reads costs time linear
    in its size. ``work_bytes`` counts the bytes searched or copied on that path (tests hold
    it linear). More than ``token_limit`` token events raise ``Overrun``.
    """

    __slots__ = (
        "_decoder",
        "_general",
        "_pending",
        "_reader",
        "_res",
        "_template",
        "_token_limit",
        "work_bytes",
    )

    def __init__(
        self, res: RequestResult, reader: ReadTimes | None = None, token_limit: int = sys.maxsize
    ) -> None:
        self._res = res
        self._reader = reader
        self._decoder = SSEDecoder()
        self._general = False
        self._pending = bytearray()
        self._template: TokenTemplate | None = None
        self._token_limit = token_limit
        self.work_bytes = 0

    def feed(self, payload: bytes, now: int) -> None:
        if self._general:
            for event in self._decoder.feed(payload):
                self._data(event.data.encode(), event.event, now)
            return
        pending = self._pending
        if pending:
            if b"\r" in payload:
                self._to_general(bytes(pending) + payload, now)
                return
            scan = len(pending) - 1  # a "\n\n" may straddle the old and the new bytes
            pending += payload
            end = pending.find(b"\n\n", scan)
            self.work_bytes += len(pending) - scan
            if end < 0:
                return
            buf = bytes(pending)
            self.work_bytes += len(buf)
            pending.clear()
        else:
            if b"\r" in payload:
                self._to_general(payload, now)
                return
            buf = payload
            end = buf.find(b"\n\n")
            if end < 0:
                pending += buf
                return
        pos = 0
        while end >= 0:
            if end > pos:
                if buf.startswith(b"data:", pos) and buf.find(b"\n", pos, end) < 0:
                    if buf[pos + 5 : pos + 6] == b" ":
                        self._data(buf[pos + 6 : end], "message", now)
                    else:
                        self._data(buf[pos + 5 : end], "message", now)
                else:
                    for event in self._decoder.feed(buf[pos : end + 2]):
                        self._data(event.data.encode(), event.event, now)
            pos = end + 2
            end = buf.find(b"\n\n", pos)
        if pos < len(buf):
            pending += memoryview(buf)[pos:]

    def _to_general(self, data: bytes, now: int) -> None:
        self._general = True
        self._pending.clear()
        self.feed(data, now)

    def close(self, now: int) -> None:
        if self._pending:
            for event in self._decoder.feed(bytes(self._pending)):
                self._data(event.data.encode(), event.event, now)
            self._pending.clear()
        for event in self._decoder.flush():
            self._data(event.data.encode(), event.event, now)

    def _data(self, data: bytes, name: str, now: int) -> None:
        res = self._res
        res.events += 1
        if res.t_first_event_ns is None:
            res.t_first_event_ns = now
        if name == "message" and res.t_first_token_ns is not None:
            template = self._template
            stamp = None if template is None else template.match(data)
            if stamp is None:
                stamp = fast_token(data)
                if stamp is not None and template is None:
                    self._template = TokenTemplate.of(data)
            if stamp is not None:
                # Token chunk after the first: stamps only, no JSON.
                res.t_last_token_ns = now
                tokens = res.token_event_ns
                tokens.append(now)
                if stamp:
                    lag = now - stamp
                    res.emit_lag_ns.append(lag)
                    res.token_emit_lag_ns.append(lag)
                reader = self._reader
                if reader is not None and reader.kernel:
                    res.recv_lag_ns.append(reader.now - now)
                if len(tokens) > self._token_limit:
                    raise self._overrun()
                return
        self._parse(data, name, now)

    def _overrun(self) -> Overrun:
        return Overrun(
            f"{len(self._res.token_event_ns)} token events, more than max_tokens allows "
            f"({self._token_limit} with the margin)"
        )

    def _parse(self, data: bytes, name: str, now: int) -> None:
        res = self._res
        if data.strip() == b"[DONE]":
            res.saw_done = True
            return
        if name == "error":
            res.error = f"in-stream error event: {data[:200].decode('utf-8', 'replace')}"
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            res.malformed_events += 1
            return
        if not isinstance(obj, dict):
            res.malformed_events += 1
            return
        if obj.get("error"):
            res.error = f"in-stream error: {orjson.dumps(obj['error']).decode()[:200]}"
            return
        stamp = obj.get("relaygate_emit_ns")
        stamp_lag = now - stamp if isinstance(stamp, int) else None
        if stamp_lag is not None:
            res.emit_lag_ns.append(stamp_lag)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            completion = usage.get("completion_tokens")
            if isinstance(completion, int):
                res.completion_tokens = completion
            prompt = usage.get("prompt_tokens")
            if isinstance(prompt, int):
                res.prompt_tokens = prompt
        token = False
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and (
                delta.get("content")
                or delta.get("reasoning_content")
                or delta.get("reasoning")
                or delta.get("tool_calls")
            ):
                token = True
            finish = choice.get("finish_reason")
            if finish:
                res.finish_reason = str(finish)
        if token:
            if res.t_first_token_ns is None:
                res.t_first_token_ns = now
                res.first_token_emit_lag_ns = stamp_lag
            res.t_last_token_ns = now
            res.token_event_ns.append(now)
            if stamp_lag is not None:
                res.token_emit_lag_ns.append(stamp_lag)
            reader = self._reader
            if reader is not None and reader.kernel:
                res.recv_lag_ns.append(reader.now - now)
            if len(res.token_event_ns) > self._token_limit:
                raise self._overrun()
