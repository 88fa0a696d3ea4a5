"""A mergeable latency histogram with fixed resolution (HDR-style, numpy-free).

Locust's own buckets are 1 ms below 100 ms and 10 ms below 1 s, too coarse for
inter-token latencies of a few ms. This histogram keeps:

* **10 µs linear buckets below 100 ms** (0.01 ms resolution, 10x finer than asked);
* **log buckets of 0.1 % relative width above 100 ms** (0.1 ms at 100 ms, 1 ms at 1 s).

Buckets are stored sparsely (a dict of index -> count), so an idle histogram costs nothing
and a busy one a few thousand entries. Exact ``min``, ``max``, ``sum`` and ``count`` are
kept besides the buckets. Two histograms merge by adding counts, which is what the Locust
master does with the plain-dict snapshots its workers send (:meth:`to_dict`/:meth:`from_dict`).
The sum is kept in whole nanoseconds (an int): float addition depends on its order, so a
master's mean would differ from one process's in the last digits; integers add exactly
(tests/test_load_merge.py).

Values are recorded in milliseconds (floats). Negative values are clamped to 0 and counted in
``negative`` (a negative latency means a clock or bookkeeping problem worth surfacing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["LINEAR_LIMIT_MS", "LINEAR_STEP_MS", "LOG_RATIO", "Histogram"]

LINEAR_STEP_MS = 0.01
LINEAR_LIMIT_MS = 100.0
LOG_RATIO = 1.001
_LINEAR_BUCKETS = round(LINEAR_LIMIT_MS / LINEAR_STEP_MS)
_LOG_BASE = math.log(LOG_RATIO)


def bucket_index(value_ms: float) -> int:
    """The bucket a (non-negative) value falls into."""
    if value_ms < LINEAR_LIMIT_MS:
        return int(value_ms / LINEAR_STEP_MS)
    return _LINEAR_BUCKETS + int(math.log(value_ms / LINEAR_LIMIT_MS) / _LOG_BASE)


def bucket_bounds(index: int) -> tuple[float, float]:
    """``(low, high)`` edges of a bucket in ms."""
    if index < _LINEAR_BUCKETS:
        return index * LINEAR_STEP_MS, (index + 1) * LINEAR_STEP_MS
    k = index - _LINEAR_BUCKETS
    return LINEAR_LIMIT_MS * LOG_RATIO**k, LINEAR_LIMIT_MS * LOG_RATIO ** (k + 1)


class Histogram:
    """Sparse fixed-resolution histogram of millisecond values; see the module docstring."""

    __slots__ = ("buckets", "count", "max", "min", "negative", "sum_ns")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum_ns = 0
        self.min = math.inf
        self.max = -math.inf
        self.negative = 0

    def record(self, value_ms: float, count: int = 1) -> None:
        """Add ``count`` observations of ``value_ms``."""
        if value_ms != value_ms:  # NaN: a bookkeeping bug upstream; never poison the stats
            return
        if value_ms < 0.0:
            self.negative += count
            value_ms = 0.0
        index = bucket_index(value_ms)
        self.buckets[index] = self.buckets.get(index, 0) + count
        self.count += count
        self.sum_ns += round(value_ms * 1e6) * count
        if value_ms < self.min:
            self.min = value_ms
        if value_ms > self.max:
            self.max = value_ms

    def record_many(self, values_ms: Iterable[float]) -> None:
        for value in values_ms:
            self.record(value)

    def record_ns(self, values_ns: Iterable[int], *, absolute: bool = False) -> None:
        """Add nanosecond values (``abs()`` of each when ``absolute``) in one pass.

        Same buckets as :meth:`record` (a stream's 50-odd ITL samples cost one call here
        instead of 50)."""
        buckets = self.buckets
        get = buckets.get
        count = negative = total = 0
        low = self.min
        high = self.max
        for value_ns in values_ns:
            if absolute and value_ns < 0:
                value_ns = -value_ns
            if value_ns < 0:
                negative += 1
                value_ns = 0
            value = value_ns / 1e6
            index = int(value / LINEAR_STEP_MS) if value < LINEAR_LIMIT_MS else bucket_index(value)
            buckets[index] = get(index, 0) + 1
            count += 1
            total += value_ns
            if value < low:
                low = value
            if value > high:
                high = value
        self.count += count
        self.sum_ns += total
        self.negative += negative
        self.min = low
        self.max = high

    def merge(self, other: Histogram) -> None:
        """Add another histogram's observations to this one."""
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.count += other.count
        self.sum_ns += other.sum_ns
        self.negative += other.negative
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def sum(self) -> float:
        """The sum of all observations in ms (to the nanosecond)."""
        return self.sum_ns / 1e6

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile ``q`` in [0, 100] (None when empty).

        Returns the midpoint of the bucket holding the rank, clamped to the exact min/max,
        so the error is at most half a bucket: 5 µs below 100 ms, 0.05 % above.
        """
        if not self.count:
            return None
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be within 0..100, got {q}")
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                return min(max((low + high) / 2.0, self.min), self.max)
        return self.max  # pragma: no cover - counts always add up to self.count

    def percentiles(self, qs: Iterable[float]) -> dict[float, float | None]:
        """Several percentiles in one pass over the sorted buckets."""
        wanted = sorted(set(qs))
        out: dict[float, float | None] = {q: None for q in wanted}
        if not self.count:
            return out
        ranks = [(max(1, math.ceil(q / 100.0 * self.count)), q) for q in wanted]
        seen = 0
        pos = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            while pos < len(ranks) and seen >= ranks[pos][0]:
                low, high = bucket_bounds(index)
                out[ranks[pos][1]] = min(max((low + high) / 2.0, self.min), self.max)
                pos += 1
            if pos == len(ranks):
                break
        return out

    def cdf(self) -> list[tuple[float, float]]:
        """``(upper edge ms, cumulative fraction)`` per non-empty bucket, for plots."""
        points: list[tuple[float, float]] = []
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            points.append((min(bucket_bounds(index)[1], self.max), seen / self.count))
        return points

    def to_dict(self) -> dict[str, Any]:
        """A msgpack/JSON-safe snapshot: flat ``[index, count, …]`` list plus exact stats."""
        flat: list[int] = []
        for index, count in self.buckets.items():
            flat.extend((index, count))
        return {
            "b": flat,
            "n": self.count,
            "s": self.sum,
            "sn": self.sum_ns,
            "lo": self.min if self.count else None,
            "hi": self.max if self.count else None,
            "neg": self.negative,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        hist = cls()
        flat = data.get("b", [])
        for pos in range(0, len(flat), 2):
            hist.buckets[int(flat[pos])] = int(flat[pos + 1])
        hist.count = int(data.get("n", 0))
        # "sn" (exact) since the sum became an int; older snapshots carry only "s" (ms).
        sum_ns = data.get("sn")
        hist.sum_ns = int(sum_ns) if sum_ns is not None else round(float(data.get("s", 0.0)) * 1e6)
        hist.negative = int(data.get("neg", 0))
        if hist.count:
            hist.min = float(data["lo"])
            hist.max = float(data["hi"])
        return hist

    def summary(self, qs: Iterable[float] = (50, 90, 99)) -> dict[str, float | int | None]:
        """``{"p50", "p90", "p99", "max", "mean", "count"}``-style dict (ms, rounded to µs)."""
        out: dict[str, float | int | None] = {}
        for q, value in self.percentiles(qs).items():
            out[f"p{q:g}"] = _round(value)
        out["max"] = _round(self.max if self.count else None)
        out["mean"] = _round(self.mean)
        out["count"] = self.count
        return out

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, p50={self.percentile(50) if self.count else None})"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
