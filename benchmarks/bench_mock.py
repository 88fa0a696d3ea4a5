"""Benchmark the mock upstream.

``python benchmarks/bench_mock.py [relaygate bench flags]``: ``relaygate bench`` (held streams,
events/s, jitter of one mock; see :mod:`relaygate.cli.bench`).

``python benchmarks/bench_mock.py compare [flags]``: the mock in several set-ups, one after the
other in this one invocation, under the same closed-loop stream load: 1 worker with the precise
timer (the baseline), 2 workers, and the coarse timer (``--configs``). For each: content events/s
delivered, the gap error (actual gap between a stream's events minus the directed ``itl_ms``)
seen by the client and by the mock, the CPU of the mock's processes, of this client and of
everything else, the machine's load average before and after; then each figure as a ratio to
the baseline. The client's figures cover the measured window; the mock's own (gap error) the
whole run. ``events/mock CPU-s`` (events delivered per CPU-second the mock's processes used)
is the figure that survives a shared machine: events/s depends on how much CPU the other
tenants leave. The client is the bench's raw asyncio + uvloop one; it shares the machine, so
read its CPU next to the mock's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import orjson

from relaygate.cli import main as relaygate_main
from relaygate.cli.bench import _connect, _percentile, _request, _StreamProtocol
from relaygate.cli.bench import _control as _bench_control
from relaygate.cli.mock_upstream import raise_open_files_limit
from relaygate.stack import LOOPBACK, ChildServer

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A saturated mock answers its control API late (behind thousands of due events): a longer
# deadline than ``relaygate bench``'s; stats answers are a few kB.
_CONTROL_TIMEOUT_S = 30.0


async def _control(host: str, port: int, method: str, path: str) -> dict[str, Any]:
    """The mock's control API, bounded; an overloaded mock answers late, hence the longer wait."""
    return await _bench_control(host, port, method, path, _CONTROL_TIMEOUT_S)


def _process_cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid`` (NaN when /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLOCK_TICKS


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


async def _load_run(
    host: str, port: int, pids: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """Closed-loop streams against one mock; figures of the measured window."""
    raw = _request(host, args.itl_ms, args.chunks, "bench-compare")
    protocols: list[_StreamProtocol] = []
    for _ in range(0, args.streams, 100):
        wave = [_connect(host, port) for _ in range(min(100, args.streams - len(protocols)))]
        protocols.extend(await asyncio.gather(*wave))
    window = [0, 0]
    gap_errors: array[float] = array("d")
    counts = {"events": 0, "failures": 0}
    itl_ns = int(args.itl_ms * 1e6)
    stream_s = args.itl_ms * args.chunks / 1000

    async def user(protocol: _StreamProtocol, offset_s: float) -> None:
        await asyncio.sleep(offset_s)
        # Until the window ends (not a fixed time: a slow stats reset delays the window).
        while not window[1]:
            if not await asyncio.wait_for(protocol.request(raw), stream_s + 30):
                counts["failures"] += 1
                return
            # Every event delivered inside the window counts, also those of streams that
            # end after it (a saturated mock stretches streams past the window).
            begin, end = window
            times = protocol.event_ns
            if begin:
                for index, t in enumerate(times):
                    if t >= begin and (not end or t <= end):
                        counts["events"] += 1
                        if index:
                            gap_errors.append((t - times[index - 1] - itl_ns) / 1e6)

    # The mock's own figures cover the whole run (warm-up and drain too): a control call in
    # the middle of an overload waits seconds behind the due events, so none is made there.
    await _control(host, port, "POST", "/_relaygate/stats/reset")
    users = [
        asyncio.ensure_future(user(p, stream_s * i / args.streams)) for i, p in enumerate(protocols)
    ]
    await asyncio.sleep(args.warmup_s)
    before = sum(_process_cpu_s(p) for p in pids), time.process_time(), _machine_busy_s()
    window[0] = time.monotonic_ns()
    await asyncio.sleep(args.duration_s)
    window[1] = time.monotonic_ns()
    after = sum(_process_cpu_s(p) for p in pids), time.process_time(), _machine_busy_s()
    await asyncio.wait_for(asyncio.gather(*users), stream_s + 30)
    stats = await _control(host, port, "GET", "/_relaygate/stats")
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    window_s = (window[1] - window[0]) / 1e9
    mock_cpu, client_cpu, busy = (a - b for a, b in zip(after, before, strict=True))
    return {
        "events_per_s": round(counts["events"] / window_s, 1),
        "failures": counts["failures"],
        "client_gap_error_ms": {
            "count": len(gap_errors),
            "p50": round(_percentile(gap_errors, 0.5), 3),
            "p99": round(_percentile(gap_errors, 0.99), 3),
            "max_abs": round(max((abs(v) for v in gap_errors), default=math.nan), 3),
        },
        "mock_gap_error_ms": stats["gap_error_ms"],
        "mock_write_lateness_ms": stats["write_lateness_ms"],
        "mock_cpu_pct": round(100 * mock_cpu / window_s, 1),
        # Events per CPU-second of the mock: what it costs, however much CPU the machine's
        # other tenants left it.
        "events_per_mock_cpu_s": round(counts["events"] / mock_cpu, 1) if mock_cpu > 0 else None,
        "client_cpu_pct": round(100 * client_cpu / window_s, 1),
        "other_cpu_pct": round(100 * (busy - mock_cpu - client_cpu) / window_s, 1),
    }


def _one_setup(workers: int, timer: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    argv = ["mock-upstream", "--host", LOOPBACK, "--port", "0", "--journal-size", "1000"]
    argv += ["--workers", str(workers), "--timer", timer]
    load_before = _load_average()
    mock = ChildServer(f"mock-{workers}-{timer}", argv, log_dir)
    try:
        ready = mock.wait_ready(60.0)
        host, _, port = str(ready["url"]).rpartition("/")[2].rpartition(":")
        pids = [int(ready["pid"]), *ready.get("worker_pids", [])]
        budget_s = args.warmup_s + args.duration_s + args.itl_ms * args.chunks / 1000 + 40
        result = asyncio.run(asyncio.wait_for(_load_run(host, int(port), pids, args), budget_s))
    finally:
        mock.stop(timeout_s=15.0)
    return {
        "workers": workers,
        "timer": timer,
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": _load_average(),
        **result,
    }


def _ratio(value: float, base: float) -> float | None:
    return round(value / base, 2) if base and not math.isnan(base) else None


def _table(result: dict[str, Any]) -> str:
    head = (
        f"mock upstream, {result['streams']} closed-loop streams x {result['chunks']} events "
        f"every {result['itl_ms']:g} ms (offered {result['offered_events_per_s']:,.0f} "
        f"events/s), {result['duration_s']:g} s measured per set-up; "
        f"{os.cpu_count()} CPUs; ratios against the first row"
    )
    columns = (
        "set-up",
        "events/s",
        "ratio",
        "client gap err p50/p99 ms",
        "mock gap err p50/p99 ms",
        "CPU% mock/client/rest",
        "events/mock CPU-s",
        "ratio",
        "load avg 1m",
    )
    rows = [columns]
    base = result["runs"][0]
    for run in result["runs"]:
        cgap, mgap = run["client_gap_error_ms"], run["mock_gap_error_ms"]
        rows.append(
            (
                f"{run['workers']} worker{'s' if run['workers'] > 1 else ''}, {run['timer']}",
                f"{run['events_per_s']:,.0f}",
                f"{_ratio(run['events_per_s'], base['events_per_s'])}",
                f"{cgap['p50']} / {cgap['p99']}",
                f"{mgap['p50']} / {mgap['p99']}",
                f"{run['mock_cpu_pct']} / {run['client_cpu_pct']} / {run['other_cpu_pct']}",
                f"{run['events_per_mock_cpu_s'] or 0:,.0f}",
                f"{_ratio(run['events_per_mock_cpu_s'] or 0, base['events_per_mock_cpu_s'] or 0)}",
                f"{run['load_avg_1m_before']} -> {run['load_avg_1m_after']}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    failures = sum(run["failures"] for run in result["runs"])
    return "\n".join([head, *lines, f"failed streams: {failures}"])


def _setup(text: str) -> tuple[int, str]:
    workers, _, timer = text.partition(":")
    if not workers.isdigit() or int(workers) < 1 or timer not in ("precise", "coarse"):
        raise argparse.ArgumentTypeError(f"expected WORKERS:precise|coarse, got {text!r}")
    return int(workers), timer


def compare(argv: list[str]) -> int:
    """Run the set-ups one after the other; print the table (or JSON)."""
    parser = argparse.ArgumentParser(
        prog="bench_mock.py compare",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--streams", type=int, default=800, help="concurrent streams")
    parser.add_argument("--itl-ms", type=float, default=20.0, help="gap between events")
    parser.add_argument("--chunks", type=int, default=40, help="content events per stream")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured ramp-up")
    parser.add_argument("--duration-s", type=float, default=6.0, help="measured window (<= 20)")
    parser.add_argument(
        "--configs",
        type=lambda text: [_setup(part) for part in text.split(",")],
        default=[(1, "precise"), (2, "precise"), (1, "coarse"), (2, "coarse")],
        help="set-ups, WORKERS:TIMER,...; the first is the baseline (default "
        "1:precise,2:precise,1:coarse,2:coarse)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 0 < args.duration_s <= 20 or not 0 <= args.warmup_s <= 5:
        parser.error("--duration-s must be within (0, 20] and --warmup-s within [0, 5]")
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    raise_open_files_limit()
    runs = []
    with tempfile.TemporaryDirectory(prefix="relaygate-bench-mock-") as log_dir:
        for workers, timer in args.configs:
            runs.append(_one_setup(workers, timer, args, Path(log_dir)))
    result = {
        "streams": args.streams,
        "itl_ms": args.itl_ms,
        "chunks": args.chunks,
        "duration_s": args.duration_s,
        "offered_events_per_s": args.streams * 1000 / args.itl_ms,
        "runs": runs,
    }
    print(orjson.dumps(result).decode() if args.json else _table(result))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:
        sys.exit(compare(sys.argv[2:]))
    sys.exit(relaygate_main(["bench", *sys.argv[1:]]))
