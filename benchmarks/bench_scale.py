"""Benchmark scaling out: Locust worker processes, and the mock's worker processes.

``python benchmarks/bench_scale.py [--users 400] [--seconds 6] [--warmup 4]``, in one
invocation:

1. **Locust**: ``StreamingChatUser`` direct to the embedded stack's mock upstream (200 ms
   TTFT, 20 ms ITL, 50 events), the same ``-u`` once with ``--processes 1`` and once with
   ``--processes 2`` (a master and two workers, merged as in a multi-host run); the mock runs
   ``--mock-workers`` processes (1 by default: with 2, its stats reset went unanswered under
   this load on the 2-vCPU machine); its write lateness p99 shows when it was the limit.
   events/s is the mock's own count of content events written in the window (as
   ``bench_load.py``), CPU is the whole process tree's, TTFT error p99 (first token received
   - its emit stamp) and ``latency_valid`` come from the master's merged summary; then the
   ratio 2 / 1.
2. **Mock**: ``bench_mock.py compare --configs 1:precise,2:precise`` (``--workers 1`` vs
   ``2``): events/s and the gap error (jitter) seen by the client and by the mock.

Each part prints the machine's 1-minute load average before and after: on a shared machine
events/s says as much about the other tenants as about us.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
from bench_load import BIN, HERE, ROOT, SHAPE, MockStats

from relaygate.stack import EmbeddedStack


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _tree_cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of ``proc`` and its children (Locust's workers are forked children)."""
    total = 0.0
    for each in [proc, *proc.children(recursive=True)]:
        try:
            times = each.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def locust_run(
    processes: int, args: argparse.Namespace, upstream: str, key: str, tmp: Path
) -> dict[str, Any]:
    """One bounded Locust run; figures of the measured window."""
    report = tmp / f"report-{processes}"
    launch_ns = time.monotonic_ns()
    env = dict(
        os.environ,
        BENCH_FROM_NS=str(launch_ns + int(args.warmup * 1e9)),
        BENCH_UNTIL_NS=str(launch_ns + int((args.warmup + args.seconds) * 1e9)),
    )
    port = _free_port()  # never another Locust run's master (default 5557)
    cmd = [
        str(BIN / "locust"),
        "-f",
        str(HERE / "_bench_relaygate_locustfile.py"),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.users),
        "-t",
        f"{math.ceil(args.warmup + args.seconds + 1)}s",
        "--host",
        upstream,
        "--relay-key",
        key,
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--report-dir",
        str(report),
        "--no-plots",
        "--stop-timeout",
        "3",
        "--mock-ttft-ms",
        str(SHAPE["ttft_ms"]),
        "--mock-itl-ms",
        str(SHAPE["itl_ms"]),
        "--mock-output-tokens",
        str(SHAPE["chunks"]),
        "--processes",
        str(processes),
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        port,
        "--master-port",
        port,
    ]
    stats = MockStats(upstream, key)
    load_before = _load_average()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
    )
    tree = psutil.Process(proc.pid)
    problem = None
    try:
        time.sleep(max(0.0, launch_ns / 1e9 + args.warmup - time.monotonic()))
        stats.reset()
        cpu_before, t_before = _tree_cpu_s(tree), time.monotonic()
        time.sleep(max(0.0, launch_ns / 1e9 + args.warmup + args.seconds - time.monotonic()))
        stats.read()
        cpu_s, window_s = _tree_cpu_s(tree) - cpu_before, time.monotonic() - t_before
    except Exception as exc:  # a mock too busy to answer its control API: say so, go on
        problem = f"mock stats not read: {exc}"
    out, _ = proc.communicate(timeout=args.warmup + args.seconds + 60)
    if problem is not None:
        return {"processes": processes, "error": problem}
    mock = stats.result
    row: dict[str, Any] = {
        "processes": processes,
        "events_per_s": round(mock.get("events", 0) / max(mock.get("window_s", window_s), 1e-9)),
        "mock_write_lateness_p99_ms": (mock.get("write_lateness_ms") or {}).get("p99"),
        "locust_cpu_percent": round(100 * cpu_s / window_s),
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": _load_average(),
    }
    path = report / "load-summary.json"
    if not path.exists():
        return row | {"error": out.decode(errors="replace")[-1500:]}
    summary = json.loads(path.read_text())
    row["streams_in_window"] = summary["first_token_emit_to_recv_ms"]["count"]
    row["ttft_err_p99_ms"] = summary["first_token_emit_to_recv_ms"]["p99"]
    row["latency_valid"] = summary["latency_valid"]
    return row


def mock_compare(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "bench_mock.py"), "compare", "--configs",
           "1:precise,2:precise", "--streams", str(args.mock_streams),
           "--duration-s", str(args.seconds), "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=400, help="concurrent streams (-u)")
    parser.add_argument("--seconds", type=int, default=6, help="measured window (<= 20)")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before the window")
    parser.add_argument("--mock-workers", type=int, default=1, help="the mock's, for part 1")
    parser.add_argument("--mock-streams", type=int, default=800, help="streams for part 2")
    parser.add_argument("--json", default=str(ROOT / "reports" / "bench-scale.json"))
    args = parser.parse_args()
    if not 0 < args.seconds <= 20 or not 0 < args.users <= 2000:
        parser.error("--seconds must be within (0, 20] and --users within (0, 2000]")
    print(f"{os.cpu_count()} CPUs; load average 1m at start {_load_average()}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-") as tmpdir,
        EmbeddedStack(mock_args=["--workers", str(args.mock_workers)]) as info,
    ):
        runs = [
            locust_run(n, args, info.upstream_url, info.upstream_key, Path(tmpdir)) for n in (1, 2)
        ]
    print(
        f"\nLocust StreamingChatUser -> mock ({args.mock_workers} workers), -u {args.users}, "
        f"{args.seconds} s window"
    )
    print(
        f"{'processes':>10}{'events/s':>10}{'CPU%':>7}{'TTFT err p99':>14}{'valid':>7}"
        f"{'mock late p99':>15}  load avg"
    )
    for r in runs:
        if "error" in r:
            print(f"{r['processes']:>10}  ERROR {r['error'][-300:]}")
            continue
        print(
            f"{r['processes']:>10}{r['events_per_s']:>10}{r['locust_cpu_percent']:>7}"
            f"{r['ttft_err_p99_ms']!s:>14}{r['latency_valid']!s:>7}"
            f"{r['mock_write_lateness_p99_ms']!s:>15}"
            f"  {r['load_avg_1m_before']} -> {r['load_avg_1m_after']}"
        )
    one, two = runs[0].get("events_per_s") or 0, runs[1].get("events_per_s") or 0
    ratio = round(two / one, 2) if one else None
    print(f"events/s ratio --processes 2 / 1: {ratio}")
    mock = mock_compare(args)
    print(
        f"\nmock upstream, {mock['streams']} streams, "
        f"offered {mock['offered_events_per_s']:.0f} events/s"
    )
    print(
        f"{'workers':>8}{'events/s':>10}{'client gap err p50/p99':>24}"
        f"{'mock gap err p50/p99':>22}  load avg"
    )
    for r in mock["runs"]:
        c, m = r["client_gap_error_ms"], r["mock_gap_error_ms"]
        print(
            f"{r['workers']:>8}{r['events_per_s']:>10}{c['p50']:>12} / {c['p99']:<9}"
            f"{m.get('p50')!s:>10} / {m.get('p99')!s:<9}"
            f"  {r['load_avg_1m_before']} -> {r['load_avg_1m_after']}"
        )
    base = mock["runs"][0]["events_per_s"]
    mock_ratio = round(mock["runs"][1]["events_per_s"] / base, 2) if base else None
    print(f"events/s ratio mock --workers 2 / 1: {mock_ratio}")
    result = {
        "cpus": os.cpu_count(),
        "locust": {
            "users": args.users,
            "seconds": args.seconds,
            "mock_workers": args.mock_workers,
            "runs": runs,
            "ratio": ratio,
        },
        "mock": mock | {"ratio": mock_ratio},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
