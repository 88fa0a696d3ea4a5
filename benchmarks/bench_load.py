"""Benchmark the load harness itself (numbers, not a timed test).

Against the embedded stack's mock upstream (direct, no relay), in one worker process each,
side by side in the same run:

* ``relaygate``  - ``StreamingChatUser`` (our TimingClient; kernel receive stamps)
* ``relaygate-user`` - the same with ``--rx-stamps user`` (stamped when ``recv`` returns)
* ``stock``      - best stock Locust method: FastHttpUser + ``_response.readline(b"\\n")``
* ``control``    - a minimal asyncio + uvloop client (not Locust): the machine + mock floor

Every client is measured the same way: the process starts, ``--warmup`` seconds pass (imports,
spawning, the first lock-step wave), then a window of ``--seconds``. Only streams *sent* inside
the window enter the error histograms (``$BENCH_FROM_NS``/``$BENCH_UNTIL_NS``, CLOCK_MONOTONIC
shared by all processes), events/s is the mock's own count of content events written in the
window (``/_relaygate/stats``, reset at its start), CPU is the client's over the window. Both
Locust clients get identical Locust flags (``-u N -r N``, one process).

For each client and level: TTFT error (first token received - its emit stamp), ITL error
(|received gap - emitted gap|), p50/p99 in ms, events/s, CPU. Capacity = the highest events/s
measured with TTFT error p99 <= 5 ms, counting levels upwards until the first failure (or the
first level where the mock itself wrote more than 5 ms late at p99). Finally the reference
relay's overhead (added TTFT p50/p99) from ``RelayOverheadUser``.

    python benchmarks/bench_load.py            # levels 50,100,150,200,300,500 x 6 s (~6 min)
    python benchmarks/bench_load.py --quick    # levels 50,300 x 3 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from relaygate.bounded import bounded_client
from relaygate.directives import directive
from relaygate.load.histogram import Histogram
from relaygate.stack import EmbeddedStack

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
SHAPE = {"ttft_ms": 200, "itl_ms": 20, "chunks": 50}
CAPACITY_P99_MS = 5.0
CLIENTS = "relaygate,relaygate-user,stock,control"


def run_child(
    cmd: list[str],
    env: dict[str, str],
    timeout_s: float,
    window: tuple[float, float],
    at_start: Callable[[], None],
    at_end: Callable[[], None],
) -> tuple[float, str]:
    """Run a client process; returns (its CPU % of one core inside the window, output tail).

    ``window`` = (start, end) in seconds after launch; ``at_start``/``at_end`` run there.
    """
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
    )
    ps = psutil.Process(proc.pid)
    started = time.monotonic()
    marks: list[tuple[float, float]] = []
    for offset, hook in ((window[0], at_start), (window[1], at_end)):
        time.sleep(max(0.0, started + offset - time.monotonic()))
        hook()
        try:
            times = ps.cpu_times()
            marks.append((time.monotonic(), times.user + times.system))
        except psutil.Error:
            pass
    out, _ = proc.communicate(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
    cpu = 0.0
    if len(marks) == 2 and marks[1][0] > marks[0][0]:
        cpu = 100.0 * (marks[1][1] - marks[0][1]) / (marks[1][0] - marks[0][0])
    return cpu, out.decode(errors="replace")[-2000:]


class MockStats:
    """The mock's own event counter: the same events/s for every client."""

    def __init__(self, upstream: str, key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.key = key
        self.result: dict[str, Any] = {}

    def _call(self, method: str, path: str) -> dict[str, Any]:
        # Bounded like every request the harness sends: 10 s in all, 1 MiB at most.
        with bounded_client(timeout_s=10.0, max_bytes=1024 * 1024, secrets=[self.key]) as http:
            response = http.request(
                method, self.upstream + path, headers={"Authorization": f"Bearer {self.key}"}
            )
            response.raise_for_status()
            data: dict[str, Any] = response.json()
            return data

    def reset(self) -> None:
        self._call("POST", "/_relaygate/stats/reset")

    def read(self) -> None:
        self.result = self._call("GET", "/_relaygate/stats")


def pct(hist: Histogram, q: float) -> float | None:
    value = hist.percentile(q)
    return None if value is None else round(value, 2)


def one_run(
    client: str,
    users: int,
    seconds: float,
    warmup: float,
    upstream: str,
    key: str,
    tmp: Path,
) -> dict[str, Any]:
    out_path = tmp / f"{client}-{users}.json"
    prompt = "benchmark " + directive(**SHAPE, stamp="field")
    launch_ns = time.monotonic_ns()
    env = dict(
        os.environ,
        BENCH_OUT=str(out_path),
        BENCH_KEY=key,
        BENCH_PROMPT=prompt,
        BENCH_FROM_NS=str(launch_ns + int(warmup * 1e9)),
        BENCH_UNTIL_NS=str(launch_ns + int((warmup + seconds) * 1e9)),
    )
    run_s = math.ceil(
        warmup + seconds + 1
    )  # Locust's clock starts after its imports: ends after the window
    locust_common = [
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{run_s}s",
        "--host",
        upstream,
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    report = tmp / f"report-{client}-{users}"
    if client.startswith("relaygate"):
        env["RELAYGATE_RX_STAMPS"] = "user" if client == "relaygate-user" else "kernel"
        cmd = [
            str(BIN / "locust"),
            "-f",
            str(HERE / "_bench_relaygate_locustfile.py"),
            *locust_common,
            "--relay-key",
            key,
            "--report-dir",
            str(report),
            "--no-plots",
            "--mock-ttft-ms",
            str(SHAPE["ttft_ms"]),
            "--mock-itl-ms",
            str(SHAPE["itl_ms"]),
            "--mock-output-tokens",
            str(SHAPE["chunks"]),
        ]
    elif client == "stock":
        cmd = [str(BIN / "locust"), "-f", str(HERE / "_bench_stock_locustfile.py"), *locust_common]
    else:
        cmd = [
            sys.executable,
            str(HERE / "_bench_control.py"),
            upstream,
            key,
            prompt,
            str(users),
            str(run_s),
            str(out_path),
        ]
    stats = MockStats(upstream, key)
    cpu, tail = run_child(cmd, env, run_s + 60, (warmup, warmup + seconds), stats.reset, stats.read)
    mock = stats.result
    common = {
        "events_per_s": round(mock.get("events", 0) / max(mock.get("window_s", seconds), 1e-9)),
        "mock_write_lateness_p99_ms": (mock.get("write_lateness_ms") or {}).get("p99"),
        "cpu_percent": round(cpu),
    }
    if client.startswith("relaygate"):
        summary_path = report / "load-summary.json"
        if not summary_path.exists():
            return {"error": tail}
        summary = json.loads(summary_path.read_text())
        ttft, itl = summary["first_token_emit_to_recv_ms"], summary["itl_stamp_error_ms"]
        recv_lag = summary.get("recv_lag_ms") or {}
        return {
            "ttft_err_p50": ttft["p50"],
            "ttft_err_p99": ttft["p99"],
            "itl_err_p50": itl["p50"],
            "itl_err_p99": itl["p99"],
            "streams": ttft["count"],
            "recv_lag_p99_ms": recv_lag.get("p99"),
            "latency_valid": summary["latency_valid"],
            **common,
        }
    if not out_path.exists():
        return {"error": tail}
    data = json.loads(out_path.read_text())
    ttft = Histogram.from_dict(data["ttft_err"])
    itl = Histogram.from_dict(data["itl_err"])
    return {
        "ttft_err_p50": pct(ttft, 50),
        "ttft_err_p99": pct(ttft, 99),
        "itl_err_p50": pct(itl, 50),
        "itl_err_p99": pct(itl, 99),
        "streams": data["streams"],
        **common,
    }


def capacity(runs: list[dict[str, Any]]) -> int | None:
    """Highest events/s before the first level (by concurrency) that fails: TTFT error p99
    above the limit, an error, or a mock that could not keep its schedule (write lateness
    p99 above the limit: the load asked for was not the load delivered)."""
    best = None
    for run in sorted(runs, key=lambda r: r["streams_concurrent"]):
        late = run.get("mock_write_lateness_p99_ms") or 0.0
        p99 = run.get("ttft_err_p99")
        if p99 is None or p99 > CAPACITY_P99_MS or late > CAPACITY_P99_MS:
            break
        best = run["events_per_s"]
    return best


def relay_overhead(info: Any, seconds: float, tmp: Path) -> dict[str, Any]:
    report = tmp / "overhead"
    cmd = [
        str(BIN / "locust"),
        "-f",
        str(ROOT / "loadtests" / "relay_overhead.py"),
        "--headless",
        "-u",
        "20",
        "-r",
        "20",
        "-t",
        f"{seconds}s",
        "--host",
        info.relay_url,
        "--relay-key",
        info.relay_key,
        "--upstream-url",
        info.upstream_url,
        "--upstream-key",
        info.upstream_key,
        "--report-dir",
        str(report),
        "--no-plots",
        "--mock-ttft-ms",
        "100",
        "--mock-itl-ms",
        "10",
        "--mock-output-tokens",
        "20",
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]

    def nothing() -> None:
        return None

    _, tail = run_child(cmd, dict(os.environ), seconds + 60, (0.0, 0.0), nothing, nothing)
    path = report / "load-summary.json"
    if not path.exists():
        return {"error": tail}
    return json.loads(path.read_text())["relay_overhead"] or {}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="levels 50,300 x 3 s")
    parser.add_argument("--levels", default=None, help="comma list of concurrent streams")
    parser.add_argument("--seconds", type=int, default=None, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    parser.add_argument("--clients", default=CLIENTS)
    parser.add_argument("--json", default=str(ROOT / "reports" / "bench-load.json"))
    args = parser.parse_args()
    levels = [
        int(x)
        for x in (args.levels or ("50,300" if args.quick else "50,100,150,200,300,500")).split(",")
    ]
    seconds = int(args.seconds or (3 if args.quick else 6))
    clients = args.clients.split(",")
    results: dict[str, Any] = {
        "shape": SHAPE,
        "seconds": seconds,
        "warmup_s": args.warmup,
        "runs": [],
        "capacity": {},
    }
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmpdir, EmbeddedStack() as info:
        tmp = Path(tmpdir)
        for users in levels:
            for client in clients:
                row = {
                    "client": client,
                    "streams_concurrent": users,
                    **one_run(
                        client,
                        users,
                        seconds,
                        args.warmup,
                        info.upstream_url,
                        info.upstream_key,
                        tmp,
                    ),
                }
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
        results["relay_overhead"] = relay_overhead(info, seconds, tmp)
    for client in clients:
        results["capacity"][client] = capacity(
            [r for r in results["runs"] if r["client"] == client]
        )
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    head = f"{'client':<15}{'streams':>8}{'ev/s':>8}"
    print(f"\n{head}{'TTFT err p50/p99 ms':>22}{'ITL err p50/p99 ms':>21}{'CPU%':>6}")
    for r in results["runs"]:
        if "error" in r:
            print(f"{r['client']:<15}{r['streams_concurrent']:>8}  ERROR {r['error'][-200:]}")
            continue
        shown = {k: "-" if v is None else v for k, v in r.items()}  # None: nothing measured
        print(
            f"{shown['client']:<15}{shown['streams_concurrent']:>8}{shown['events_per_s']:>8}"
            f"{shown['ttft_err_p50']:>11} / {shown['ttft_err_p99']:<8}"
            f"{shown['itl_err_p50']:>10} / {shown['itl_err_p99']:<8}{shown['cpu_percent']:>6}"
        )
    print(
        f"capacity (events/s, TTFT error p99 <= {CAPACITY_P99_MS} ms at every level up to it, "
        f"mock on schedule): {results['capacity']}"
    )
    stock = results["capacity"].get("stock")
    if stock:
        ratios = {c: round(v / stock, 2) for c, v in results["capacity"].items() if v}
        print(f"capacity / stock: {ratios}")
    overhead = results["relay_overhead"]
    print(
        f"reference relay added TTFT p50/p99 ms: {overhead.get('ttft_p50_added_ms')} / "
        f"{overhead.get('ttft_p99_added_ms')}; total {results['elapsed_s']} s"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
