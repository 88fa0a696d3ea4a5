"""The metrics registry: our own histograms and counters, mergeable from worker to master.

Locust's request statistics stay the place for *requests* (one ``chat.stream`` entry per
stream). Per-token timings live here instead: firing them as Locust request events would add
one fake "request" per metric per stream and inflate Locust's RPS (locust#2289), and
Locust's buckets (10 ms between 100 ms and 1 s) are too coarse for ITL anyway.

A worker sends :meth:`Registry.take_delta` with every Locust ``report_to_master`` (every 3 s
and once more when it stops); the master adds it with :meth:`Registry.merge`. Both are plain
dicts of lists/numbers, so msgpack carries them unchanged.

Histogram names (``scope`` prefixes them, e.g. ``direct.ttft_ms`` for the overhead user):
``ttft_ms``, ``ack_ms``, ``itl_ms``, ``tpot_ms``, ``e2e_ms``, ``ttft_intended_ms``,
``e2e_intended_ms``, ``schedule_lag_ms``, ``emit_to_recv_ms``, ``first_token_emit_to_recv_ms``,
``itl_stamp_error_ms``, ``recv_lag_ms``, ``rate_limited_ms``, ``error_ms``, ``loop_lag_ms``,
``cpu_percent``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from relaygate.load import outcomes
from relaygate.load.client import RequestResult
from relaygate.load.histogram import Histogram

__all__ = ["HISTOGRAMS", "SCOPES", "Registry", "record_result"]

_NS_PER_MS = 1_000_000.0
# Every latency histogram a run can record (names without the ``_ms`` suffix), and the
# scope prefixes they can carry; SLO rules are checked against these before a run starts.
HISTOGRAMS = (
    "ttft",
    "ack",
    "itl",
    "tpot",
    "e2e",
    "ttft_intended",
    "e2e_intended",
    "schedule_lag",
    "emit_to_recv",
    "first_token_emit_to_recv",
    "itl_stamp_error",
    "recv_lag",
    "rate_limited",
    "error",
    "loop_lag",
)
SCOPES = ("", "direct.", "ratelimit.")
# ``extras`` that are a maximum over the run: the master keeps the largest any worker sent
# (kept as the last report's, one worker's lateness hid another's).
_MAX_EXTRAS = frozenset({"pacer_max_late_ms"})


class Registry:
    """Named histograms, counters, a per-second time series and free-form ``extras``."""

    def __init__(self) -> None:
        self.hists: dict[str, Histogram] = {}
        self.counters: dict[str, float] = {}
        # wall-clock second -> field -> value; wall clock because workers on other hosts
        # share it (monotonic clocks are per host).
        self.series: dict[int, dict[str, float]] = {}
        self.extras: dict[str, Any] = {}

    def hist(self, name: str) -> Histogram:
        hist = self.hists.get(name)
        if hist is None:
            hist = self.hists[name] = Histogram()
        return hist

    def count(self, name: str, value: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + value

    def tick(self, field: str, value: float = 1, *, second: int | None = None) -> None:
        """Add ``value`` to ``field`` of the current (or given) wall-clock second."""
        sec = int(time.time()) if second is None else second
        row = self.series.get(sec)
        if row is None:
            row = self.series[sec] = {}
        row[field] = row.get(field, 0) + value

    def tick_max(self, field: str, value: float, *, second: int | None = None) -> None:
        sec = int(time.time()) if second is None else second
        row = self.series.setdefault(sec, {})
        if value > row.get(field, float("-inf")):
            row[field] = value

    def merge(self, data: dict[str, Any]) -> None:
        """Add a :meth:`to_dict`/:meth:`take_delta` snapshot (from a worker) to this one."""
        for name, snap in data.get("hists", {}).items():
            self.hist(name).merge(Histogram.from_dict(snap))
        for name, value in data.get("counters", {}).items():
            self.count(name, value)
        for sec, row in data.get("series", []):
            mine = self.series.setdefault(int(sec), {})
            for field, value in row.items():
                if field.endswith("_max"):
                    mine[field] = max(mine.get(field, float("-inf")), value)
                else:
                    mine[field] = mine.get(field, 0) + value
        for key, value in data.get("extras", {}).items():
            if key in _MAX_EXTRAS and key in self.extras:
                self.extras[key] = max(self.extras[key], value)
            elif isinstance(value, list) and isinstance(self.extras.get(key), list):
                self.extras[key].extend(value)
            else:
                self.extras[key] = value

    def to_dict(self) -> dict[str, Any]:
        return {
            "hists": {name: hist.to_dict() for name, hist in self.hists.items()},
            "counters": dict(self.counters),
            # msgpack map keys must be str for Locust's decoder; a list of pairs is simplest.
            "series": [[sec, dict(row)] for sec, row in self.series.items()],
            "extras": dict(self.extras),
        }

    def take_delta(self) -> dict[str, Any]:
        """Snapshot and reset (a worker reports only what is new since its last report)."""
        data = self.to_dict()
        self.hists = {}
        self.counters = {}
        self.series = {}
        self.extras = {}
        return data

    def is_empty(self) -> bool:
        return not (self.hists or self.counters or self.series or self.extras)


def record_result(
    registry: Registry,
    res: RequestResult,
    *,
    scope: str = "",
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Count one request and, when it is ``ok``, add its timings to the histograms.

    Latency histograms are fed by ``ok`` requests only (see :mod:`relaygate.load.outcomes`);
    429s get their own ``rate_limited_ms`` histogram, other failures ``error_ms``.
    """
    p = scope
    sec = int(wall_clock())
    registry.count(f"{p}requests")
    registry.count(f"{p}outcome.{res.outcome}")
    registry.tick(f"{p}{res.outcome}", second=sec)
    if res.status is not None:
        registry.count(f"{p}status.{res.status}")
    registry.hist(f"{p}schedule_lag_ms").record((res.t_start_ns - res.t_intended_ns) / _NS_PER_MS)
    answered = res.t_end_ns or res.t_headers_ns
    if res.outcome == outcomes.RATE_LIMITED:
        if res.t_sent_ns is not None and answered is not None:
            registry.hist(f"{p}rate_limited_ms").record((answered - res.t_sent_ns) / _NS_PER_MS)
        if "retry-after" in res.headers:
            registry.count(f"{p}rate_limited.retry_after_present")
        return
    if res.outcome != outcomes.OK:
        if res.t_sent_ns is not None and answered is not None:
            registry.hist(f"{p}error_ms").record((answered - res.t_sent_ns) / _NS_PER_MS)
        return
    sent = res.t_sent_ns
    end = res.t_end_ns
    if sent is None or end is None:
        return
    registry.hist(f"{p}e2e_ms").record((end - sent) / _NS_PER_MS)
    registry.hist(f"{p}e2e_intended_ms").record((end - res.t_intended_ns) / _NS_PER_MS)
    if res.t_first_event_ns is not None:
        registry.hist(f"{p}ack_ms").record((res.t_first_event_ns - sent) / _NS_PER_MS)
    first = res.t_first_token_ns
    if first is not None:
        ttft_ms = (first - sent) / _NS_PER_MS
        registry.hist(f"{p}ttft_ms").record(ttft_ms)
        registry.hist(f"{p}ttft_intended_ms").record((first - res.t_intended_ns) / _NS_PER_MS)
        registry.tick(f"{p}ttft_sum", ttft_ms, second=sec)
        registry.tick(f"{p}ttft_n", 1, second=sec)
        registry.tick_max(f"{p}ttft_max", ttft_ms, second=sec)
    times = res.token_event_ns
    if len(times) > 1:
        registry.hist(f"{p}itl_ms").record_ns(
            [after - before for before, after in itertools.pairwise(times)]
        )
    tokens = res.output_tokens
    if first is not None and res.t_last_token_ns is not None and tokens > 1:
        registry.hist(f"{p}tpot_ms").record(
            (res.t_last_token_ns - first) / _NS_PER_MS / (tokens - 1)
        )
    registry.count(f"{p}output_tokens", tokens)
    registry.count(f"{p}token_events", len(times))
    if res.completion_tokens is None:
        registry.count(f"{p}output_tokens_without_usage")
    registry.tick(f"{p}output_tokens", tokens, second=sec)
    if res.emit_lag_ns:
        registry.hist(f"{p}emit_to_recv_ms").record_ns(res.emit_lag_ns)
    lags = res.token_emit_lag_ns
    if len(lags) == len(times) and len(lags) > 1:
        # received gap - emitted gap = how much the path (relay + harness) distorted an ITL
        registry.hist(f"{p}itl_stamp_error_ms").record_ns(
            [after - before for before, after in itertools.pairwise(lags)], absolute=True
        )
    if res.first_token_emit_lag_ns is not None:
        registry.hist(f"{p}first_token_emit_to_recv_ms").record(
            res.first_token_emit_lag_ns / _NS_PER_MS
        )
    if res.recv_lag_ns:
        # kernel arrival -> the client read it: the harness' own queueing, kept out of the
        # timings above by the kernel stamps
        registry.hist(f"{p}recv_lag_ms").record_ns(res.recv_lag_ns)
