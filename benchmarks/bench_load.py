"""Benchmark the load harness itself (numbers, not a timed test).

Against the embedded stack's mock upstream (direct, no relay), in one worker process each,
side by side in the same run:

* ``relaygate``  - ``StreamingChatUser`` (our TimingClient; kernel receive stamps)
* ``relaygate-user`` - the same with ``--rx-stamps user`` (stamped when ``recv`` returns)
* ``stock``      - best stock Locust method: FastHttpUser + ``_response.readline(b"\\n")``
* ``control``    - a minimal asyncio + uvloop client (not Locust; keep-alive connections):
  the machine + mock floor

``relaygate-user``, ``stock`` and ``control`` all stamp arrival in user space (when the read
returned), so their capacities compare like for like: the headline ratio is
relaygate-user / stock. ``relaygate`` (kernel receive stamps: a busy client's read delay is
not in its error) is reported on its own line, not in the ratio.

Every client is measured the same way: the process starts, ``--warmup`` seconds pass (imports,
spawning, the first lock-step wave), then a window of ``--seconds``. Only streams *sent* inside
the window enter the error histograms (``$BENCH_FROM_NS``/``$BENCH_UNTIL_NS``, CLOCK_MONOTONIC
shared by all processes), events/s is the mock's own count of content events written in the
window (``/_relaygate/stats``, reset at its start), CPU is the client's over the window. Both
Locust clients get identical Locust flags (``-u N -r N``, one process).

For each client and level: TTFT error (first token received - its emit stamp), ITL error
(|received gap - emitted gap|), p50/p99 in ms, events/s, CPU; TTFT excess (measured TTFT -
the directed 200 ms), and for relaygate rows its parts from the mock's arrival stamp
(``x-relaygate-arrival-ns``): connection + send, send -> mock arrival, mock lateness of the
first token, emit -> receive. Capacity = the highest events/s
measured with TTFT error p99 <= 5 ms, counting levels upwards until the first failure (or the
first level where the mock itself wrote more than 5 ms late at p99). Finally the reference
relay's overhead (added TTFT p50/p99) from ``RelayOverheadUser``. Each row carries the
1-minute load average when it started (the machine is shared: compare ratios).

``--before REF`` also runs the relaygate clients from ``src/`` of git ref ``REF`` against
REF's own mock upstream (a second embedded stack from the same export; rows
``relaygate@before``, ``relaygate-user@before``), right after this tree's at every level, so
both trees (load client and mock) run side by side. REF's mock may lack the arrival header:
its rows then have the TTFT excess but not its parts.

    python benchmarks/bench_load.py            # levels 50,100,150,200,300,500 x 6 s (~6 min)
    python benchmarks/bench_load.py --quick    # levels 50,300 x 3 s
    python benchmarks/bench_load.py --levels 200 --clients relaygate-user --before main
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

# the script's own directory is on sys.path: one copy of the ref export
from bench_relay_overhead import exported_src

from relaygate.bounded import bounded_client
from relaygate.directives import directive
from relaygate.load.histogram import Histogram
from relaygate.stack import EmbeddedStack, StackInfo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
SHAPE = {"ttft_ms": 200, "itl_ms": 20, "chunks": 50}
CAPACITY_P99_MS = 5.0
CLIENTS = "relaygate,relaygate-user,stock,control"
USER_STAMPED = ("relaygate-user", "stock", "control")  # the like-for-like capacity clients
BEFORE = "@before"
PARTS = ("start_to_sent", "sent_to_arrival", "mock_late", "emit_to_recv")


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


@contextlib.contextmanager
def stack_from(src: Path, mock_args: list[str]) -> Iterator[StackInfo]:
    """An embedded stack whose servers import relaygate from ``src`` (an exported ref)."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src)
    try:
        embedded = EmbeddedStack(mock_args=mock_args)
        info = embedded.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield info
    finally:
        embedded.stop()


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
    before_src: Path | None = None,
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
        BENCH_TTFT_MS=str(SHAPE["ttft_ms"]),
    )
    if client.endswith(BEFORE):
        if before_src is None:
            raise ValueError(f"{client}: no --before ref given")
        env["PYTHONPATH"] = str(before_src)
        client = client.removesuffix(BEFORE)
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
        parts: dict[str, Any] = {}
        if out_path.exists():
            for name, data in json.loads(out_path.read_text()).items():
                hist = Histogram.from_dict(data)
                parts[f"{name}_p50"], parts[f"{name}_p99"] = pct(hist, 50), pct(hist, 99)
        return {
            "ttft_err_p50": ttft["p50"],
            "ttft_err_p99": ttft["p99"],
            "itl_err_p50": itl["p50"],
            "itl_err_p99": itl["p99"],
            "streams": ttft["count"],
            "recv_lag_p99_ms": recv_lag.get("p99"),
            "latency_valid": summary["latency_valid"],
            **parts,
            **common,
        }
    if not out_path.exists():
        return {"error": tail}
    data = json.loads(out_path.read_text())
    ttft = Histogram.from_dict(data["ttft_err"])
    itl = Histogram.from_dict(data["itl_err"])
    excess = Histogram.from_dict(data["ttft_excess"]) if "ttft_excess" in data else Histogram()
    return {
        "ttft_err_p50": pct(ttft, 50),
        "ttft_err_p99": pct(ttft, 99),
        "itl_err_p50": pct(itl, 50),
        "itl_err_p99": pct(itl, 99),
        "streams": data["streams"],
        "ttft_excess_p50": pct(excess, 50),
        "ttft_excess_p99": pct(excess, 99),
        **{k: data[k] for k in ("connections", "failed") if k in data},
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
    parser.add_argument(
        "--before", default=None, metavar="REF", help="also run the relaygate clients from REF"
    )
    parser.add_argument("--no-overhead", action="store_true", help="skip the relay overhead run")
    parser.add_argument(
        "--mock-workers", type=int, default=1, help="mock upstream worker processes (default 1)"
    )
    parser.add_argument("--json", default=str(ROOT / "reports" / "bench-load.json"))
    args = parser.parse_args()
    levels = [
        int(x)
        for x in (args.levels or ("50,300" if args.quick else "50,100,150,200,300,500")).split(",")
    ]
    seconds = int(args.seconds or (3 if args.quick else 6))
    clients: list[str] = []
    for client in args.clients.split(","):
        clients.append(client)
        if args.before and client.startswith("relaygate"):
            clients.append(client + BEFORE)
    results: dict[str, Any] = {
        "shape": SHAPE,
        "seconds": seconds,
        "warmup_s": args.warmup,
        "before": args.before,
        "mock_workers": args.mock_workers,
        "load_avg_1m_start": round(os.getloadavg()[0], 2),
        "runs": [],
        "capacity": {},
    }
    print(f"1-minute load average at start: {results['load_avg_1m_start']}", flush=True)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        before_src = stack.enter_context(exported_src(args.before)) if args.before else None
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-load-")))
        mock_args = ["--workers", str(args.mock_workers)] if args.mock_workers > 1 else []
        info = stack.enter_context(EmbeddedStack(mock_args=mock_args))
        stacks: dict[bool, StackInfo] = {False: info}
        if before_src is not None:
            stacks[True] = stack.enter_context(stack_from(before_src, mock_args))
        for users in levels:
            for client in clients:
                row = {
                    "client": client,
                    "stamps": "kernel" if client.split("@")[0] == "relaygate" else "user",
                    "streams_concurrent": users,
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    **one_run(
                        client,
                        users,
                        seconds,
                        args.warmup,
                        stacks[client.endswith(BEFORE)].upstream_url,
                        stacks[client.endswith(BEFORE)].upstream_key,
                        tmp,
                        before_src,
                    ),
                }
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
        if not args.no_overhead:
            results["relay_overhead"] = relay_overhead(info, seconds, tmp)
    for client in clients:
        results["capacity"][client] = capacity(
            [r for r in results["runs"] if r["client"] == client]
        )
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    results["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print_table(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict[str, Any]) -> None:
    """The human summary: one line per run, then capacities and ratios."""
    head = f"{'client':<24}{'streams':>8}{'load':>6}{'ev/s':>7}"
    print(
        f"\n{head}{'TTFT err p50/p99':>18}{'ITL err p50/p99':>17}{'excess p50/p99':>17}"
        f"{'CPU%':>5}  send/arrive/mock/emit p99"
    )
    for r in results["runs"]:
        label = f"{r['client']} ({r['stamps']})"
        if "error" in r:
            print(f"{label:<24}{r['streams_concurrent']:>8}  ERROR {r['error'][-200:]}")
            continue
        v = {k: "-" if val is None else val for k, val in r.items()}  # None: nothing measured
        parts = "/".join(str(v.get(f"{p}_p99", "-")) for p in PARTS) if "mock_late_p99" in r else ""
        print(
            f"{label:<24}{v['streams_concurrent']:>8}{v['load_avg_1m']:>6}{v['events_per_s']:>7}"
            f"{v['ttft_err_p50']:>8} / {v['ttft_err_p99']:<7}"
            f"{v['itl_err_p50']:>7} / {v['itl_err_p99']:<7}"
            f"{v.get('ttft_excess_p50', '-'):>7} / {v.get('ttft_excess_p99', '-'):<7}"
            f"{v['cpu_percent']:>5}  {parts}"
        )
    cap = results["capacity"]
    print(
        f"capacity = events/s with TTFT error p99 <= {CAPACITY_P99_MS} ms at every level up to "
        f"it, mock on schedule; load average {results['load_avg_1m_start']} at start, "
        f"{results['load_avg_1m_end']} at end"
    )
    like = {c: v for c, v in cap.items() if c.split("@")[0] in USER_STAMPED}
    print(f"  user-space arrival stamps (like for like): {like}")
    stock = cap.get("stock")
    if stock:
        ratios = {c: round(v / stock, 2) for c, v in like.items() if v and c != "stock"}
        print(f"  capacity / stock (user-space stamps): {ratios}")
    kernel = {c: v for c, v in cap.items() if c not in like}
    if kernel:
        print(f"  kernel receive stamps (not comparable with the above): {kernel}")
    overhead = results.get("relay_overhead")
    if overhead is not None:
        print(
            f"reference relay added TTFT p50/p99 ms: {overhead.get('ttft_p50_added_ms')} / "
            f"{overhead.get('ttft_p99_added_ms')}"
        )
    print(f"total {results['elapsed_s']} s")


if __name__ == "__main__":
    sys.exit(main())
