"""The journal: a bounded ring of every request the mock received, for the suite to read.

Entries are kept compact on purpose: the body is stored as bytes (parsed only when the journal
is read) and headers as tuples of strings, so a full ring adds almost nothing to the garbage
collector's work while the mock is under load.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import orjson

__all__ = ["Journal", "JournalEntry", "LocalSequence", "Sequence", "shrink_json"]

_TRUNCATED_STRING_CHARS = 1024


def shrink_json(value: Any, max_chars: int = _TRUNCATED_STRING_CHARS) -> Any:
    """``value`` with every string longer than ``max_chars`` cut and marked."""
    if isinstance(value, str):
        if len(value) <= max_chars:
            return value
        return f"{value[:max_chars]}…[{len(value) - max_chars} chars truncated]"
    if isinstance(value, list):
        return [shrink_json(item, max_chars) for item in value]
    if isinstance(value, dict):
        return {key: shrink_json(item, max_chars) for key, item in value.items()}
    return value


class JournalEntry:
    """One request: what arrived, and what the mock answered (filled in as it answers)."""

    __slots__ = (
        "answer",
        "arrival_ns",
        "arrival_wall",
        "body",
        "body_bytes",
        "body_is_json",
        "body_truncated",
        "done",
        "events",
        "first_event_ns",
        "headers",
        "last_event_ns",
        "method",
        "path",
        "query",
        "seq",
        "status",
        "tag",
        "worker",
    )

    def __init__(
        self,
        seq: int,
        method: str,
        path: str,
        query: tuple[tuple[str, str], ...],
        headers: tuple[tuple[str, str], ...],
        arrival_ns: int,
        worker: int = 0,
    ) -> None:
        self.seq = seq
        self.worker = worker
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.arrival_ns = arrival_ns
        self.arrival_wall = time.time()
        self.body = b""
        self.body_bytes = 0
        self.body_is_json = False
        self.body_truncated = False
        self.tag: str | None = None
        self.status: int | None = None
        self.answer: str | None = None
        self.events = 0
        self.first_event_ns: int | None = None
        self.last_event_ns: int | None = None
        self.done = False

    def set_body(self, raw: bytes, total_bytes: int, parsed: Any, limit: int) -> None:
        """Keep the body: JSON as JSON (long strings shortened past ``limit``), else text."""
        self.body_bytes = total_bytes
        if parsed is not None and total_bytes <= limit:
            self.body, self.body_is_json = raw, True
            return
        if parsed is not None:
            shrunk = orjson.dumps(shrink_json(parsed))
            if len(shrunk) <= limit:
                self.body, self.body_is_json, self.body_truncated = shrunk, True, True
                return
        self.body = raw[:limit]
        self.body_truncated = total_bytes > limit

    def answered(self, status: int, answer: str) -> None:
        """Record the status and the kind of answer (json, stream, error, ...)."""
        self.status = status
        self.answer = answer

    def to_json(self) -> dict[str, Any]:
        """The entry as served on ``GET /_relaygate/journal``."""
        body: Any
        if self.body_is_json:
            body = orjson.loads(self.body)
        elif self.body:
            body = self.body.decode("utf-8", "replace")
        else:
            body = None
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": dict(self.query),
            "headers": [list(pair) for pair in self.headers],
            "body": body,
            "body_bytes": self.body_bytes,
            "body_truncated": self.body_truncated,
            "tag": self.tag,
            "arrival_ns": self.arrival_ns,
            "arrival_wall": self.arrival_wall,
            "status": self.status,
            "answer": self.answer,
            "events": self.events,
            "first_event_ns": self.first_event_ns,
            "last_event_ns": self.last_event_ns,
            "done": self.done,
            "worker": self.worker,
        }


class Sequence(Protocol):
    """Where journal sequence numbers come from (one process, or shared by worker processes)."""

    def take(self) -> int:
        """The next number, never handed out again."""

    def peek(self) -> int:
        """The number :meth:`take` would hand out now."""


class LocalSequence:
    """Sequence numbers 1, 2, 3, ... for a journal owned by one process."""

    def __init__(self) -> None:
        self._next = 1

    def take(self) -> int:
        """The next number."""
        value = self._next
        self._next = value + 1
        return value

    def peek(self) -> int:
        """The number :meth:`take` would hand out now."""
        return self._next


class Journal:
    """A ring of the last ``size`` :class:`JournalEntry` objects, numbered from 1.

    With worker processes each worker keeps its own ring, numbered from one shared
    ``sequence``, and a read merges the workers' pages (:mod:`relaygate.mock.shards`).
    """

    def __init__(self, size: int, sequence: Sequence | None = None, worker: int = 0) -> None:
        self._entries: collections.deque[JournalEntry] = collections.deque(maxlen=size)
        self._sequence = sequence or LocalSequence()
        self.worker = worker

    @property
    def next_seq(self) -> int:
        """The sequence number the next request will get."""
        return self._sequence.peek()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[JournalEntry]:
        return iter(self._entries)

    def record(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: tuple[tuple[str, str], ...],
        arrival_ns: int,
    ) -> JournalEntry:
        """Append a new entry (the oldest falls out when the ring is full)."""
        # Taking the number and appending happen in one step of the event loop, so a merged
        # read that sees the shared sequence at N finds every entry below N in its worker.
        entry = JournalEntry(
            self._sequence.take(),
            method,
            path,
            tuple(query.items()),
            headers,
            arrival_ns,
            self.worker,
        )
        self._entries.append(entry)
        return entry

    def clear(self) -> None:
        """Forget every entry; sequence numbers keep increasing."""
        self._entries.clear()

    def query(
        self, tag: str | None = None, since_seq: int = 0, limit: int = 1000
    ) -> tuple[list[JournalEntry], int]:
        """Entries with ``seq >= since_seq`` (and ``tag``), oldest first, and the next seq.

        ``next_seq`` is where a follow-up query should start: past every entry examined.
        """
        found, stop = self.page(tag, since_seq, limit)
        return found, stop if stop is not None else max(self.next_seq, since_seq)

    def page(
        self, tag: str | None, since_seq: int, limit: int, below: int | None = None
    ) -> tuple[list[JournalEntry], int | None]:
        """Up to ``limit`` entries with ``since_seq <= seq < below`` (and ``tag``), oldest
        first, and the seq of the first matching entry left out by ``limit`` (else None)."""
        found: list[JournalEntry] = []
        for entry in self._entries:
            if entry.seq < since_seq or (tag is not None and entry.tag != tag):
                continue
            if below is not None and entry.seq >= below:
                break
            if len(found) >= limit:
                return found, entry.seq
            found.append(entry)
        return found, None
