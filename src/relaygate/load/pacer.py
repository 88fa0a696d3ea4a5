"""Open-loop pacing: a shared schedule of intended send times, constant or Poisson.

Locust users are a closed loop (each waits for its answer), so a slow relay slows the offered
load and hides its own slowness (coordinated omission). With ``--target-rps`` every user of a
process takes the next slot from one :class:`Pacer`, sleeps until it, and sends. Latency is
then also reported from the *intended* time (``ttft_intended_ms``, ``e2e_intended_ms``) and
the difference is the schedule lag. Run more users than the rate needs (spare users: rate x
e2e plus headroom); when all are busy, slots are taken late, the lag grows and the pacer
warns instead of silently lowering the rate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

__all__ = ["Pacer"]

_NS_PER_S = 1_000_000_000


class Pacer:
    """Hands out intended send times (monotonic ns) at ``rate_per_s``.

    ``mode`` is ``"constant"`` (evenly spaced) or ``"poisson"`` (exponential gaps with the
    same mean; independent per process, so the sum over processes is Poisson too).
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        mode: str = "constant",
        seed: int | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        late_warning_ms: float = 50.0,
    ) -> None:
        if mode not in ("constant", "poisson"):
            raise ValueError(f"pacing mode must be constant or poisson, got {mode!r}")
        self.mode = mode
        self.clock = clock
        self._random = random.Random(seed)
        self._next_ns: int | None = None
        self.rate_per_s = 0.0
        self.set_rate(rate_per_s)
        self.late_warning_ns = int(late_warning_ms * 1_000_000)
        self.claimed = 0
        self.late = 0
        self.max_late_ns = 0

    def set_rate(self, rate_per_s: float) -> None:
        """Change the rate from the next slot on (e.g. a process's share of the users)."""
        if rate_per_s < 0:
            raise ValueError(f"rate must be >= 0, got {rate_per_s}")
        self.rate_per_s = rate_per_s

    def claim(self) -> int | None:
        """The next intended send time, or None when the rate is 0 (nothing to send)."""
        if self.rate_per_s <= 0:
            self._next_ns = None
            return None
        now = self.clock()
        if self._next_ns is None:
            self._next_ns = now
        slot = self._next_ns
        mean_gap = _NS_PER_S / self.rate_per_s
        gap = self._random.expovariate(1.0) * mean_gap if self.mode == "poisson" else mean_gap
        self._next_ns = slot + int(gap)
        self.claimed += 1
        behind = now - slot
        if behind > self.late_warning_ns:
            # Every user was busy when this slot came due: the schedule is not being kept.
            self.late += 1
            self.max_late_ns = max(self.max_late_ns, behind)
        return slot

    def wait_s(self, slot_ns: int) -> float:
        """Seconds to sleep until ``slot_ns`` (0 when already due)."""
        return max(0.0, (slot_ns - self.clock()) / _NS_PER_S)
