"""The 429 prober's verdicts on synthetic answers (no network): a burst that got no answers is
"not measured", never "the limiter did not refuse"."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from relaygate.load import outcomes
from relaygate.load.client import RequestResult
from relaygate.load.ratelimit import ProbeConfig, RateLimitProber


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
