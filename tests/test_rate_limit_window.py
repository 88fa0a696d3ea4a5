"""The rate-limit cases share one limited key: a window an earlier case filled is waited out
when short, and a case skips (not fails) when it is a per-minute window it cannot wait out."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from relaygate.cli.check import conformance_dir

#: Judges timing (rate-limit windows): under xdist it runs last and alone (conftest.py).
pytestmark = pytest.mark.serial


def _cases() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "relaygate_conformance_rate_limits", conformance_dir() / "test_rate_limits.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class _Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class _Relay:
    """A limited key: ``allowed`` requests per window, then 429 with ``retry_after``."""

    def __init__(self, allowed: int, retry_after: str | None) -> None:
        self.allowed, self.retry_after, self.used, self.sent = allowed, retry_after, 0, 0

    def chat(self, body: Any, key: str) -> _Answer:
        self.sent += 1
        if self.used < self.allowed:
            self.used += 1
            return _Answer(200)
        return _Answer(429, {"retry-after": self.retry_after} if self.retry_after else {})

    def new_window(self, _seconds: float) -> None:
        self.used = 0


def test_a_per_minute_window_filled_by_an_earlier_case_skips(monkeypatch) -> None:
    cases = _cases()
    relay = _Relay(allowed=2, retry_after="60")
    answers, refused = cases._until_429(relay, "sk-limited", "t1")
    assert [a.status for a in answers] == [200, 200, 429] and refused is not None
    # The next case finds the window still full: before, it failed "served before refused".
    monkeypatch.setattr(cases.time, "sleep", relay.new_window)
    with pytest.raises(pytest.skip.Exception, match="Retry-After 60 s"):
        cases._until_429(relay, "sk-limited", "t2")


@pytest.mark.parametrize("retry_after", ["1", None])
def test_a_short_window_filled_by_an_earlier_case_is_waited_out(monkeypatch, retry_after) -> None:
    cases = _cases()
    relay = _Relay(allowed=2, retry_after=retry_after)
    monkeypatch.setattr(cases.time, "sleep", relay.new_window)
    cases._until_429(relay, "sk-limited", "t1")
    answers, refused = cases._until_429(relay, "sk-limited", "t2")
    assert [a.status for a in answers] == [200, 200, 429] and refused is not None


def test_a_key_refused_from_its_first_request_still_fails_the_case() -> None:
    # No earlier case filled the window: a 429 at once is the relay's doing, not the run's.
    cases = _cases()
    relay = _Relay(allowed=0, retry_after="60")
    answers, refused = cases._until_429(relay, "sk-limited", "t1")
    assert [a.status for a in answers] == [429] and refused is not None
