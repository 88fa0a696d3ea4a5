"""Where the reference relay's time goes, measured inside its own process.

``bench_relay_overhead.py`` sees the relay from outside (relay minus direct, through Locust), so
its figures hold every wait for a CPU on the machine. This script runs the reference relay in
its own process (uvloop, vocabularies loaded and GC tuned as ``relaygate reference-relay``
does), the mock upstream of an embedded stack, and a minimal aiohttp client in a subprocess
that keeps ``--streams`` streams open for ``--seconds``; inside the relay it times (after a
1 s warm-up)::

    pre    handler entry -> the upstream call starts (body read, auth, rate limit, JSON,
           routing, prompt tokens, quota reservation)
    event  upstream bytes handed to the upstream connection's reader -> written to the
           client's transport (per write: the relay's latency per event once the bytes are
           in; queueing behind other streams' events and waits for a CPU in between included)
    post   the upstream call returns -> handler end (billing, request log)

and the relay process's CPU per stream and share of one core (the mock's and the client's
beside it), and its event loop's lag (how late a 5 ms sleep wakes up: a loop busy with its own
work, or a process waiting for a CPU). The timing wraps aiohttp's ``StreamReader`` methods and
a few relay functions (a diagnostic, not a product path): it adds about a microsecond per call.
Every server listens on 127.0.0.1; the run is bounded by ``--seconds``::

    python benchmarks/bench_relay_hotpath.py --streams 50 --seconds 12
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped, unused-ignore]
from aiohttp import streams, web

from relaygate import tokens
from relaygate.cli.mock_upstream import tune_gc
from relaygate.reference import app as relay_app
from relaygate.reference import proxy
from relaygate.reference.app import build_state, create_app
from relaygate.reference.config import RelayConfig
from relaygate.stack import EmbeddedStack, StackInfo

now_ns = time.perf_counter_ns


def percentile(values: list[int], p: float) -> float:
    """The ``p`` percentile of ``values`` (ns) in µs; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1000


def cpu_pressure() -> str:
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return line.split("avg10=")[1].split()[0] + "%"
    except (OSError, IndexError):
        return "-"


class Timings:
    """Wraps the relay and aiohttp's reader to time the three spans (see the module doc)."""

    def __init__(self) -> None:
        self.on = False
        self.spans: dict[str, list[int]] = {"pre": [], "event": [], "post": [], "lag": []}
        self.fed: dict[int, int] = {}  # id(reader) -> when its first unread bytes came
        self.read_at: dict[asyncio.Task[Any], int] = {}
        self.entered: dict[asyncio.Task[Any], int] = {}

    def install(self) -> None:
        timings = self
        feed_data = streams.StreamReader.feed_data
        readany = streams.StreamReader.readany
        read = streams.StreamReader.read
        write = proxy._Sender._write
        forward = proxy.forward
        relay = relay_app._relay

        def timed_feed(reader: streams.StreamReader, data: bytes, *rest: Any) -> Any:
            timings.fed.setdefault(id(reader), now_ns())
            return feed_data(reader, data, *rest)

        async def timed_readany(reader: streams.StreamReader) -> bytes:
            data = await readany(reader)
            fed = timings.fed.pop(id(reader), None)
            task = asyncio.current_task()
            if fed is not None and task is not None:
                timings.read_at[task] = fed
            return data

        async def timed_read(reader: streams.StreamReader, n: int = -1) -> bytes:
            data = await read(reader, n)
            timings.fed.pop(id(reader), None)  # a request body: not an event
            return data

        async def timed_write(sender: proxy._Sender, payload: bytes) -> None:
            task = asyncio.current_task()
            fed = timings.read_at.pop(task, None) if task is not None else None
            await write(sender, payload)
            if fed is not None and timings.on:
                timings.spans["event"].append(now_ns() - fed)

        async def timed_forward(call: proxy.UpstreamCall) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            if timings.on and task in timings.entered:
                timings.spans["pre"].append(now_ns() - timings.entered[task])
            try:
                return await forward(call)
            finally:
                timings.entered[task] = now_ns()  # from here: post

        async def timed_relay(request: web.Request, endpoint: str) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            timings.entered[task] = now_ns()
            try:
                return await relay(request, endpoint)
            finally:
                since = timings.entered.pop(task, None)
                timings.read_at.pop(task, None)
                if timings.on and since is not None:
                    timings.spans["post"].append(now_ns() - since)

        for owner, name, wrapper in (
            (streams.StreamReader, "feed_data", timed_feed),
            (streams.StreamReader, "readany", timed_readany),
            (streams.StreamReader, "read", timed_read),
            (proxy._Sender, "_write", timed_write),
            (relay_app, "forward", timed_forward),
            (relay_app, "_relay", timed_relay),
        ):
            setattr(owner, name, wrapper)


def mock_process(info: StackInfo) -> psutil.Process:
    """The embedded stack's mock upstream (the child that listens on its port)."""
    port = int(info.upstream_url.rsplit(":", 1)[1])
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if any(c.laddr and c.laddr.port == port for c in child.net_connections("tcp")):
                return child
    raise RuntimeError("the mock upstream's process was not found")


def cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` and its children (0 once it is gone)."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


async def sample_lag(timings: Timings) -> None:
    """How late a 5 ms sleep ends, while timing is on."""
    while True:
        start = now_ns()
        await asyncio.sleep(0.005)
        if timings.on:
            timings.spans["lag"].append(now_ns() - start - 5_000_000)


async def measure(info: StackInfo, args: argparse.Namespace) -> None:
    tokens.warm()  # as the CLI does: loading a vocabulary mid-run stalls the loop ~0.5 s
    tune_gc()
    timings = Timings()
    timings.install()
    config = RelayConfig(admin_token="bench-admin")
    state = build_state(config)
    state.create_channel(
        {
            "name": "mock",
            "base_url": info.upstream_url,
            "key": info.upstream_key,
            "models": ["gpt-4o"],
        }
    )
    user = state.create_user({"username": "bench", "quota": 10**15})
    key = state.create_token({"user_id": user.id, "remain_quota": 10**15}).key
    runner = web.AppRunner(create_app(config, state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    load_before = os.getloadavg()[0]
    psi_before = cpu_pressure()
    driver = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--driver", f"http://127.0.0.1:{port}", key,
        str(args.streams), str(args.seconds), str(args.ttft_ms), str(args.itl_ms),
        str(args.tokens),
    )  # fmt: skip
    others = {"mock": mock_process(info), "client": psutil.Process(driver.pid)}
    lag = asyncio.create_task(sample_lag(timings))
    try:
        await asyncio.sleep(1.0)  # warm-up: connections, tokenizer
        timings.on = True
        cpu_before, done_before = time.process_time(), len(state.logs)
        others_before = {name: cpu_s(p) for name, p in others.items()}
        await asyncio.sleep(max(args.seconds - 2.0, 1.0))
        timings.on = False
        cpu_ms = 1000 * (time.process_time() - cpu_before)
        others_ms = {name: 1000 * (cpu_s(p) - others_before[name]) for name, p in others.items()}
        window_s = max(args.seconds - 2.0, 1.0)
        relayed = len(state.logs) - done_before
        await asyncio.wait_for(driver.wait(), timeout=args.seconds + 30)
    finally:
        lag.cancel()
        if driver.returncode is None:
            driver.kill()
        await runner.cleanup()
    print(
        f"{args.streams} streams (TTFT {args.ttft_ms} ms, ITL {args.itl_ms} ms, {args.tokens} "
        f"tokens), {relayed} relayed in {window_s:g} s; relay CPU "
        f"{cpu_ms / max(relayed, 1):.3f} ms per stream ({cpu_ms / 10 / window_s:.0f}% of a core); "
        f"load average {load_before:.2f}, CPU "
        f"pressure {psi_before} before the run"
    )
    shares = ", ".join(f"{name} {ms / 10 / window_s:.0f}%" for name, ms in others_ms.items())
    print(f"  CPU of the other processes (% of a core): {shares}")
    for name, values in timings.spans.items():
        print(
            f"  {name:<6} n={len(values):>7}  p50 {percentile(values, 50):>9.1f} µs  p90 "
            f"{percentile(values, 90):>9.1f}  p99 {percentile(values, 99):>9.1f}  max "
            f"{percentile(values, 100):>9.1f}"
        )


async def drive(
    url: str, key: str, users: int, seconds: float, ttft: int, itl: int, tokens: int
) -> None:
    """The load: ``users`` streams, each started again as soon as it ends, for ``seconds``
    (the users start one after the other over the first second)."""
    prompt = f"[[relaygate ttft_ms={ttft} itl_ms={itl} chunks={tokens}]] hi"
    body = {
        "model": "gpt-4o",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": prompt}],
    }
    stop = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=seconds + 20)

    async def user(session: aiohttp.ClientSession, number: int) -> None:
        await asyncio.sleep(number / users)  # started over 1 s, as Locust's -r USERS does
        while time.monotonic() < stop:
            async with session.post(
                url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                async for _ in resp.content.iter_any():
                    pass

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(user(session, number) for number in range(users)))


def _run(main: Callable[[], Awaitable[None]]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())  # type: ignore[arg-type]
    else:
        uvloop.run(main())  # type: ignore[arg-type]


def run() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        url, key, *numbers = sys.argv[2:]
        users, seconds, ttft, itl, tokens = (int(float(n)) for n in numbers)
        _run(lambda: drive(url, key, users, seconds, ttft, itl, tokens))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=50, help="concurrent streams")
    parser.add_argument("--seconds", type=int, default=12, help="length of the run (>= 4)")
    parser.add_argument("--ttft-ms", type=int, default=200)
    parser.add_argument("--itl-ms", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=20)
    args = parser.parse_args()
    args.seconds = max(args.seconds, 4)
    with EmbeddedStack() as info:
        _run(lambda: measure(info, args))
    return 0


if __name__ == "__main__":
    sys.exit(run())
