"""Per-key sliding-window rate limit (``N/Ws``) with exact Retry-After.

A sliding log: the admission times of the last requests in the window. A request is admitted
when fewer than N were admitted in the last W seconds; refused requests are not recorded, so
hammering a limited key does not push its window forward. The wait returned on refusal is the
time until enough old admissions leave the window, so a retry after it is admitted.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable

from relaygate.reference.config import RateLimit

__all__ = ["Decision", "SlidingWindowLimiter"]


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The limiter's answer for one request."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float

    def headers(self) -> dict[str, str]:
        """Retry-After (ceil seconds, >= 1) plus OpenAI's ms and x-ratelimit-* headers."""
        wait_s = max(self.retry_after_s, 0.001)
        return {
            "Retry-After": str(max(1, math.ceil(wait_s))),
            "retry-after-ms": str(math.ceil(wait_s * 1000)),
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": f"{wait_s:.3f}s",
        }


class SlidingWindowLimiter:
    """Admission log per key; ``clock`` is monotonic seconds (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._admitted: dict[object, collections.deque[float]] = {}

    def check(self, key: object, limit: RateLimit) -> Decision:
        """Admit (and record) or refuse one request for ``key``."""
        now = self._clock()
        log = self._admitted.setdefault(key, collections.deque())
        horizon = now - limit.window_s
        while log and log[0] <= horizon:
            log.popleft()
        if len(log) < limit.requests:
            log.append(now)
            return Decision(True, limit.requests, limit.requests - len(log), 0.0)
        # The admission that must leave the window before one more fits.
        blocking = log[len(log) - limit.requests]
        return Decision(False, limit.requests, 0, blocking + limit.window_s - now)
