"""One mock served by several worker processes: the shared journal numbering and merged reads.

Each worker keeps its own journal ring and timing statistics. Journal sequence numbers come
from one counter in shared memory (:class:`SharedSequence`), so they are unique and ordered
across workers. A control request (``GET /_relaygate/journal``, ``/_relaygate/stats`` and their
resets) reaches one worker on the public port; that worker asks its peers over their private
loopback control ports (:class:`Shard`) and merges the answers, so the suite reads one journal
whatever the number of workers.

A merged journal read is exact: it first reads the shared counter (N), then asks every worker
for its entries below N. A worker takes a number and appends its entry in one step of its event
loop, so by the time it answers, every entry numbered below N is in its ring.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import aiohttp
import orjson

__all__ = ["PEER_PREFIX", "PeerError", "Shard", "SharedSequence", "merge_journal_pages"]

# The control paths a worker serves to its peers, on its private loopback port only.
PEER_PREFIX = "/_relaygate/worker/"
_PEER_TIMEOUT_S = 10.0
# A page holds at most ``limit`` entries of at most ``journal_body_bytes`` each (JSON-escaped).
_PEER_MAX_BYTES = 512 * 1024 * 1024


class SharedSequence:
    """Journal numbers shared by forked worker processes (a locked counter in shared memory)."""

    def __init__(self, value: Synchronized[int]) -> None:
        self._value = value

    def take(self) -> int:
        """The next number, never handed out again in any worker."""
        with self._value.get_lock():
            number = self._value.value
            self._value.value = number + 1
        return number

    def peek(self) -> int:
        """The number :meth:`take` would hand out now."""
        return self._value.value


class PeerError(RuntimeError):
    """A peer worker did not answer a control request in time or in bounds."""


@dataclasses.dataclass
class Shard:
    """This worker's place among the mock's workers: its index and its peers' control URLs."""

    index: int
    workers: int
    sequence: SharedSequence
    peer_urls: tuple[str, ...]
    session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the client session used to ask peers (on app startup)."""
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_PEER_TIMEOUT_S),
            json_serialize=lambda value: orjson.dumps(value).decode(),
        )

    async def warm_up(self) -> None:
        """Ask every peer once, before traffic: the first request of a session costs lazy
        imports, a resolver thread and a connection (10 s seen on a saturated machine)."""
        await self.ask_peers("GET", "stats")

    async def close(self) -> None:
        """Close the client session (on app cleanup)."""
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def ask_peers(
        self, method: str, path: str, params: Mapping[str, str] | None = None
    ) -> list[Any]:
        """Every peer's JSON answer to ``method PEER_PREFIX + path``, in peer order."""
        return list(
            await asyncio.gather(*(self._ask(url, method, path, params) for url in self.peer_urls))
        )

    async def _ask(self, url: str, method: str, path: str, params: Mapping[str, str] | None) -> Any:
        assert self.session is not None, "Shard.start() was not awaited"
        where = f"{method} {url}{PEER_PREFIX}{path}"
        try:
            async with self.session.request(
                method, url + PEER_PREFIX + path, params=params
            ) as answer:
                raw = bytearray()
                async for chunk in answer.content.iter_chunked(1 << 16):
                    raw += chunk
                    if len(raw) > _PEER_MAX_BYTES:
                        raise PeerError(f"{where}: answer over {_PEER_MAX_BYTES} bytes")
                if answer.status != 200:
                    raise PeerError(f"{where}: status {answer.status}")
                return orjson.loads(raw)
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise PeerError(f"{where}: {type(exc).__name__}: {exc}") from None


def merge_journal_pages(
    pages: list[tuple[list[dict[str, Any]], int | None]],
    since_seq: int,
    limit: int,
    horizon: int,
) -> tuple[list[dict[str, Any]], int]:
    """One journal page from the workers' pages: ``(entries, next_seq)`` as one ring gives.

    Each page holds a worker's entries with ``since_seq <= seq < horizon`` (up to ``limit``) and
    the seq of its first entry left out by the limit (or None). Below the smallest such seq
    every worker's entries are complete, so the merged page stops there.
    """
    stops = [stop for _, stop in pages if stop is not None]
    cutoff = min(stops) if stops else horizon
    merged = sorted(
        (entry for entries, _ in pages for entry in entries if entry["seq"] < cutoff),
        key=lambda entry: int(entry["seq"]),
    )
    if len(merged) > limit:
        return merged[:limit], int(merged[limit]["seq"])
    if stops:
        return merged, cutoff
    return merged, max(horizon, since_seq)
