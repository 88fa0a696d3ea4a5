"""Registry: per-request recording, worker->master deltas, pacer and rate-limit math."""

from __future__ import annotations

import pytest

from relaygate.load import outcomes
from relaygate.load.client import RequestResult
from relaygate.load.metrics import Registry, record_result
from relaygate.load.pacer import Pacer
from relaygate.load.prober import jain_index, parse_rate_limit, retry_after_s, step_stats
from relaygate.load.summary import build_summary, mask_url

MS = 1_000_000


def ok_stream(t0: int = 0) -> RequestResult:
    return RequestResult(
        outcome=outcomes.OK,
        status=200,
        t_intended_ns=t0,
        t_start_ns=t0 + 2 * MS,
        t_sent_ns=t0 + 3 * MS,
        t_first_event_ns=t0 + 13 * MS,
        t_first_token_ns=t0 + 103 * MS,
        t_last_token_ns=t0 + 143 * MS,
        t_end_ns=t0 + 145 * MS,
        token_event_ns=[t0 + (103 + 10 * i) * MS for i in range(5)],
        emit_lag_ns=[MS // 2] * 5,
        first_token_emit_lag_ns=MS // 2,
        completion_tokens=5,
    )


def test_record_result_defines_each_timer() -> None:
    reg = Registry()
    record_result(reg, ok_stream(), wall_clock=lambda: 1000.0)
    h = reg.hists
    assert h["ttft_ms"].percentile(50) == pytest.approx(100, abs=0.01)  # sent -> first token
    assert h["ack_ms"].percentile(50) == pytest.approx(10, abs=0.01)  # sent -> first event
    assert h["ttft_intended_ms"].percentile(50) == pytest.approx(103, abs=0.01)
    assert h["schedule_lag_ms"].percentile(50) == pytest.approx(2, abs=0.01)
    assert h["itl_ms"].count == 4 and h["itl_ms"].percentile(50) == pytest.approx(10, abs=0.01)
    assert h["tpot_ms"].percentile(50) == pytest.approx(10, abs=0.01)  # (last-first)/(5-1)
    assert h["e2e_ms"].percentile(50) == pytest.approx(142, abs=0.01)
    assert reg.counters["output_tokens"] == 5 and reg.counters["outcome.ok"] == 1


def test_failures_stay_out_of_latency_histograms() -> None:
    reg = Registry()
    limited = RequestResult(
        outcome=outcomes.RATE_LIMITED,
        status=429,
        t_sent_ns=0,
        t_end_ns=MS,
        headers={"retry-after": "1"},
    )
    record_result(reg, limited)
    record_result(
        reg, RequestResult(outcome=outcomes.TRUNCATED, status=200, t_sent_ns=0, t_end_ns=MS)
    )
    assert "ttft_ms" not in reg.hists and "e2e_ms" not in reg.hists
    assert reg.hists["rate_limited_ms"].count == 1 and reg.hists["error_ms"].count == 1
    assert reg.counters["rate_limited.retry_after_present"] == 1


def test_worker_deltas_merge_to_the_same_totals() -> None:
    master, worker_a, worker_b, alone = Registry(), Registry(), Registry(), Registry()
    for i in range(10):
        for reg in (worker_a if i % 2 else worker_b, alone):
            record_result(reg, ok_stream(i * 1000 * MS), wall_clock=lambda i=i: 1000.0 + i)
    worker_a.extras["rate_limit_analysis"] = {"accuracy": 1.0}
    master.merge(worker_a.take_delta())
    master.merge(worker_b.take_delta())
    assert worker_a.is_empty()
    assert master.counters == alone.counters
    assert master.hists["itl_ms"].buckets == alone.hists["itl_ms"].buckets
    assert master.series == alone.series
    summary = build_summary(
        master,
        host="http://u:p@h:1/x?key=sk-abcdefghijklmnop",
        users=2,
        duration_s=10.0,
        scenario=["StreamingChatUser"],
    )
    assert summary["requests"]["ok"] == 10 and summary["output_tokens_per_s"] == 5.0
    assert summary["rate_limit"] == {"accuracy": 1.0}
    assert "sk-abcdefghijklmnop" not in summary["host"] and "u:p" not in summary["host"]


def test_pacer_constant_and_poisson() -> None:
    now = [0]
    pacer = Pacer(100.0, clock=lambda: now[0])
    slots = [pacer.claim() for _ in range(5)]
    assert slots == [0, 10 * MS, 20 * MS, 30 * MS, 40 * MS]
    now[0] = 500 * MS  # all users were busy: the next slot is 450 ms late
    pacer.claim()
    assert pacer.late == 1 and pacer.max_late_ns == 450 * MS
    poisson = Pacer(1000.0, mode="poisson", seed=1, clock=lambda: 0)
    last = 0
    for _ in range(2000):
        last = poisson.claim() or 0
    assert last / 2000 == pytest.approx(MS, rel=0.1)  # mean gap 1 ms


def test_rate_limit_math() -> None:
    assert parse_rate_limit("10/1s") == (10, 1.0) and parse_rate_limit("60/1m") == (60, 60.0)
    with pytest.raises(ValueError, match="N/Ws"):
        parse_rate_limit("ten per second")
    assert retry_after_s({"retry-after": "2", "retry-after-ms": "1500"}) == 1.5
    assert retry_after_s({"retry-after": "3"}) == 3.0 and retry_after_s({}) is None
    assert jain_index([1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0]) == pytest.approx(1 / 3)
    results = [
        RequestResult(
            outcome=outcomes.OK if i % 3 else outcomes.RATE_LIMITED,
            status=200 if i % 3 else 429,
            t_sent_ns=i * 100 * MS,
            t_end_ns=i * 100 * MS + MS,
        )
        for i in range(30)
    ]
    stats = step_stats(results, 0, 3000 * MS, offered_rps=10, limit_rps=5)
    assert stats["accepted_rps"] == pytest.approx(20 / 3, abs=0.01)
    assert stats["rate_limited_share"] == pytest.approx(1 / 3, abs=0.001)
    assert stats["accuracy"] == pytest.approx(1 - (20 / 3 - 5) / 5, abs=0.001)


def test_mask_url() -> None:
    assert (
        mask_url("https://user:secret@relay.example:8443/v1") == "https://***@relay.example:8443/v1"
    )


def test_importing_the_load_package_imports_neither_locust_nor_gevent() -> None:
    import subprocess
    import sys

    code = (
        "import sys, relaygate.load, relaygate.load.client, relaygate.load.prober, "
        "relaygate.load.summary, relaygate.load.plots, relaygate.load.selfcheck; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent', 'matplotlib')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
