"""Self-check: is the load generator itself the bottleneck?

Every run samples, in every Locust process, the event-loop lag (a greenlet asks to sleep
50 ms and records how late it wakes: the delay any stream event would also have suffered)
and the process CPU (psutil, every second, primed at start so the first sample is real,
unlike Locust's own 10 s monitor whose first sample is always 0). The master merges them and
:func:`verdict` marks latency percentiles invalid when the harness was saturated: CPU p90
above 85 % of one core, or loop lag p99 above 10 ms (a lag that large is added to TTFT/ITL
samples taken at that moment). The first 2 s after test start (spawning users) are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from relaygate.load.histogram import Histogram
from relaygate.load.metrics import Registry

__all__ = ["LOOP_LAG_INTERVAL_S", "run_probe", "verdict"]

LOOP_LAG_INTERVAL_S = 0.05
MAX_CPU_P90 = 85.0
MAX_LOOP_LAG_P99_MS = 10.0
WARM_UP_S = 2.0


def run_probe(
    registry: Registry,
    sleep: Callable[[float], None],
    *,
    running: Callable[[], bool] = lambda: True,
    interval_s: float = LOOP_LAG_INTERVAL_S,
) -> None:
    """Loop (until ``running()`` is false) recording ``loop_lag_ms`` and ``cpu_percent``."""
    # Lazy: only Locust processes sample themselves. psutil ships no type stubs here.
    import psutil  # type: ignore[import-untyped, unused-ignore]

    process = psutil.Process()
    process.cpu_percent(None)  # prime: psutil's first call always returns 0.0
    started = time.monotonic()
    next_cpu = started + 1.0
    while running():
        before = time.monotonic_ns()
        sleep(interval_s)
        late_ms = (time.monotonic_ns() - before) / 1e6 - interval_s * 1000.0
        now = time.monotonic()
        # Spawning users right after test_start is start-up work, not harness lag under load;
        # CPU is sampled from the start, so even a short run has a reading.
        if now - started >= WARM_UP_S:
            # Registry.take_delta swaps the histograms out; re-fetch after each report.
            lag = registry.hists.get("loop_lag_ms") or registry.hist("loop_lag_ms")
            lag.record(late_ms)
        if now >= next_cpu:
            next_cpu = now + 1.0
            registry.hist("cpu_percent").record(process.cpu_percent(None))


def verdict(
    loop_lag: Histogram | None,
    cpu: Histogram | None,
    *,
    max_cpu_p90: float = MAX_CPU_P90,
    max_loop_lag_p99_ms: float = MAX_LOOP_LAG_P99_MS,
) -> dict[str, Any]:
    """``{"loop_lag_ms", "cpu_percent", "latency_valid", "reasons"}`` for the summary."""
    reasons: list[str] = []
    out: dict[str, Any] = {}
    if loop_lag is not None and loop_lag.count:
        out["loop_lag_ms"] = loop_lag.summary((50, 99))
        p99 = loop_lag.percentile(99) or 0.0
        if p99 > max_loop_lag_p99_ms:
            reasons.append(
                f"event-loop lag p99 {p99:.1f} ms > {max_loop_lag_p99_ms:g} ms: the harness "
                "delayed its own timestamps; add --processes or lower the load"
            )
    if cpu is not None and cpu.count:
        out["cpu_percent"] = {
            "mean": round(cpu.mean or 0.0, 1),
            "p90": round(cpu.percentile(90) or 0.0, 1),
            "max": round(cpu.max, 1),
        }
        p90 = cpu.percentile(90) or 0.0
        if p90 > max_cpu_p90:
            reasons.append(
                f"harness CPU p90 {p90:.0f}% of a core > {max_cpu_p90:g}%: latency includes "
                "client queueing; add --processes or lower the load"
            )
    out["latency_valid"] = not reasons
    out["reasons"] = reasons
    return out
