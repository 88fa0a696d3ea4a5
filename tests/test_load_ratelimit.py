"""The 429 prober's verdicts: on synthetic answers (no network), and against exact limiters of
every common kind (``tests/limiters.py``), each a stand-in relay on 127.0.0.1, plus faulty ones
that break one rule each."""

from __future__ import annotations

import csv
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from limiters import KINDS, LimiterRelay, Threads
from test_load_locust import run_locust

from relaygate.load import outcomes
from relaygate.load.client import RequestResult, TimingClient
from relaygate.load.prober import (
    ProbeConfig,
    RateLimitProber,
    judge_retry_after,
    refusal_expected,
    round_window,
)

#: Judges timing (the prober's accuracy): under xdist it runs last and alone (conftest.py).
pytestmark = pytest.mark.serial


class _Inline:
    """Runtime that runs every spawned function at once (no concurrency, no sleeping)."""

    def spawn(self, fn: Callable[[], None]) -> Any:
        fn()

    def sleep(self, seconds: float) -> None:
        pass

    def join(self, handles: Iterable[Any]) -> None:
        pass


def _prober(answer: Callable[[], RequestResult]) -> RateLimitProber:
    def send(key: str, label: str, t_intended_ns: int, fields: dict[str, Any]) -> RequestResult:
        return answer()

    config = ProbeConfig(keys=["sk-relaygate-probe-000000"], limit=2, window_s=1.0)
    return RateLimitProber(config, send, _Inline())


def test_burst_lost_in_transport_is_not_measured() -> None:
    verdict = _prober(lambda: RequestResult(outcome=outcomes.CONNECTION_ERROR)).retry_after(2)
    assert verdict["correct"] is None
    assert "0 answers (5 transport errors): not measured" in verdict["error"]


def test_burst_served_in_full_means_the_limit_was_not_enforced() -> None:
    verdict = _prober(
        lambda: RequestResult(outcome=outcomes.OK, status=200, t_end_ns=1)
    ).retry_after(2)
    assert verdict == {"error": "a burst of 5 was not refused", "correct": False}


# -- against exact limiters of each common kind ---------------------------------------------


def probe(url: str, phases: tuple[str, ...], **config: Any) -> dict[str, Any]:
    """Run the prober in this process against ``url``: one client per concurrent request."""
    idle: queue.SimpleQueue[TimingClient] = queue.SimpleQueue()
    clients: list[TimingClient] = []
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":1}'

    def send(key: str, label: str, t_intended_ns: int, fields: dict[str, Any]) -> RequestResult:
        try:
            client = idle.get_nowait()
        except queue.Empty:
            client = TimingClient(url, timeout_s=10.0)
            clients.append(client)
        try:
            return client.post_json(
                "/v1/chat/completions",
                body,
                {"Authorization": f"Bearer {key}"},
                stream=False,
                t_intended_ns=t_intended_ns,
            )
        finally:
            idle.put(client)

    keys = [f"sk-relaygate-limiter-{i:04d}" for i in range(3)]
    cfg = ProbeConfig(keys=keys, phases=phases, **config)
    try:
        return RateLimitProber(cfg, send, Threads()).run()
    finally:
        for client in clients:
            client.close()


# Small windows keep the file fast; the fixed wall-clock window is the reported case, 7/1s.
SHAPES = {kind: (7, 0.5) for kind in KINDS} | {"fixed-clock": (7, 1.0)}
FAST_STEPS = (0.5, 1.5, 3.0)  # 1x is reported but never judged


@pytest.fixture(scope="module")
def exact_probes() -> dict[str, dict[str, Any]]:
    """One prober per kind, all at once (each waits on its limiter most of the time, so
    together they take as long as the slowest, not the sum)."""
    results: dict[str, dict[str, Any]] = {}

    def run(kind: str) -> None:
        limit, window_s = SHAPES[kind]
        with LimiterRelay(kind, limit, window_s) as relay:
            phases = ("discover", "steps", "retry_after")
            results[kind] = probe(relay.url, phases, multipliers=FAST_STEPS)

    threads = [threading.Thread(target=run, args=(kind,)) for kind in KINDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # All at once, the probers and limiters share one interpreter: a stall of it can move a
    # request across a window edge (CI once saw a fixed-first step at accuracy 0.64). A kind
    # judged other than exact gets one more probe, alone; a prober that misjudges an exact
    # limiter misjudges it alone too.
    for kind in KINDS:
        if kind not in results or not _judged_exact(kind, results[kind]):
            run(kind)
    return results


def _judged_exact(kind: str, out: dict[str, Any]) -> bool:
    limit, window_s = SHAPES[kind]
    try:
        found, verdict = out["discovered"], out["retry_after"]
        return bool(
            (found["limit"], found["window_s"]) == (limit, window_s)
            and out["accuracy"] >= 0.95
            and verdict["correct"] is True
            and verdict["too_short"] is False
            and verdict["over_advertised"] is False
            and 0 <= verdict["error_s"] < 1.0 + 0.05
        )
    except (KeyError, TypeError):  # a part missing: not judged exact (the test says which)
        return False


@pytest.mark.parametrize("kind", KINDS)
def test_exact_limiter_is_judged_exact(kind: str, exact_probes: dict[str, Any]) -> None:
    limit, window_s = SHAPES[kind]
    out = exact_probes[kind]
    found = out["discovered"]
    assert (found["limit"], found["window_s"]) == (limit, window_s), found
    assert out["accuracy"] >= 0.95, out["steps"]
    verdict = out["retry_after"]
    assert verdict["correct"] is True, verdict
    assert verdict["too_short"] is False and verdict["over_advertised"] is False, verdict
    assert 0 <= verdict["error_s"] < 1.0 + 0.05  # whole-second ceil: never short, < 1 s long


def test_retry_after_shorter_than_the_wait_is_wrong() -> None:
    """Seconds rounded down: a client that waits them is refused again."""
    with LimiterRelay("fixed-clock", 7, 1.0, retry_after="floor") as relay:
        out = probe(relay.url, ("retry_after",), limit=7, window_s=1.0)
    verdict = out["retry_after"]
    assert verdict["too_short"] is True and verdict["correct"] is False, verdict


def test_retry_after_far_beyond_the_wait_is_over_advertised() -> None:
    with LimiterRelay("sliding-log", 7, 0.5, pad_s=2.0) as relay:
        out = probe(relay.url, ("retry_after",), limit=7, window_s=0.5)
    verdict = out["retry_after"]
    assert verdict["over_advertised"] is True, verdict
    assert verdict["correct"] is True and verdict["too_short"] is False  # safe, only wasteful


@pytest.mark.parametrize("extra", [1, -2], ids=["more", "fewer"])
def test_limiter_admitting_other_than_declared_is_inaccurate(extra: int) -> None:
    """Over-admission counts from one request; under-admission from beyond what discrete
    arrivals and the span's edges excuse (here 7 per 0.5 s at 3x: about 1.3 a window)."""
    with LimiterRelay("fixed-clock", 7, 0.5, extra=extra) as relay:
        out = probe(relay.url, ("steps",), limit=7, window_s=0.5, multipliers=(3.0,))
    assert out["accuracy"] < 0.9, out["steps"]


def test_retry_after_verdicts_on_their_boundaries() -> None:
    honest = {"present": True, "advertised_s": 1.0, "granularity_s": 1.0}
    honest |= {"honoured_retry_succeeds": True, "last_refusal_s": 0.02, "error_s": 0.97}
    assert judge_retry_after(honest) == {
        "too_short": False,
        "over_advertised": False,
        "correct": True,
    }
    assert judge_retry_after(honest | {"last_refusal_s": 1.2})["correct"] is False
    assert judge_retry_after(honest | {"honoured_retry_succeeds": False})["too_short"] is True
    precise = honest | {"granularity_s": 0.001, "error_s": 0.5}
    assert judge_retry_after(precise)["over_advertised"] is True
    assert judge_retry_after(honest | {"error_s": 2.0})["over_advertised"] is True


def test_round_window_takes_the_roundest_value_the_bounds_allow() -> None:
    assert round_window(1.013, 0.98, 1.03) == 1.0
    assert round_window(0.49, 0.47, 0.52) == 0.5
    assert round_window(1.52, 1.49, 1.55) == 1.5
    assert round_window(59.93, 59.8, 60.05) == 60.0
    assert round_window(1.013, 0.5, 1.5) == 1.013  # bounds too loose to choose


def test_only_traffic_the_rule_must_admit_counts_its_429s_as_failures() -> None:
    for label in ("ratelimit.discover", "ratelimit.step-1.5x", "ratelimit.step-1x"):
        assert refusal_expected(label), label
    for label in ("ratelimit.retry-after", "ratelimit.fairness-0", "ratelimit.retry-honour"):
        assert refusal_expected(label), label
    for label in ("ratelimit.step-0.5x", "ratelimit.fairness-1", "ratelimit.recovery-base"):
        assert not refusal_expected(label), label
    assert not refusal_expected("ratelimit.retry-honoured")
    assert not refusal_expected("chat.stream")


def test_prober_run_against_a_correct_limiter_exits_0_without_slo(tmp_path: Path) -> None:
    """The 429s the prober provokes on purpose are Locust successes of their own name."""
    rc, out, summary = run_locust(
        tmp_path,
        "RateLimitUser",
        "-t",
        "40s",
        "--rate-limit",
        "10/1s",
        "--rl-phases",
        "steps,retry_after",
        "--rl-steps",
        "0.5,3",
        "--rl-measure-windows",
        "1",
        "--csv",
        str(tmp_path / "stats"),
        timeout_s=90,
    )
    assert rc == 0, out[-3000:]
    rl = summary["rate_limit"]
    assert rl["rate_limited"] > 10 and rl["retry_after"]["correct"] is True
    with (tmp_path / "stats_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["ratelimit.expected_429"]["Request Count"]) == rl["rate_limited"]
    assert all(row["Failure Count"] == "0" for row in rows.values()), rows


def test_429s_to_traffic_the_rule_must_admit_stay_failures(tmp_path: Path) -> None:
    """Declared 28/1s, enforced 7/1s: the 0.5x step (14/s) is refused, and those 429s fail."""
    with LimiterRelay("fixed-clock", 7, 1.0) as relay:
        rc, out, summary = run_locust(
            tmp_path,
            "RateLimitUser",
            "--host",
            relay.url,
            "--relay-key",
            "sk-relaygate-limiter-0000",
            "-t",
            "30s",
            "--rate-limit",
            "28/1s",
            "--rl-phases",
            "steps",
            "--rl-steps",
            "0.5",
            "--rl-measure-windows",
            "1",
            "--csv",
            str(tmp_path / "stats"),
        )
    assert rc == 1, out[-3000:]
    assert summary["rate_limit"]["steps"][0]["rate_limited"] > 0
    with (tmp_path / "stats_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["ratelimit.step-0.5x"]["Failure Count"]) > 0
    assert "ratelimit.expected_429" not in rows
