"""Benchmark the load harness itself (numbers, not a timed test).

Against the embedded stack's mock upstream (direct, no relay), in one worker process each,
side by side in the same run:

* ``relaygate``  - ``loadtests/streaming_chat.py`` (our TimingClient)
* ``stock``      - best stock Locust method: FastHttpUser + ``_response.readline(b"\\n")``
* ``control``    - a minimal asyncio + uvloop client (not Locust): the machine + mock floor

For each client and concurrency level: TTFT error (first token received - its emit stamp),
ITL error (|received gap - emitted gap|), p50/p99 in ms, events/s and client CPU. Capacity =
the highest events/s measured with TTFT error p99 <= 5 ms. Finally the reference relay's
overhead (added TTFT p50/p99) from ``RelayOverheadUser``.

    python benchmarks/bench_load.py            # levels 50,300,500 x 6 s  (< 3 min)
    python benchmarks/bench_load.py --quick    # levels 50,300 x 3 s   (< 40 s)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from relaygate.directives import directive
from relaygate.load.histogram import Histogram
from relaygate.stack import EmbeddedStack

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
SHAPE = {"ttft_ms": 200, "itl_ms": 20, "chunks": 50}
CAPACITY_P99_MS = 5.0


def run_child(cmd: list[str], env: dict[str, str], timeout_s: float) -> tuple[float, str]:
    """Run a client process; returns (its CPU % of one core after start-up, output tail).

    The first 2 s (interpreter, Locust import, spawning) are left out of the CPU figure.
    """
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
    )
    ps = psutil.Process(proc.pid)
    started = time.monotonic()
    samples: list[tuple[float, float]] = []
    while proc.poll() is None and time.monotonic() - started < timeout_s:
        try:
            times = ps.cpu_times()
            samples.append((time.monotonic(), times.user + times.system))
        except psutil.Error:
            break
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
    steady = [s for s in samples if s[0] - started >= 2.0] or samples
    cpu = 0.0
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        cpu = 100.0 * (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
    return cpu, out.decode(errors="replace")[-2000:]


def pct(hist: Histogram, q: float) -> float | None:
    value = hist.percentile(q)
    return None if value is None else round(value, 2)


def one_run(
    client: str, users: int, seconds: float, upstream: str, key: str, tmp: Path
) -> dict[str, Any]:
    out_path = tmp / f"{client}-{users}.json"
    prompt = "benchmark " + directive(**SHAPE, stamp="field")
    env = dict(os.environ, BENCH_OUT=str(out_path), BENCH_KEY=key, BENCH_PROMPT=prompt)
    locust_common = [
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        "--host",
        upstream,
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    if client == "relaygate":
        report = tmp / f"report-{users}"
        cmd = [
            str(BIN / "locust"),
            "-f",
            str(ROOT / "loadtests" / "streaming_chat.py"),
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
            str(seconds),
            str(out_path),
        ]
    cpu, tail = run_child(cmd, env, seconds + 60)
    if client == "relaygate":
        summary_path = report / "load-summary.json"
        if not summary_path.exists():
            return {"error": tail}
        summary = json.loads(summary_path.read_text())
        ttft, itl = summary["first_token_emit_to_recv_ms"], summary["itl_stamp_error_ms"]
        return {
            "ttft_err_p50": ttft["p50"],
            "ttft_err_p99": ttft["p99"],
            "itl_err_p50": itl["p50"],
            "itl_err_p99": itl["p99"],
            "events_per_s": round(summary["output_tokens"] / seconds),
            "streams": summary["requests"]["ok"],
            "cpu_percent": round(cpu),
            "latency_valid": summary["latency_valid"],
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
        "events_per_s": round(data["events"] / seconds),
        "streams": data["streams"],
        "cpu_percent": round(cpu),
    }


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
    _, tail = run_child(cmd, dict(os.environ), seconds + 60)
    path = report / "load-summary.json"
    if not path.exists():
        return {"error": tail}
    return json.loads(path.read_text())["relay_overhead"] or {}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="levels 50,300 x 3 s (< 40 s)")
    parser.add_argument("--levels", default=None, help="comma list of concurrent streams")
    parser.add_argument("--seconds", type=int, default=None, help="seconds per run")
    parser.add_argument("--clients", default="relaygate,stock,control")
    parser.add_argument("--json", default=str(ROOT / "reports" / "bench-load.json"))
    args = parser.parse_args()
    levels = [
        int(x) for x in (args.levels or ("50,300" if args.quick else "50,300,500")).split(",")
    ]
    seconds = int(args.seconds or (3 if args.quick else 6))
    clients = args.clients.split(",")
    results: dict[str, Any] = {"shape": SHAPE, "seconds": seconds, "runs": [], "capacity": {}}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmpdir, EmbeddedStack() as info:
        tmp = Path(tmpdir)
        for users in levels:
            for client in clients:
                row = {
                    "client": client,
                    "streams_concurrent": users,
                    **one_run(client, users, seconds, info.upstream_url, info.upstream_key, tmp),
                }
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
        results["relay_overhead"] = relay_overhead(info, seconds, tmp)
    for client in clients:
        passing = [
            r["events_per_s"]
            for r in results["runs"]
            if r["client"] == client and (r.get("ttft_err_p99") or 1e9) <= CAPACITY_P99_MS
        ]
        results["capacity"][client] = max(passing) if passing else None
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    head = f"{'client':<10}{'streams':>8}{'ev/s':>8}"
    print(f"\n{head}{'TTFT err p50/p99 ms':>22}{'ITL err p50/p99 ms':>21}{'CPU%':>6}")
    for r in results["runs"]:
        if "error" in r:
            print(f"{r['client']:<10}{r['streams_concurrent']:>8}  ERROR {r['error'][-200:]}")
            continue
        print(
            f"{r['client']:<10}{r['streams_concurrent']:>8}{r['events_per_s']:>8}"
            f"{r['ttft_err_p50']:>11} / {r['ttft_err_p99']:<8}"
            f"{r['itl_err_p50']:>10} / {r['itl_err_p99']:<8}{r['cpu_percent']:>6}"
        )
    print(f"capacity (events/s with TTFT error p99 <= {CAPACITY_P99_MS} ms): {results['capacity']}")
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
