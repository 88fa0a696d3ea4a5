"""The mock upstream for load use: the coarse timer, worker processes, the merged journal."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from mock_helpers import MockThread, chat, request

from relaygate.cli import mock_upstream as cli
from relaygate.mock.app import STATE
from relaygate.mock.clock import CoarseClock
from relaygate.mock.config import MockConfig
from relaygate.mock.shards import merge_journal_pages

#: Judges timing (the mock's lateness): under xdist it runs last and alone (conftest.py).
pytestmark = pytest.mark.serial


def test_coarse_clock_wakes_on_ticks_never_early() -> None:
    """Deadlines round up to the tick; the waiters of one tick wake together."""
    tick_ns = 10_000_000

    async def run() -> list[tuple[int, int, int]]:
        clock = CoarseClock(tick_ns)
        start = time.monotonic_ns()
        woken: list[tuple[int, int, int]] = []

        async def waiter(offset_ms: float) -> None:
            due = start + int(offset_ms * 1e6)
            called = time.monotonic_ns()
            await clock.sleep_until(due)
            woken.append((called, due, time.monotonic_ns()))

        await asyncio.gather(*(waiter(3 + i * 2.5) for i in range(12)))
        await clock.sleep_until(start)  # past deadlines return at once
        assert clock.pending == 0
        clock.close()
        return woken

    woken = asyncio.run(run())
    assert len(woken) == 12
    by_tick: dict[int, list[int]] = {}
    for called, due, at in woken:
        tick_edge = -(-due // tick_ns) * tick_ns
        assert at >= due
        if due - called > 1_000_000:  # (a waiter that started late past its due returns at once)
            assert at >= tick_edge  # never before the tick that holds the deadline
            by_tick.setdefault(tick_edge, []).append(at)
    assert len(by_tick) < 12  # deadlines shared ticks
    for times in by_tick.values():
        assert max(times) - min(times) < 2_000_000  # one wake-up per tick, all at once


def test_timer_config_and_flags() -> None:
    with pytest.raises(ValueError, match="timer must be one of precise, coarse"):
        MockConfig(timer="sloppy")
    with pytest.raises(ValueError, match="tick_ms"):
        MockConfig(timer="coarse", tick_ms=0)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--timer", "coarse", "--tick-ms", "2.5"])
    assert args.timer == "coarse" and args.tick_ms == 2.5
    assert parser.parse_args([]).timer == "precise"


def test_coarse_timer_stream_keeps_schedule_within_a_tick() -> None:
    tick_ms = 5.0
    with MockThread(MockConfig(timer="coarse", tick_ms=tick_ms)) as mock:
        assert isinstance(mock.app[STATE].clock, CoarseClock)
        answer = request(
            mock.port, "POST", "/v1/chat/completions",
            chat("hi [[relaygate ttft_ms=12 itl_ms=20 chunks=6]]", stream=True),
        )  # fmt: skip
        assert answer.status == 200 and answer.events()[-1] == "[DONE]"
        stats = request(mock.port, "GET", "/_relaygate/stats").json()
    lateness = stats["write_lateness_ms"]
    assert lateness["count"] == 6 and lateness["min"] >= 0  # never early
    # A tick (deadlines round up) plus the loop timer's slack; generous for a loaded machine.
    assert lateness["p50"] <= tick_ms + 5


@pytest.fixture(scope="module")
def two_workers() -> Iterator[tuple[int, dict[str, Any]]]:
    """``relaygate mock-upstream --workers 2`` in its own process: (port, ready line)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "relaygate.mock", "--port", "0", "--workers", "2",
         "--journal-size", "500"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        yield int(ready["url"].rpartition(":")[2]), ready
    finally:
        process.terminate()
        code = process.wait(20)
        if process.stdout is not None:
            process.stdout.close()
    assert code == 0
    for pid in ready["worker_pids"]:  # the workers stopped with their parent
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_two_workers_journal_is_exact(two_workers: tuple[int, dict[str, Any]]) -> None:
    """K tagged requests, sent concurrently over fresh connections to two workers: the one
    journal read returns exactly K, numbered uniquely and in order, from both workers."""
    port, ready = two_workers
    assert ready["workers"] == 2 and len(set(ready["worker_pids"])) == 2
    start = request(port, "GET", "/_relaygate/journal").json()["next_seq"]
    k = 40

    def send(i: int) -> int:
        streamed = i % 2 == 0
        body = chat(f"n{i} [[relaygate tag=exact chunks=3]]", stream=streamed)
        return request(port, "POST", "/v1/chat/completions", body).status

    request(port, "POST", "/_relaygate/stats/reset")
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(send, range(k))) == [200] * k
    page = request(port, "GET", "/_relaygate/journal?tag=exact").json()
    entries = page["data"]
    seqs = [e["seq"] for e in entries]
    assert len(entries) == k and seqs == sorted(set(seqs)) and seqs[0] >= start
    assert sorted(e["body"]["messages"][0]["content"].split()[0] for e in entries) == sorted(
        f"n{i}" for i in range(k)
    )
    assert {e["worker"] for e in entries} == {0, 1}  # both workers served (p = 1 - 2**-39)
    assert page["next_seq"] == seqs[-1] + 1
    # Paging with a small limit across both workers: every entry once, in order.
    paged: list[int] = []
    since = start
    for _ in range(k):
        part = request(port, "GET", f"/_relaygate/journal?since_seq={since}&limit=7").json()
        if not part["data"]:
            break
        paged += [e["seq"] for e in part["data"]]
        since = part["next_seq"]
    assert paged == seqs
    # Stats add up over the workers: 20 streams of 3 content events each.
    stats = request(port, "GET", "/_relaygate/stats").json()
    assert stats["workers"] == 2 and stats["events"] == 20 * 3
    assert stats["streams"]["started"] == stats["streams"]["finished"] == 20
    # A reset reaches every worker; numbering goes on.
    assert request(port, "DELETE", "/_relaygate/journal").json()["next_seq"] == seqs[-1] + 1
    assert request(port, "GET", "/_relaygate/journal?tag=exact").json()["data"] == []
    assert request(port, "GET", "/health").json() == {"status": "ok"}


def test_merge_journal_pages_stops_where_a_worker_was_cut() -> None:
    def page(*seqs: int, stop: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        return [{"seq": s} for s in seqs], stop

    # Worker 0 stopped at its limit before 9: 10 and 11 may hide worker 0's later entries.
    merged, next_seq = merge_journal_pages([page(1, 4, stop=9), page(2, 3, 10, 11)], 0, 2, 12)
    assert [e["seq"] for e in merged] == [1, 2] and next_seq == 3
    merged, next_seq = merge_journal_pages([page(1, 4, stop=9), page(2, 3, 10, 11)], 0, 5, 12)
    assert [e["seq"] for e in merged] == [1, 2, 3, 4] and next_seq == 9
    merged, next_seq = merge_journal_pages([page(5), page(6)], 0, 10, 7)
    assert [e["seq"] for e in merged] == [5, 6] and next_seq == 7
    assert merge_journal_pages([page(), page()], 20, 10, 7) == ([], 20)


def test_workers_flag_and_port_in_use() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert parser.parse_args([]).workers == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "0"])
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "relaygate.mock", "--port", str(port), "--workers", "2"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_bench_mock_compare_smoke() -> None:
    """``benchmarks/bench_mock.py compare`` runs each set-up and reports figures and load."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mock.py"
    command = [sys.executable, str(script), "compare", "--json", "--streams", "10",
               "--chunks", "5", "--itl-ms", "10", "--warmup-s", "0.3", "--duration-s", "1",
               "--configs", "1:precise,2:coarse"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout)
    assert [(r["workers"], r["timer"]) for r in result["runs"]] == [(1, "precise"), (2, "coarse")]
    for run in result["runs"]:
        assert run["failures"] == 0 and run["events_per_s"] > 0
        assert run["mock_gap_error_ms"]["count"] > 0 and run["load_avg_1m_before"] >= 0


def test_a_dead_worker_stops_the_mock() -> None:
    """A worker that dies takes the others down and the parent exits 1 with the reason: a
    half-served port would lose part of the load and of the journal silently."""
    process = subprocess.Popen(
        [sys.executable, "-m", "relaygate.mock", "--port", "0", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        ready = json.loads(process.stdout.readline())
        first, second = ready["worker_pids"]
        os.kill(first, signal.SIGKILL)
        assert process.wait(30) == 1
        assert f"(pid {first}) exited with -9; stopping the others" in process.stderr.read()
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
