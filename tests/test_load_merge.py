"""Exact merge: what a Locust master reports for traffic split over workers equals what one
process recording the same traffic reports.

The same requests are recorded once in one registry ("one process") and once split over two
worker registries that report as our Locust listeners do, over Locust's msgpack wire format.
The master's registry must equal the single one: every histogram bucket by bucket (count,
sum, min, max, negatives), every counter, the per-second series (its float sums to the last
digits; plots only), the pacer's lateness, the summary built from it (percentiles, the 429
block) and the 429 prober's analysis field by field. The last test runs ``locust
--processes 2`` and checks the master's totals against what each worker sent.
"""

from __future__ import annotations

import copy
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from limiters import LimiterRelay, Threads
from test_load_locust import processes, run_locust

from relaygate.load import outcomes
from relaygate.load.client import RequestResult, TimingClient
from relaygate.load.histogram import Histogram
from relaygate.load.metrics import Registry, record_result
from relaygate.load.prober import ProbeConfig, RateLimitProber
from relaygate.load.summary import build_summary

WALL_START = 1_700_000_000
MS = 1_000_000


def streams(seed: int, count: int) -> list[tuple[int, str, RequestResult]]:
    """``(wall second, scope, result)`` for a deterministic mix of every kind of answer: ok
    streams (ITLs on both sides of the 100 ms linear/log edge, negative stamp errors), 429s
    with and without Retry-After, server errors, timeouts, relay and ``direct.`` scope."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        t0 = i * 7 * MS
        start = t0 + rng.randrange(0, 3 * MS)
        sent = start + rng.randrange(1_000, 50_000)
        kind = rng.random()
        scope = "direct." if rng.random() < 0.2 else ""
        if kind < 0.15:
            headers = {"retry-after": "1"} if rng.random() < 0.5 else {}
            res = RequestResult(
                outcome=outcomes.RATE_LIMITED,
                status=429,
                headers=headers,
                t_intended_ns=t0,
                t_start_ns=start,
                t_sent_ns=sent,
                t_headers_ns=sent + rng.randrange(MS, 20 * MS),
            )
        elif kind < 0.2:
            res = RequestResult(
                outcome=outcomes.SERVER_ERROR,
                status=502,
                t_intended_ns=t0,
                t_start_ns=start,
                t_sent_ns=sent,
                t_end_ns=sent + rng.randrange(MS, 900 * MS),
            )
        elif kind < 0.22:
            res = RequestResult(outcome=outcomes.TIMEOUT, t_intended_ns=t0, t_start_ns=start)
        else:
            first = sent + rng.randrange(20 * MS, 400 * MS)
            times = [first]
            for _ in range(rng.randrange(1, 40)):
                times.append(times[-1] + int(rng.lognormvariate(16.5, 1.0)))  # ~15 ms, tail
            lags = [rng.randrange(-200_000, 3 * MS) for _ in times]
            res = RequestResult(
                outcome=outcomes.OK,
                status=200,
                t_intended_ns=t0,
                t_start_ns=start,
                t_sent_ns=sent,
                t_headers_ns=first - MS,
                t_first_event_ns=first - MS // 2,
                t_first_token_ns=first,
                t_last_token_ns=times[-1],
                t_end_ns=times[-1] + rng.randrange(10_000, MS),
                token_event_ns=times,
                emit_lag_ns=[abs(lag) for lag in lags],
                token_emit_lag_ns=lags,
                first_token_emit_lag_ns=abs(lags[0]),
                recv_lag_ns=[rng.randrange(0, 200_000) for _ in times],
                completion_tokens=len(times) if rng.random() < 0.9 else None,
            )
        out.append((WALL_START + i // 40, scope, res))
    return out


# -- two workers and a master, in this process, through our Locust listeners --------------


class Cluster:
    """N worker registries and a master's. A report is what our Locust listeners do
    (``locust_hooks``: the worker attaches :meth:`Registry.take_delta`, the master merges it
    with :meth:`Registry.merge`) over Locust's wire format (``locust.rpc.protocol.Message``:
    msgpack, decoded with ``raw=False, strict_map_key=False``). Locust itself is not
    imported: its gevent monkey-patching must never reach the pytest process."""

    def __init__(self, workers: int) -> None:
        self.workers = [Registry() for _ in range(workers)]
        self.merged = Registry()

    def report(self, worker: int) -> None:
        """Worker ``worker`` sends its report (Locust does every 3 s and once at the end)."""
        registry = self.workers[worker]
        if registry.is_empty():
            return
        data = {"relaygate": registry.take_delta()}
        wire = msgpack.dumps(("stats", data, f"worker-{worker}"))
        _type, received, _node = msgpack.loads(wire, raw=False, strict_map_key=False)
        self.merged.merge(received["relaygate"])


def assert_same_registry(merged: Registry, single: Registry) -> None:
    assert sorted(merged.hists) == sorted(single.hists)
    for name, want in single.hists.items():
        got = merged.hists[name]
        assert got.buckets == want.buckets, f"{name}: buckets differ"
        assert (got.count, got.min, got.max, got.negative) == (
            want.count,
            want.min,
            want.max,
            want.negative,
        ), name
        assert got.sum == want.sum, f"{name}: sum {got.sum!r} != {want.sum!r}"
    assert merged.counters == single.counters
    # The per-second series (plots only) keeps TTFT sums as floats: equal to the last digits.
    assert sorted(merged.series) == sorted(single.series)
    for second, want_row in single.series.items():
        got_row = merged.series[second]
        assert sorted(got_row) == sorted(want_row), second
        for field, value in want_row.items():
            if field.endswith("_sum"):
                assert got_row[field] == pytest.approx(value, rel=1e-12), (second, field)
            else:
                assert got_row[field] == value, (second, field)
    assert merged.extras == single.extras


def summaries(*registries: Registry) -> list[bytes]:
    return [
        orjson.dumps(
            build_summary(r, host=None, users=8, duration_s=12.5, scenario=["S"], target_rps=20.0),
            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS,
        )
        for r in registries
    ]


def split_run(
    traffic: list[tuple[int, str, RequestResult]],
    cluster: Cluster,
    *,
    seed: int,
    report_every: int,
) -> Registry:
    """Record ``traffic`` once in one registry and split at random over the cluster's
    workers, each reporting every ``report_every`` of its own requests and once at the end;
    returns the one-process registry."""
    single = Registry()
    rng = random.Random(seed)
    recorded = [0] * len(cluster.workers)
    for second, scope, res in traffic:
        record_result(single, res, scope=scope, wall_clock=lambda s=second: s)
        worker = rng.randrange(len(cluster.workers))
        record_result(cluster.workers[worker], res, scope=scope, wall_clock=lambda s=second: s)
        recorded[worker] += 1
        if recorded[worker] % report_every == 0:
            cluster.report(worker)
    return single


@pytest.mark.parametrize("report_every", [1, 7, 10_000])
def test_two_workers_merge_exactly_to_one_process(
    monkeypatch: pytest.MonkeyPatch, report_every: int
) -> None:
    cluster = Cluster(2)
    single = split_run(streams(14, 2000), cluster, seed=5, report_every=report_every)
    # The self-check histograms, sampled by every process on its own.
    rng = random.Random(3)
    for _ in range(300):
        lag, cpu = rng.uniform(-0.5, 40.0), rng.uniform(0, 100.0)
        worker = cluster.workers[rng.randrange(2)]
        for registry in (single, worker):
            registry.hist("loop_lag_ms").record(lag)
            registry.hist("cpu_percent").record(cpu)
    for worker in range(2):
        cluster.report(worker)  # the final report of each worker
    assert_same_registry(cluster.merged, single)
    merged, one = summaries(cluster.merged, single)
    assert merged == one
    summary = json.loads(one)
    # Not vacuous: every kind of block was measured on both sides.
    assert summary["requests"]["rate_limited"] > 100 and summary["requests"]["ok"] > 1000
    assert summary["rate_limit"]["rate_limited_ms"]["count"] > 100
    assert summary["rate_limit"]["retry_after_present_share"] is not None
    assert summary["relay_overhead"] is not None
    assert summary["itl_ms"]["max"] > 100  # log buckets too
    assert cluster.merged.hists["itl_stamp_error_ms"].count > 0
    assert all(cluster.workers[w].is_empty() for w in range(2))  # everything was sent


def test_pacer_lateness_merges_as_the_worst_of_the_workers() -> None:
    """``pacer.max_late_ms`` is the latest any slot was taken: the largest over the workers
    (it was the value of whichever worker reported last). Each worker attaches it as
    ``locust_hooks._attach_pacer`` does."""
    cluster = Cluster(2)
    single = Registry()
    for worker, late_ms in enumerate([80.0, 55.0]):
        for registry in (single, cluster.workers[worker]):
            registry.count("pacer.late", 3)
            registry.extras["pacer_max_late_ms"] = max(
                late_ms, registry.extras.get("pacer_max_late_ms", 0.0)
            )
        cluster.report(worker)
    assert_same_registry(cluster.merged, single)
    merged, one = (json.loads(s) for s in summaries(cluster.merged, single))
    assert (
        merged["pacer"]
        == one["pacer"]
        == {
            "target_rps": 20.0,
            "achieved_rps": 0.0,
            "late_slots": 6,
            "max_late_ms": 80.0,
        }
    )


def test_histogram_sums_are_exact_and_older_snapshots_still_load() -> None:
    """Sums add in integer nanoseconds, whatever the order; a snapshot from before ``sn``
    (only the float ``s``) still merges."""
    values_ns = [1, 10**15, 3, 7 * 10**8 + 1]
    forward, backward = Histogram(), Histogram()
    forward.record_ns(values_ns)
    for value in reversed(values_ns):
        backward.record(value / 1e6)
    assert forward.sum_ns == backward.sum_ns == sum(values_ns)
    old = forward.to_dict()
    del old["sn"]
    assert Histogram.from_dict(old).sum == pytest.approx(forward.sum, rel=1e-15)


# -- the 429 prober: its analysis reaches the master unchanged -------------------------------


@pytest.fixture(scope="module")
def prober_run() -> list[tuple[str, Any]]:
    """One prober run against an exact limiter, as a log of what a Locust user records:
    ``("request", (label, result))`` per request and ``("progress", analysis)`` after each
    phase, ending with ``("done", analysis)``."""
    log: list[tuple[str, Any]] = []
    lock = threading.Lock()
    clients: list[TimingClient] = []
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'
    with LimiterRelay("gcra", 6, 0.5) as relay:
        local = threading.local()

        def send(key: str, label: str, t_intended_ns: int, fields: dict[str, Any]) -> Any:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = TimingClient(relay.url, timeout_s=10.0)
                with lock:
                    clients.append(client)
            res = client.post_json(
                "/v1/chat/completions",
                body,
                {"Authorization": f"Bearer {key}"},
                stream=False,
                t_intended_ns=t_intended_ns,
            )
            with lock:
                log.append(("request", (label, res)))
            return res

        def progress(analysis: dict[str, Any]) -> None:
            with lock:
                log.append(("progress", copy.deepcopy(analysis)))

        keys = [f"sk-relaygate-merge-{i:04d}" for i in range(3)]
        config = ProbeConfig(
            keys=keys, phases=("discover", "steps", "retry_after"), multipliers=(0.5, 3.0)
        )
        try:
            analysis = RateLimitProber(config, send, Threads()).run(on_progress=progress)
        finally:
            for client in clients:
                client.close()
    log.append(("done", analysis))
    return log


@pytest.mark.serial  # the real prober against a limiter: judges timing, under xdist last and alone
def test_prober_analysis_reaches_the_master_field_by_field(
    monkeypatch: pytest.MonkeyPatch, prober_run: list[tuple[str, Any]]
) -> None:
    """Worker 0 runs the prober (reporting its partial analysis after each phase, as the 3 s
    reports pick it up), worker 1 streams; the master's summary carries the final analysis
    and every ``ratelimit.`` and stream metric exactly as one process has them."""
    cluster = Cluster(2)
    single = Registry()
    traffic = iter(streams(21, 400))
    for event, payload in prober_run:
        if event == "request":
            _label, res = payload
            for registry in (single, cluster.workers[0]):
                record_result(registry, res, scope="ratelimit.", wall_clock=lambda: WALL_START)
        else:
            for registry in (single, cluster.workers[0]):
                registry.extras["rate_limit_analysis"] = copy.deepcopy(payload)
            cluster.report(0)
        for second, scope, res in _take(traffic, 3):
            for registry in (single, cluster.workers[1]):
                record_result(registry, res, scope=scope, wall_clock=lambda s=second: s)
        cluster.report(1)
    analysis = prober_run[-1][1]
    assert analysis["discovered"]["limit"] == 6 and len(analysis["steps"]) == 2  # not vacuous
    assert_same_registry(cluster.merged, single)
    merged, one = (json.loads(s) for s in summaries(cluster.merged, single))
    assert merged == one
    assert_fields_equal(merged["rate_limit"], json.loads(orjson.dumps(analysis)))
    assert cluster.merged.counters["ratelimit.outcome.rate_limited"] > 0


def _take(it: Iterator[Any], count: int) -> list[Any]:
    return [item for _, item in zip(range(count), it, strict=False)]


def assert_fields_equal(got: Any, want: Any, path: str = "rate_limit") -> None:
    """Equal, naming the first field that differs."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), path
        for key in want:
            assert_fields_equal(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_fields_equal(g, w, f"{path}[{i}]")
    else:
        assert got == want and type(got) is type(want), f"{path}: {got!r} != {want!r}"


# -- a real `locust --processes 2` run --------------------------------------------------------

SPY = '''
"""Test spy: each worker writes what it reports to the master, the master what it merged."""
import json, os
from locust import events
from locust.runners import MasterRunner, WorkerRunner
from relaygate.load.locust_state import states

OUT = os.environ["MERGE_SPY_DIR"]


@events.report_to_master.add_listener
def _sent(client_id, data, **_kw):  # runs after relaygate's listener has attached its delta
    if "relaygate" in data:
        with open(os.path.join(OUT, f"worker-{os.getpid()}.jsonl"), "a") as out:
            out.write(json.dumps(data["relaygate"]) + "\\n")


@events.quitting.add_listener
def _merged(environment, **_kw):
    if isinstance(environment.runner, MasterRunner):
        for env, state in states():
            if env is environment:
                with open(os.path.join(OUT, "master.json"), "w") as out:
                    json.dump(state.registry.to_dict(), out)
'''


def test_locust_processes_2_master_totals_are_the_sum_of_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = tmp_path / "spy.py"
    spy.write_text(SPY)
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    monkeypatch.setenv("MERGE_SPY_DIR", str(spy_dir))
    rc, out, summary = run_locust(
        tmp_path,
        "-f",
        f"{Path(__file__).parents[1] / 'loadtests'},{spy}",
        *processes(2),
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "4s",
        # 1.6 s streams: at -t every worker is mid-stream and takes longer than Locust's
        # 0.5 s to send its final report (which the master used to drop).
        "--mock-ttft-ms",
        "100",
        "--mock-itl-ms",
        "50",
        "--mock-output-tokens",
        "30",
        timeout_s=90,
    )
    assert rc == 0, out[-3000:]
    workers = sorted(spy_dir.glob("worker-*.jsonl"))
    assert len(workers) == 2, out[-3000:]  # both workers sent something
    from_workers = Registry()
    per_worker_ok = []
    for path in workers:
        mine = Registry()
        for line in path.read_text().splitlines():
            mine.merge(json.loads(line))
        per_worker_ok.append(int(mine.counters.get("outcome.ok", 0)))
        from_workers.merge(mine.to_dict())
    master = Registry()
    master.merge(json.loads((spy_dir / "master.json").read_text()))
    assert all(ok > 0 for ok in per_worker_ok), per_worker_ok
    assert summary["requests"]["ok"] == sum(per_worker_ok)
    assert summary["requests"]["total"] == from_workers.counters["requests"]
    assert_same_registry(master, from_workers)
