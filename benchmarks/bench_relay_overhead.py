"""Benchmark the reference relay's added latency: ``RelayOverheadUser``, relay vs direct.

One invocation, one embedded stack per relay version, each level run through each version in
turn (so both see the same machine at nearly the same moment)::

    python benchmarks/bench_relay_overhead.py                 # this tree, levels 50,300 x 8 s
    python benchmarks/bench_relay_overhead.py --before main   # + main's relay, side by side
    python benchmarks/bench_relay_overhead.py --before main --rounds 3   # medians of 3 runs each

``--before REF`` exports ``src/`` of a git ref (``git archive``, no worktree) to a temporary
directory and runs that version's mock upstream and reference relay from it; the load client
is always this tree's. Per version and level: added TTFT p50/p99 and ITL p99 (relay minus
direct, from the run's ``relay_overhead``), relay TTFT p99 / direct TTFT p99, the relay
process's CPU ms per relayed stream, its upstream connections opened per relayed stream, and
the 1-minute load average and the CPU pressure (PSI ``some avg10``, % of time a runnable task
waited for a CPU) before the run (the machine is shared; compare ratios, not ms).
Goals (issue #14): at 50 streams added TTFT p50 <= 1 ms, p99 <= 5 ms, ITL p99 <= 1 ms; at
300 streams added TTFT p99 <= 15 ms. Every run is bounded (``-t`` plus Locust's stop
timeout) and stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from relaygate.stack import EmbeddedStack, StackInfo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
GOALS = {50: {"ttft_p50": 1.0, "ttft_p99": 5.0, "itl_p99": 1.0}, 300: {"ttft_p99": 15.0}}


@contextlib.contextmanager
def exported_src(ref: str) -> Iterator[Path]:
    """``src/`` of git ref ``ref``, unpacked into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="bench-overhead-src-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True, timeout=60)
        yield Path(tmp) / "src"


@contextlib.contextmanager
def stack_from(src: Path | None) -> Iterator[tuple[StackInfo, psutil.Process]]:
    """An embedded stack whose servers import relaygate from ``src`` (None: this tree)."""
    saved = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = str(src)
    try:
        stack = EmbeddedStack()
        info = stack.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        port = int(info.relay_url.rsplit(":", 1)[1])
        relay = next(c for c in psutil.Process().children() if _listens(c, port))
        yield info, relay
    finally:
        stack.stop()


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        return any(c.laddr and c.laddr.port == port for c in process.net_connections("tcp"))
    except psutil.Error:
        return False


def upstream_connects(relay: psutil.Process, upstream_port: int) -> set[tuple[str, int]]:
    """The relay's TCP connections to the upstream now (local addresses)."""
    try:
        return {
            (c.laddr.ip, c.laddr.port)
            for c in relay.net_connections("tcp")
            if c.raddr and c.raddr.port == upstream_port
        }
    except psutil.Error:
        return set()


def cpu_pressure() -> float | None:
    """Linux PSI: % of the last 10 s in which some runnable task waited for a CPU."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def one_run(
    info: StackInfo, relay: psutil.Process, users: int, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    report = tmp / f"report-{relay.pid}-{users}"
    cmd = [
        str(BIN / "locust"),
        "-f", str(ROOT / "loadtests" / "relay_overhead.py"),
        "--headless", "-u", str(users), "-r", str(users), "-t", f"{args.seconds}s",
        "--stop-timeout", "10",
        "--host", info.relay_url, "--relay-key", info.relay_key,
        "--upstream-url", info.upstream_url, "--upstream-key", info.upstream_key,
        "--report-dir", str(report), "--no-plots",
        "--mock-ttft-ms", str(args.ttft_ms), "--mock-itl-ms", str(args.itl_ms),
        "--mock-output-tokens", str(args.tokens),
        "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
    ]  # fmt: skip
    upstream_port = int(info.upstream_url.rsplit(":", 1)[1])
    load_before = os.getloadavg()[0]
    pressure_before = cpu_pressure()
    cpu_before = relay.cpu_times()
    seen: set[tuple[str, int]] = set()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + args.seconds + 40
    while proc.poll() is None and time.monotonic() < deadline:
        # Sampled every 50 ms: a connection that lives shorter than that may be missed, so
        # the count is a lower bound (exact when connections are pooled).
        seen |= upstream_connects(relay, upstream_port)
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate(timeout=10)[0].decode(errors="replace")
    cpu_after = relay.cpu_times()
    path = report / "load-summary.json"
    if not path.exists():
        return {"error": out[-1000:]}
    summary = json.loads(path.read_text())
    overhead = summary.get("relay_overhead") or {}
    relayed = max(int(summary["requests"]["total"]), 1)  # direct ones count apart
    cpu_ms = 1000 * (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system)
    direct_ttft = overhead.get("direct_ttft_ms") or {}
    added_p99 = overhead.get("ttft_p99_added_ms")
    ratio = None
    if added_p99 is not None and direct_ttft.get("p99"):
        ratio = round((direct_ttft["p99"] + added_p99) / direct_ttft["p99"], 4)
    return {
        "streams": users,
        "ttft_p50_added_ms": overhead.get("ttft_p50_added_ms"),
        "ttft_p99_added_ms": added_p99,
        "itl_p99_added_ms": overhead.get("itl_p99_added_ms"),
        "ttft_p99_relay_over_direct": ratio,
        "relayed_streams": relayed,
        "relay_cpu_ms_per_stream": round(cpu_ms / relayed, 3),
        "upstream_connections_per_stream": round(len(seen) / relayed, 3),
        "error_rate": round(summary.get("error_rate") or 0.0, 4),
        "not_ok": {
            name: count
            for name, count in summary["requests"].items()
            if name not in ("ok", "total", "by_status") and count
        },
        "load_avg_1m": round(load_before, 2),
        "cpu_pressure_avg10": pressure_before,
    }


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per version and level, the median of each numeric figure over its rounds (runs that
    failed are left out; ``rounds`` says how many counted)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if "error" not in row:
            groups.setdefault((row["relay"], row["streams"]), []).append(row)
    out = []
    for (relay, streams), runs in groups.items():
        merged: dict[str, Any] = {"relay": relay, "streams": streams, "rounds": len(runs)}
        for key, value in runs[0].items():
            if key in merged or key == "round":
                continue
            if isinstance(value, dict):  # not_ok: counts add up over the rounds
                merged[key] = {}
                for r in runs:
                    for name, count in r[key].items():
                        merged[key][name] = merged[key].get(name, 0) + count
            elif isinstance(value, int | float) and not isinstance(value, bool):
                values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
                merged[key] = round(statistics.median(values), 3)
            else:
                merged[key] = value
        out.append(merged)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="50,300", help="comma list of concurrent users")
    parser.add_argument("--seconds", type=int, default=8, help="seconds per run (-t)")
    parser.add_argument("--before", metavar="REF", help="also run this git ref's relay")
    parser.add_argument("--ttft-ms", type=int, default=200)
    parser.add_argument("--itl-ms", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs per version and level, interleaved; the summary shows each figure's median",
    )
    parser.add_argument("--json", default=str(ROOT / "reports" / "bench-relay-overhead.json"))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stacks, tempfile.TemporaryDirectory() as tmpdir:
        variants: list[tuple[str, StackInfo, psutil.Process]] = []
        if args.before:
            src = stacks.enter_context(exported_src(args.before))
            variants.append((args.before, *stacks.enter_context(stack_from(src))))
        variants.append(("this tree", *stacks.enter_context(stack_from(None))))
        for users in levels:
            for round_no in range(1, args.rounds + 1):
                for name, info, relay in variants:
                    run = one_run(info, relay, users, args, Path(tmpdir))
                    row = {"relay": name, "round": round_no, **run}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print(
        f"\nshape: TTFT {args.ttft_ms} ms, ITL {args.itl_ms} ms, {args.tokens} tokens; "
        f"{args.seconds} s per run"
    )
    if args.rounds > 1:
        print(f"median of {args.rounds} interleaved runs per version and level:")
    print(
        f"{'relay':<12}{'streams':>8}{'+TTFT p50':>10}{'+TTFT p99':>10}{'+ITL p99':>9}"
        f"{'p99 r/d':>9}{'cpu ms/st':>10}{'conn/st':>8}{'err':>8}{'load1':>7}{'cpu psi':>8}"
    )
    shown = rows if args.rounds == 1 else medians(rows)
    for r in shown:
        if "error" in r:
            print(f"{r['relay']:<12} ERROR {r['error'][-300:]}")
            continue
        s = {k: "-" if v is None else v for k, v in r.items()}
        print(
            f"{s['relay']:<12}{s['streams']:>8}{s['ttft_p50_added_ms']:>10}"
            f"{s['ttft_p99_added_ms']:>10}{s['itl_p99_added_ms']:>9}"
            f"{s['ttft_p99_relay_over_direct']:>9}{s['relay_cpu_ms_per_stream']:>10}"
            f"{s['upstream_connections_per_stream']:>8}{s['error_rate']:>8}{s['load_avg_1m']:>7}"
            f"{s['cpu_pressure_avg10']:>8}"
        )
    print(f"goals (ms added, issue #14): {GOALS}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    out = {"args": vars(args), "runs": rows, "medians": medians(rows)}
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
