"""A precise event scheduler and cheap timing statistics for the mock's streams.

The loop's timers (libuv / epoll) have about 1 ms granularity, which would make directed
inter-event gaps jitter by +-1 ms. :class:`PreciseClock` keeps one heap of deadlines: it arms a
loop timer ``early_ns`` before the earliest deadline, then polls with ``call_soon`` (one poll per
loop iteration, so socket I/O keeps flowing) until the deadline passes, and resolves every due
waiter at once. :class:`CoarseClock` is the cheap alternative for runs where +-1 ms does not
matter: deadlines round up to a tick and one loop timer per tick wakes them all, with no
polling. All times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from array import array
from typing import Any, Protocol

__all__ = ["Clock", "CoarseClock", "Histogram", "PreciseClock", "TimingStats"]

_monotonic_ns = time.monotonic_ns


class Clock(Protocol):
    """What a stream needs from a scheduler: sleep until an absolute ``monotonic_ns``."""

    async def sleep_until(self, due_ns: int) -> None:
        """Return at ``due_ns`` or after it, never before."""

    def close(self) -> None:
        """Cancel every waiter (server shutdown)."""


class PreciseClock:
    """Wake coroutines at exact ``monotonic_ns`` deadlines (``await clock.sleep_until(t)``)."""

    def __init__(self, early_ns: int = 1_500_000) -> None:
        self.early_ns = early_ns
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._polling = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        """Waiters not yet woken (cancelled ones included until their deadline)."""
        return len(self._heap)

    async def sleep_until(self, due_ns: int) -> None:
        """Return at ``due_ns`` or just after it; immediately (no yield) if it has passed."""
        if due_ns <= _monotonic_ns():
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (due_ns, next(self._order), future))
        if self._heap[0][2] is future and not self._polling:
            self._arm(loop)
        await future

    def close(self) -> None:
        """Cancel the timer and every waiter (server shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, _, future in self._heap:
            future.cancel()
        self._heap.clear()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._heap:
            return
        wait_ns = self._heap[0][0] - _monotonic_ns() - self.early_ns
        if wait_ns > 0:
            self._timer = loop.call_later(wait_ns / 1e9, self._tick)
        else:
            self._polling = True
            loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._polling = False
        heap = self._heap
        now = _monotonic_ns()
        while heap and heap[0][0] <= now:
            future = heapq.heappop(heap)[2]
            if not future.done():
                future.set_result(None)
        if heap and self._loop is not None:
            self._arm(self._loop)


class CoarseClock:
    """Wake coroutines on a coarse tick: cheap, accurate to about one tick.

    A deadline rounds up to the next multiple of ``tick_ns``; every waiter of one tick is woken
    by one loop timer, together, so their writes go out in one loop iteration. Nothing polls,
    so an idle stretch between ticks costs no CPU (the precise clock spins through the last
    ``early_ns`` before every deadline). Never early; late by up to one tick plus the loop
    timer's own slack (about 1 ms).
    """

    def __init__(self, tick_ns: int = 1_000_000) -> None:
        if tick_ns < 1:
            raise ValueError(f"tick_ns must be >= 1, got {tick_ns}")
        self.tick_ns = tick_ns
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        """Waiters not yet woken."""
        return sum(len(waiters) for waiters in self._waiters.values())

    async def sleep_until(self, due_ns: int) -> None:
        """Return at the first tick at or after ``due_ns``; at once if it has passed."""
        now = _monotonic_ns()
        if due_ns <= now:
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        tick = -(-due_ns // self.tick_ns)
        future: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters.get(tick)
        if waiters is None:
            waiters = self._waiters[tick] = []
            self._timers[tick] = loop.call_later(
                (tick * self.tick_ns - now) / 1e9, self._wake, tick
            )
        waiters.append(future)
        await future

    def close(self) -> None:
        """Cancel every timer and waiter (server shutdown)."""
        for timer in self._timers.values():
            timer.cancel()
        for waiters in self._waiters.values():
            for future in waiters:
                future.cancel()
        self._timers.clear()
        self._waiters.clear()

    def _wake(self, tick: int) -> None:
        remaining_ns = tick * self.tick_ns - _monotonic_ns()
        if remaining_ns > 0 and self._loop is not None:
            # Loop timers may fire up to their resolution early; "never early" holds anyway.
            self._timers[tick] = self._loop.call_later(remaining_ns / 1e9, self._wake, tick)
            return
        self._timers.pop(tick, None)
        for future in self._waiters.pop(tick, ()):
            if not future.done():
                future.set_result(None)


class Histogram:
    """Fixed-size histogram of values in ms with 10 us buckets over ``[low_ms, high_ms)``.

    Values outside the range are counted apart (``under_range``, ``over_range``) and exact
    min/max/mean are kept; a percentile that falls among the values above the range is the
    exact max (an upper bound, so lateness past the range is never understated), one among
    those below it the exact min. Recording is O(1) with no allocation; percentiles are
    computed on read.
    """

    BUCKET_US = 10

    def __init__(self, low_ms: float, high_ms: float) -> None:
        self._low_us = int(low_ms * 1000)
        self._size = int((high_ms - low_ms) * 1000) // self.BUCKET_US
        self._counts = array("q", bytes(8 * self._size))
        self.reset()

    def reset(self) -> None:
        """Forget every value."""
        for i in range(self._size):
            self._counts[i] = 0
        self.count = 0
        self._under = 0
        self._over = 0
        self._sum_ns = 0
        self._min_ns = 0
        self._max_ns = 0

    def record_ns(self, value_ns: int) -> None:
        """Add one value given in ns."""
        index = (value_ns // 1000 - self._low_us) // self.BUCKET_US
        if index < 0:
            self._under += 1
        elif index >= self._size:
            self._over += 1
        else:
            self._counts[index] += 1
        if self.count == 0 or value_ns < self._min_ns:
            self._min_ns = value_ns
        if self.count == 0 or value_ns > self._max_ns:
            self._max_ns = value_ns
        self.count += 1
        self._sum_ns += value_ns

    def export(self) -> dict[str, Any]:
        """The raw state as JSON (non-empty buckets only), for :meth:`absorb` elsewhere."""
        return {
            "buckets": [[i, n] for i, n in enumerate(self._counts) if n],
            "count": self.count,
            "under": self._under,
            "over": self._over,
            "sum_ns": self._sum_ns,
            "min_ns": self._min_ns,
            "max_ns": self._max_ns,
        }

    def absorb(self, raw: dict[str, Any]) -> None:
        """Add the values of an :meth:`export` of a histogram with the same range."""
        if not raw["count"]:
            return
        for index, count in raw["buckets"]:
            self._counts[index] += count
        if self.count == 0 or raw["min_ns"] < self._min_ns:
            self._min_ns = raw["min_ns"]
        if self.count == 0 or raw["max_ns"] > self._max_ns:
            self._max_ns = raw["max_ns"]
        self.count += raw["count"]
        self._under += raw.get("under", 0)
        self._over += raw.get("over", 0)
        self._sum_ns += raw["sum_ns"]

    def percentile_ms(self, fraction: float) -> float:
        """Upper edge of the bucket holding the given fraction (nearest rank), in ms."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(fraction * self.count))
        if rank <= self._under:
            return self._min_ns / 1e6
        seen = self._under
        for index, count in enumerate(self._counts):
            seen += count
            if seen >= rank:
                edge_us = self._low_us + (index + 1) * self.BUCKET_US
                return min(max(edge_us / 1000, self._min_ns / 1e6), self._max_ns / 1e6)
        return self._max_ns / 1e6

    def summary(self) -> dict[str, Any]:
        """``{"count", "mean", "min", "p50", "p90", "p99", "max"}`` in ms, and the counts of
        values beyond the range (``under_range``, ``over_range``)."""
        if self.count == 0:
            return {
                "count": 0,
                "mean": None,
                "min": None,
                "p50": None,
                "p90": None,
                "p99": None,
                "max": None,
                "under_range": 0,
                "over_range": 0,
            }
        return {
            "count": self.count,
            "mean": round(self._sum_ns / self.count / 1e6, 4),
            "min": round(self._min_ns / 1e6, 4),
            "p50": round(self.percentile_ms(0.50), 4),
            "p90": round(self.percentile_ms(0.90), 4),
            "p99": round(self.percentile_ms(0.99), 4),
            "max": round(self._max_ns / 1e6, 4),
            "under_range": self._under,
            "over_range": self._over,
        }


class TimingStats:
    """The mock's own measurement of how well it met the directed schedule.

    ``write_lateness``: actual write time minus the event's scheduled time (>= 0).
    ``gap_error``: actual gap between consecutive content events of one stream minus the
    directed ``itl_ms`` (signed).
    """

    def __init__(self) -> None:
        self.write_lateness = Histogram(0.0, 100.0)
        self.gap_error = Histogram(-50.0, 50.0)
        self.active_streams = 0
        self.peak_active_streams = 0
        self.reset()

    def stream_started(self) -> None:
        """Count a stream whose headers are about to go out."""
        self.streams_started += 1
        self.active_streams += 1
        if self.active_streams > self.peak_active_streams:
            self.peak_active_streams = self.active_streams

    def stream_finished(self) -> None:
        """Count a stream that ended (completed, faulted, or its client went away)."""
        self.streams_finished += 1
        self.active_streams -= 1

    def reset(self) -> None:
        """Start a new measurement window."""
        self.write_lateness.reset()
        self.gap_error.reset()
        self.since_ns = _monotonic_ns()
        self.streams_started = 0
        self.streams_finished = 0
        self.peak_active_streams = self.active_streams
        self.events = 0

    def export(self) -> dict[str, Any]:
        """The raw state as JSON, for :meth:`absorb` in another worker process."""
        return {
            "since_ns": self.since_ns,
            "started": self.streams_started,
            "finished": self.streams_finished,
            "active": self.active_streams,
            "peak_active": self.peak_active_streams,
            "events": self.events,
            "write_lateness": self.write_lateness.export(),
            "gap_error": self.gap_error.export(),
        }

    def absorb(self, raw: dict[str, Any]) -> None:
        """Add another worker's :meth:`export`: counts add up, the window starts at the
        earliest reset; ``peak_active`` becomes the sum of the peaks (an upper bound)."""
        self.since_ns = min(self.since_ns, raw["since_ns"])
        self.streams_started += raw["started"]
        self.streams_finished += raw["finished"]
        self.active_streams += raw["active"]
        self.peak_active_streams += raw["peak_active"]
        self.events += raw["events"]
        self.write_lateness.absorb(raw["write_lateness"])
        self.gap_error.absorb(raw["gap_error"])

    def summary(self) -> dict[str, Any]:
        """The JSON served on ``GET /_relaygate/stats``."""
        window_s = (_monotonic_ns() - self.since_ns) / 1e9
        return {
            "window_s": round(window_s, 3),
            "streams": {
                "started": self.streams_started,
                "finished": self.streams_finished,
                "active": self.active_streams,
                "peak_active": self.peak_active_streams,
            },
            "events": self.events,
            "events_per_s": round(self.events / window_s, 1) if window_s > 0 else 0.0,
            "write_lateness_ms": self.write_lateness.summary(),
            "gap_error_ms": self.gap_error.summary(),
        }
