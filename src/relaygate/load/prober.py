"""429 analysis: measure a relay's rate limiter from the outside.

:class:`RateLimitProber` runs a fixed program of phases against one relay key (plus extra
keys for fairness), in one process so every timestamp shares one clock. Each phase waits one
window first so the limiter starts empty. All traffic is open loop: request *i* of a phase
is due at ``start + i / rate`` and gets its own greenlet, so a slow 429 never slows the
offered load.

==================  ======================================================================
``discover``        burst until refused; hold the limiter saturated from its reopening until
                    N+1 got through: window W = first to (N+1)-th admission; after a
                    window of rest, a burst: limit N
``steps``           offered load at 0.5x, 1x, 1.5x, 3x the limit rate N/W; per step after
                    settling (a token bucket must drain): accepted rate vs what an exact
                    limiter admits (accuracy), 429 share, latency p50/p99 of 200s and of
                    429s separately
``retry_after``     saturate; retry before the advertised wait minus its granularity (must
                    still be 429), poll for the real reset (advertised - actual = error);
                    saturate again and retry right after ``Retry-After`` seconds (must
                    succeed); verdicts in :func:`judge_retry_after`
``recovery``        0.5x baseline, a 3x burst for one window, 0.5x again: seconds from the
                    burst's end until no more 429s, p99 latency before/after
``fairness``        one hot key at 3x, the others at 0.5x, at the same time: per-key accepted
                    rate normalised by min(offered, limit) and Jain's index over them
``retry_policies``  1.5x offered load with clients that never retry, honour Retry-After,
                    or back off exponentially ignoring it: attempts per logical request
                    (amplification) and success share
``billing``         when ``/v1/dashboard/billing/usage`` answers: cost of one accepted
                    request, then of a burst with 429s: were 429s billed?
==================  ======================================================================

The module is transport-agnostic: it gets a ``send`` callable and a :class:`Runtime` (gevent
under Locust), so it imports neither Locust nor gevent.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from relaygate.keys import mask_key, masked_repr
from relaygate.load import outcomes
from relaygate.load.client import RequestResult
from relaygate.load.histogram import Histogram

__all__ = [
    "EXPECTED_429",
    "PHASES",
    "ProbeConfig",
    "RateLimitProber",
    "Runtime",
    "fairness_label",
    "jain_index",
    "judge_retry_after",
    "parse_rate_limit",
    "refusal_expected",
    "retry_after_granularity_s",
    "retry_after_s",
    "round_window",
    "step_label",
    "step_stats",
]

PHASES = ("discover", "steps", "retry_after", "recovery", "fairness", "retry_policies", "billing")
MULTIPLIERS = (0.5, 1.0, 1.5, 3.0)
_NS = 1_000_000_000
TOO_SHORT_TOLERANCE_S = 0.005
"""Slack before a refusal after the advertised wait counts as proof (clock granularity)."""
OVER_ADVERTISED_MARGIN_S = 0.25
"""Beyond the header's granularity: polling and the 429's own latency blur the real reset."""
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$")


class Runtime(Protocol):
    """Concurrency primitives (gevent under Locust, threads in a plain process)."""

    def spawn(self, fn: Callable[[], None]) -> Any: ...

    def sleep(self, seconds: float) -> None: ...

    def join(self, handles: Iterable[Any]) -> None: ...


Send = Callable[[str, str, int, dict[str, Any]], RequestResult]
"""``send(key, label, t_intended_ns, directive_fields) -> RequestResult``."""


def parse_rate_limit(text: str) -> tuple[int, float]:
    """``"60/60s"`` -> ``(60, 60.0)``; units ms, s (default), m/min, h."""
    match = _RATE_RE.match(text)
    if not match:
        raise ValueError(f"rate limit {text!r} must look like N/Ws, e.g. 10/1s or 60/1m")
    count, amount, unit = int(match.group(1)), float(match.group(2)), match.group(3) or "s"
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}[unit]
    if count <= 0 or amount <= 0:
        raise ValueError(f"rate limit {text!r} needs N > 0 and W > 0")
    return count, amount * scale


def retry_after_s(headers: dict[str, str]) -> float | None:
    """The advertised wait: ``retry-after-ms`` when present (precise), else ``Retry-After``.

    ``Retry-After`` may also be an HTTP-date (RFC 9110 §10.2.3); that form is converted
    against the local wall clock.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


EXPECTED_429 = "ratelimit.expected_429"
"""The Locust request name a 429 the prober provoked on purpose is reported under, as a
success: refusing over-limit traffic is the limiter doing its job."""
_MUST_ADMIT = ("ratelimit.recovery-base", "ratelimit.retry-honoured")


def step_label(multiplier: float) -> str:
    """The label of the load step at ``multiplier`` x the limit rate."""
    return f"ratelimit.step-{multiplier:g}x"


def fairness_label(index: int) -> str:
    """The label of fairness key ``index``: 0 is the hot key, the others run below the limit."""
    return f"ratelimit.fairness-{index}"


def refusal_expected(label: str) -> bool:
    """Whether a 429 to a prober request labelled ``label`` was provoked on purpose.

    False where the rule says admit, so a 429 there breaks it and stays a failure: load
    below the limit (steps under 1x, the recovery baseline, the cold fairness keys) and a
    retry that waited the advertised ``Retry-After``.
    """
    if label in _MUST_ADMIT:
        return False
    if label.startswith("ratelimit.step-") and label.endswith("x"):
        try:
            return float(label[len("ratelimit.step-") : -1]) >= 1
        except ValueError:
            return True
    if label.startswith("ratelimit.fairness-"):
        return label == fairness_label(0)
    return label.startswith("ratelimit.")


def retry_after_granularity_s(headers: dict[str, str]) -> float:
    """The step the advertised wait is rounded to: 1 ms for ``retry-after-ms`` or a fractional
    ``Retry-After``, else 1 s (whole seconds, HTTP-date)."""
    if headers.get("retry-after-ms") is not None:
        return 0.001
    value = headers.get("retry-after", "").strip()
    return 0.001 if "." in value and value.replace(".", "", 1).isdigit() else 1.0


def judge_retry_after(seen: dict[str, Any]) -> dict[str, Any]:
    """Verdicts on what :meth:`RateLimitProber.retry_after` saw.

    ``too_short``: a request sent after the advertised wait was refused (the first cycle's
    polls, or the retry that honoured the second 429's wait). ``over_advertised``: the
    limiter reopened more than ``granularity + OVER_ADVERTISED_MARGIN_S`` (+5% of the
    advertised wait) before the advertised time: safe but it idles every client that obeys.
    ``correct``: present, not too short, and the honoured retry succeeded; an honest
    ``Retry-After`` rounded up to whole seconds is correct.
    """
    advertised = seen["advertised_s"]
    last_refusal = seen.get("last_refusal_s")
    too_short = bool(
        (last_refusal is not None and last_refusal > advertised + TOO_SHORT_TOLERANCE_S)
        or seen.get("honoured_retry_succeeds") is False
    )
    error = seen.get("error_s")
    allowed = seen["granularity_s"] + OVER_ADVERTISED_MARGIN_S + 0.05 * advertised
    return {
        "too_short": too_short,
        "over_advertised": None if error is None else error > allowed,
        "correct": bool(seen["present"] and not too_short and seen.get("honoured_retry_succeeds")),
    }


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1 = equal, 1/n = one takes all."""
    if not values:
        return None
    squares = sum(v * v for v in values)
    if squares == 0:
        return None
    return sum(values) ** 2 / (len(values) * squares)


def round_window(measured_s: float, low_s: float, high_s: float) -> float:
    """The roundest window inside the bounds a measurement allows, else the measurement.

    Limiters are configured in round numbers (1 s, 0.5 s, 60 s); the measured time between
    two admissions carries up to a poll interval plus a round trip at each end. Only tight
    bounds (within 20% of the measurement) are trusted to pick a value.
    """
    if not low_s <= measured_s <= high_s or high_s - low_s > 0.2 * measured_s:
        return measured_s
    for step in (3600.0, 60.0, 1.0, 0.1, 0.01, 0.001):
        value = round(measured_s / step) * step
        if value > 0 and low_s <= value <= high_s:
            return value
    return measured_s


def _latency_ms(res: RequestResult) -> float | None:
    end = res.t_end_ns or res.t_headers_ns
    if res.t_sent_ns is None or end is None:
        return None
    return (end - res.t_sent_ns) / 1e6


def _pcts(values: Iterable[float], qs: Sequence[float] = (50, 99)) -> dict[str, float | None]:
    hist = Histogram()
    hist.record_many(values)
    return {
        f"p{q:g}": (None if v is None else round(v, 3)) for q, v in hist.percentiles(qs).items()
    }


def step_stats(
    results: Sequence[RequestResult],
    t_from_ns: int,
    t_to_ns: int,
    offered_rps: float,
    limit_rps: float | None,
    *,
    limit: int | None = None,
) -> dict[str, Any]:
    """Accepted rate, accuracy, 429 share and latency split for requests sent in a window.

    ``accuracy`` is 1 when the accepted rate lies in what an exact limiter can produce, else
    1 - the relative distance to that range. The top is ``min(offered, limit rate)``. With
    ``limit`` (requests per window W) the bottom allows for discrete arrivals: a sliding log,
    or a fixed window that opens at a key's first request, frees a slot between two arrivals
    and fills it at the next, so it admits N per (W + one arrival gap), not N per W; and the
    span's edges cut one request.
    """
    window = [r for r in results if r.t_sent_ns is not None and t_from_ns <= r.t_sent_ns < t_to_ns]
    span_s = (t_to_ns - t_from_ns) / _NS
    accepted = [r for r in window if r.outcome == outcomes.OK]
    refused = [r for r in window if r.outcome == outcomes.RATE_LIMITED]
    accepted_rps = len(accepted) / span_s if span_s > 0 else 0.0
    out: dict[str, Any] = {
        "offered_rps": round(offered_rps, 3),
        "sent": len(window),
        "accepted_rps": round(accepted_rps, 3),
        "rate_limited": len(refused),
        "other_errors": len(window) - len(accepted) - len(refused),
        "rate_limited_share": round(len(refused) / len(window), 4) if window else None,
        "ok_ms": _pcts(v for r in accepted if (v := _latency_ms(r)) is not None),
        "rate_limited_ms": _pcts(v for r in refused if (v := _latency_ms(r)) is not None),
        "schedule_lag_ms": _pcts(((r.t_start_ns - r.t_intended_ns) / 1e6 for r in window), (99,)),
    }
    if limit_rps:
        expected = min(offered_rps, limit_rps)
        low = expected
        if limit and offered_rps > 0 and span_s > 0:
            window_s = limit / limit_rps
            low = min(offered_rps, limit / (window_s + 1 / offered_rps)) - 1 / span_s
            out["expected_min_rps"] = round(low, 3)
        out["expected_rps"] = round(expected, 3)
        miss = max(0.0, accepted_rps - expected, low - accepted_rps)
        out["accuracy"] = round(max(0.0, 1.0 - miss / expected), 4)
    return out


@masked_repr("keys")
@dataclasses.dataclass(slots=True)
class ProbeConfig:
    """What to probe. ``limit``/``window_s`` are the declared limit (None: discover it)."""

    keys: list[str]
    limit: int | None = None
    window_s: float | None = None
    phases: tuple[str, ...] = PHASES
    measure_windows: float = 2.0
    max_discovery_burst: int = 400
    max_wait_s: float = 130.0
    poll_interval_s: float = 0.01
    max_attempts: int = 5
    multipliers: tuple[float, ...] = MULTIPLIERS


class RateLimitProber:
    """Runs the phases of the module docstring; :meth:`run` returns the analysis dict."""

    def __init__(
        self,
        config: ProbeConfig,
        send: Send,
        runtime: Runtime,
        *,
        read_usage: Callable[[str], float | None] | None = None,
        log: Callable[[str], None] = lambda _msg: None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if not config.keys:
            raise ValueError("the prober needs at least one relay key")
        self.cfg = config
        self._send = send
        self.rt = runtime
        self._read_usage = read_usage
        self.log = log
        self.clock = clock
        self.all_results: list[RequestResult] = []
        self.header_limit: int | None = None

    # -- plumbing -------------------------------------------------------------------------

    def send(
        self, key: str, label: str, t_intended_ns: int | None = None, **fields: Any
    ) -> RequestResult:
        res = self._send(key, label, t_intended_ns or self.clock(), fields)
        self.all_results.append(res)
        limit = res.headers.get("x-ratelimit-limit-requests")
        if limit and limit.isdigit():
            self.header_limit = int(limit)
        return res

    def paced(self, rate_rps: float, duration_s: float, fn: Callable[[int], None]) -> int:
        """Call ``fn(slot_ns)`` in its own greenlet at each slot; returns the start time.

        Open loop: each request is spawned when due, however long earlier ones take.
        """
        # Every slot that falls inside the duration (a rounded count could drop the last one
        # and read as under-admission).
        count = max(1, math.ceil(rate_rps * duration_s - 1e-9))
        start: int = self.clock() + 5_000_000  # 5 ms: time to spawn the first greenlet
        handles = []
        for i in range(count):
            slot = start + int(i * _NS / rate_rps)
            wait = (slot - self.clock()) / _NS
            if wait > 0:
                self.rt.sleep(wait)
            handles.append(self.rt.spawn(functools.partial(fn, slot)))
        self.rt.join(handles)
        return start

    def open_loop(
        self, key: str, label: str, rate_rps: float, duration_s: float, **fields: Any
    ) -> tuple[list[RequestResult], int, int]:
        """Send at ``rate_rps`` for ``duration_s``; returns (results, start_ns, end_ns)."""
        results: list[RequestResult] = []

        def one(slot: int) -> None:
            results.append(self.send(key, label, slot, **fields))

        start = self.paced(rate_rps, duration_s, one)
        return results, start, start + int(duration_s * _NS)

    def burst(self, key: str, label: str, count: int, **fields: Any) -> list[RequestResult]:
        """``count`` requests at once."""
        results: list[RequestResult] = []
        now = self.clock()

        def one() -> None:
            results.append(self.send(key, label, now, **fields))

        self.rt.join([self.rt.spawn(one) for _ in range(count)])
        return results

    def poll_until_accepted(
        self, key: str, label: str, *, first_wait_s: float = 0.0
    ) -> RequestResult | None:
        """Poll (sequentially) until a 200; None after ``max_wait_s``."""
        deadline = self.clock() + int(self.cfg.max_wait_s * _NS)
        if first_wait_s > 0:
            self.rt.sleep(first_wait_s)
        interval = self.cfg.poll_interval_s
        started = self.clock()
        while self.clock() < deadline:
            res = self.send(key, label)
            if res.outcome == outcomes.OK:
                return res
            if res.outcome != outcomes.RATE_LIMITED:
                self.log(f"429 probe: unexpected {res.outcome} ({res.error}) while polling")
            # Poll finely for the first 5 s, then back off so a long window costs few calls.
            self.rt.sleep(interval if self.clock() - started < 5 * _NS else interval * 10)
        return None

    def _settle(self, window_s: float | None) -> None:
        self.rt.sleep(window_s if window_s else 1.0)

    # -- phases ---------------------------------------------------------------------------

    def run(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """All configured phases; ``on_progress`` gets the analysis so far after each phase
        (``"complete": False``), so a run that ends before the prober does still reports the
        phases it finished."""
        cfg = self.cfg

        def progress(out: dict[str, Any]) -> None:
            if on_progress is not None:
                snapshot = dict(out, complete=False)
                self._overall(snapshot)
                on_progress(snapshot)

        out: dict[str, Any] = {
            "declared": {"limit": cfg.limit, "window_s": cfg.window_s} if cfg.limit else None,
            "key": mask_key(cfg.keys[0]),
            "phases": list(cfg.phases),
        }
        limit, window = cfg.limit, cfg.window_s
        if "discover" in cfg.phases:
            out["discovered"] = self.discover()
            found = out["discovered"]
            progress(out)
            if limit is None and found.get("limit"):
                limit, window = found["limit"], found["window_s"]
        if not limit or not window:
            out["error"] = "no rate limit declared (--rate-limit) or discovered; phases skipped"
            out["complete"] = True
            self._overall(out)
            return out
        limit_rps = limit / window
        out["limit"] = {"requests": limit, "window_s": window, "rps": round(limit_rps, 4)}
        phases = [p for p in cfg.phases if p != "discover"]
        for phase in phases:
            self.log(f"429 probe: phase {phase}")
            self._settle(window)
            if phase == "steps":
                out["steps"] = self.steps(limit_rps, window)
                # At exactly 1x, admitting or refusing a request that arrives a hair early
                # are both correct, so 1x is reported but not part of the accuracy verdict.
                accuracies = [
                    s["accuracy"] for s in out["steps"] if "accuracy" in s and s["multiplier"] != 1
                ]
                out["accuracy"] = min(accuracies) if accuracies else None
            elif phase == "retry_after":
                out["retry_after"] = self.retry_after(limit, window)
            elif phase == "recovery":
                out["recovery"] = self.recovery(limit_rps, window)
            elif phase == "fairness":
                out["fairness"] = self.fairness(limit_rps, window)
            elif phase == "retry_policies":
                out["retry_policies"] = self.retry_policies(limit_rps, window)
            elif phase == "billing":
                out["billing"] = self.billing(limit)
            progress(out)
        out["complete"] = True
        self._overall(out)
        return out

    def _overall(self, out: dict[str, Any]) -> None:
        refused = [r for r in self.all_results if r.outcome == outcomes.RATE_LIMITED]
        accepted = [r for r in self.all_results if r.outcome == outcomes.OK]
        out["requests"] = len(self.all_results)
        out["rate_limited"] = len(refused)
        out["rate_limited_share"] = (
            round(len(refused) / len(self.all_results), 4) if self.all_results else None
        )
        out["retry_after_present_share"] = (
            round(sum("retry-after" in r.headers for r in refused) / len(refused), 4)
            if refused
            else None
        )
        out["rate_limited_ms"] = _pcts(v for r in refused if (v := _latency_ms(r)) is not None)
        out["ok_ms"] = _pcts(v for r in accepted if (v := _latency_ms(r)) is not None)
        out["header_limit"] = self.header_limit

    def discover(self) -> dict[str, Any]:
        """Limit N: a burst into a limiter left idle for a window. Window W: the time between
        the first admission after the limiter reopens and the (N+1)-th admission after it,
        with the limiter held saturated in between (:meth:`_hold_saturated`).

        That one definition holds for every common kind: a sliding log frees the reopening
        request's slot W later; a fixed window reopens at its end and admits N, the next
        window starts W later; a token bucket or GCRA admits one request per W/N.
        """
        key = self.cfg.keys[0]
        first_accepted, refused = self._exhaust(key, 8)
        if refused is not None and not first_accepted:
            return {"limit": None, "note": "every request of the first burst was refused"}
        if refused is None:
            return {
                "limit": None,
                "note": f"no 429 after {first_accepted} accepted requests in bursts",
            }
        hint = retry_after_s(refused.headers)
        limit = first_accepted
        cycle = self._hold_saturated(key, limit)
        if cycle is None:
            return {"limit": limit, "window_s": None, "note": "never accepted again"}
        # The first burst may have met a limiter that earlier traffic had partly used: the
        # exact count is a burst after a whole window of rest.
        self.rt.sleep(cycle["window_s"] * 1.1)
        confirmed, confirm_refused = self._exhaust(key, limit + 5)
        if confirm_refused is not None and confirmed and confirmed != limit:
            limit = confirmed
            cycle = self._hold_saturated(key, limit) or cycle
        return {
            "limit": limit,
            "first_burst_accepted": first_accepted,
            "window_s": cycle["window_s"],
            "window_measured_s": cycle["measured_s"],
            "window_bounds_s": cycle["bounds_s"],
            "reopened_with": cycle["reopened_with"],
            "header_limit": self.header_limit,
            "retry_after_hint_s": hint,
        }

    def _exhaust(self, key: str, size: int) -> tuple[int, RequestResult | None]:
        """Bursts of growing size until one is refused: (accepted count, first 429)."""
        accepted = 0
        while accepted < self.cfg.max_discovery_burst:
            results = self.burst(key, "ratelimit.discover", size)
            accepted += sum(r.outcome == outcomes.OK for r in results)
            refusals = [r for r in results if r.outcome == outcomes.RATE_LIMITED]
            if refusals:
                return accepted, min(refusals, key=lambda r: r.t_end_ns or 0)
            size = min(size * 2, self.cfg.max_discovery_burst - accepted)
            if size <= 0:
                break
        return accepted, None

    def _hold_saturated(self, key: str, limit: int) -> dict[str, Any] | None:
        """Poll an exhausted limiter; after each admission burst until refused again, so no
        capacity goes unused; stop at the (limit+1)-th admission since the first one.

        ``window_s`` is the elapsed time between those two admissions. The limiter reopened
        after the last refusal before each and before its answer, which bounds the window
        (``bounds_s``); the roundest value inside tight bounds is taken (a 1 s window
        measured as 1.013 s is 1 s), else the measurement.
        """
        label = "ratelimit.discover"
        admitted: list[RequestResult] = []
        # The refusals that exhausted it count too: the limiter may reopen before a poll.
        refused = [
            r for r in self.all_results[-(2 * limit + 8) :] if r.outcome == outcomes.RATE_LIMITED
        ]
        started = self.clock()
        deadline = started + int(self.cfg.max_wait_s * _NS)
        while len(admitted) <= limit:
            if self.clock() > deadline:
                return None
            res = self.send(key, label)
            if res.outcome == outcomes.OK:
                admitted.append(res)
                if len(admitted) <= limit:
                    # First reopening: a fixed window admits up to N at once; later ones
                    # (a bucket's next token, a log's next slot) few.
                    size = limit + 2 - len(admitted) if len(admitted) == 1 else 3
                    for r in self.burst(key, label, size):
                        (admitted if r.outcome == outcomes.OK else refused).append(r)
                continue
            if res.outcome == outcomes.RATE_LIMITED:
                refused.append(res)
            else:
                self.log(f"429 probe: unexpected {res.outcome} ({res.error}) while polling")
            fine = self.clock() - started < 5 * _NS
            self.rt.sleep(self.cfg.poll_interval_s * (1 if fine else 10))
        admitted.sort(key=lambda r: r.t_sent_ns or 0)
        first, last = admitted[0], admitted[limit]
        measured = ((last.t_sent_ns or 0) - (first.t_sent_ns or 0)) / _NS
        # Sound bounds need stamps on the right side of the limiter's decision: a request
        # is decided after its t_start (t_sent is read after sendall returns) and before
        # its t_end. A refusal that ended before an admission started was decided first.
        before_first = [
            r.t_start_ns for r in refused if r.t_end_ns and r.t_end_ns <= first.t_start_ns
        ]
        before_last = [
            r.t_start_ns for r in refused if r.t_end_ns and r.t_end_ns <= last.t_start_ns
        ]
        bounds: list[float] | None = None
        window = measured
        if before_first and before_last and first.t_end_ns and last.t_end_ns:
            low = (max(before_last) - first.t_end_ns) / _NS
            high = (last.t_end_ns - max(before_first)) / _NS
            bounds = [round(low, 4), round(high, 4)]
            window = round_window(measured, low, high)
        reopened_with = sum(
            1
            for r in admitted
            if (r.t_sent_ns or 0) - (first.t_sent_ns or 0) < 0.05 * measured * _NS
        )
        return {
            "window_s": round(window, 4),
            "measured_s": round(measured, 4),
            "bounds_s": bounds,
            "reopened_with": reopened_with,
        }

    def steps(self, limit_rps: float, window_s: float) -> list[dict[str, Any]]:
        key = self.cfg.keys[0]
        limit = round(limit_rps * window_s)
        measure_s = max(self.cfg.measure_windows * window_s, 1.0)
        out = []
        for mult in self.cfg.multipliers:
            rate = limit_rps * mult
            label = step_label(mult)
            # A token bucket starts full and drains at (offered - limit): it has to be empty
            # before the measurement, or its burst reads as over-admission.
            settle_s = window_s * (min(4.0, max(1.0, 1 / (mult - 1))) if mult > 1 else 1.0)
            results, start, end = self.open_loop(key, label, rate, settle_s + measure_s)
            stats = step_stats(
                results, start + int(settle_s * _NS), end, rate, limit_rps, limit=limit
            )
            stats["settle_s"] = round(settle_s, 3)
            out.append({"multiplier": mult, **stats})
            self.log(
                f"429 probe: {mult:g}x offered {rate:.2f}/s accepted {stats['accepted_rps']:.2f}/s "
                f"(limit {limit_rps:.2f}/s) 429 share {stats['rate_limited_share']}"
            )
        return out

    def _saturate(self, limit: int, label: str) -> tuple[RequestResult | None, list[RequestResult]]:
        """A burst of limit + 3: (the last 429 of it or None, every result)."""
        results = self.burst(self.cfg.keys[0], label, limit + 3)
        refusals = [r for r in results if r.outcome == outcomes.RATE_LIMITED]
        last = max(refusals, key=lambda r: r.t_end_ns or 0) if refusals else None
        return last, results

    def retry_after(self, limit: int, window_s: float | None = None) -> dict[str, Any]:
        """Judge the advertised wait against the real reset (module docstring, verdicts in
        :func:`judge_retry_after`)."""
        key = self.cfg.keys[0]
        out: dict[str, Any] = {}
        refused, burst = self._saturate(limit, "ratelimit.retry-after")
        if refused is None or refused.t_end_ns is None:
            answered = [r for r in burst if r.status is not None]
            if len(answered) < len(burst):
                # Requests that got no answer say nothing about the limiter: not its verdict.
                return {
                    "error": f"a burst of {limit + 3} got only {len(answered)} answers "
                    f"({len(burst) - len(answered)} transport errors): not measured",
                    "correct": None,
                }
            return {"error": f"a burst of {limit + 3} was not refused", "correct": False}
        header = refused.headers.get("retry-after")
        out["header"] = header
        out["header_ms"] = refused.headers.get("retry-after-ms")
        advertised = retry_after_s(refused.headers)
        out["present"] = header is not None
        out["advertised_s"] = advertised
        header_s = retry_after_s({"retry-after": header}) if header is not None else None
        if advertised is None:
            out["correct"] = False
            return out
        granularity = retry_after_granularity_s(refused.headers)
        out["granularity_s"] = granularity
        # The real reset may come up to one granularity step before the advertised time, so
        # only a retry before (advertised - granularity) is sure to be early.
        self.rt.sleep(max(0.0, advertised - granularity) / 2)
        early = self.send(key, "ratelimit.retry-early")
        out["early_retry_status"] = early.status
        out["early_retry_refused"] = early.outcome == outcomes.RATE_LIMITED
        polls_from = len(self.all_results)
        reopened = self.poll_until_accepted(key, "ratelimit.retry-poll")
        # A refusal of a request started after the advertised time proves the wait too short
        # (t_start precedes the limiter's decision; t_sent, read after sendall, may not).
        late = [
            (r.t_start_ns - refused.t_end_ns) / _NS
            for r in [early, *self.all_results[polls_from:]]
            if r.outcome == outcomes.RATE_LIMITED
        ]
        out["last_refusal_s"] = round(max(late), 4) if late else None
        if reopened is not None and reopened.t_sent_ns is not None:
            actual = (reopened.t_sent_ns - refused.t_end_ns) / _NS
            out["actual_reset_s"] = round(actual, 4)
            out["error_s"] = round(advertised - actual, 4)  # > 0: advertised later than needed
            if header_s is not None:
                out["header_error_s"] = round(header_s - actual, 4)
        # Second cycle: a client that waits exactly the advertised seconds must get through.
        self._settle(window_s or self.cfg.window_s or advertised)
        refused2, _ = self._saturate(limit, "ratelimit.retry-after")
        if refused2 is not None:
            wait = retry_after_s(refused2.headers)
            if wait is not None:
                self.rt.sleep(wait + 0.01)
                after = self.send(key, "ratelimit.retry-honoured")
                out["honoured_retry_status"] = after.status
                out["honoured_retry_succeeds"] = after.outcome == outcomes.OK
        out.update(judge_retry_after(out))
        return out

    def recovery(self, limit_rps: float, window_s: float) -> dict[str, Any]:
        key = self.cfg.keys[0]
        base, _, _ = self.open_loop(key, "ratelimit.recovery-base", limit_rps * 0.5, window_s)
        _, _, burst_end = self.open_loop(key, "ratelimit.recovery-burst", limit_rps * 3, window_s)
        after, _, _ = self.open_loop(key, "ratelimit.recovery-after", limit_rps * 0.5, 2 * window_s)
        after.sort(key=lambda r: r.t_sent_ns or 0)
        last_refused = max(
            (i for i, r in enumerate(after) if r.outcome == outcomes.RATE_LIMITED), default=-1
        )
        if last_refused + 1 < len(after):
            first_clean = after[last_refused + 1].t_sent_ns or burst_end
            recovery_s: float | None = max(0.0, (first_clean - burst_end) / _NS)
        else:
            recovery_s = None  # still refusing at the end of the phase
        ok_after = [r for r in after[last_refused + 1 :] if r.outcome == outcomes.OK]
        return {
            "recovery_s": None if recovery_s is None else round(recovery_s, 4),
            "rate_limited_after_burst": last_refused + 1,
            "baseline_ok_ms": _pcts(
                v for r in base if r.outcome == outcomes.OK and (v := _latency_ms(r)) is not None
            ),
            "after_ok_ms": _pcts(v for r in ok_after if (v := _latency_ms(r)) is not None),
        }

    def fairness(self, limit_rps: float, window_s: float) -> dict[str, Any]:
        keys = self.cfg.keys
        limit = round(limit_rps * window_s)
        if len(keys) < 2:
            return {"skipped": "needs 2+ keys (--fairness-keys, or the embedded stack)"}
        measure_s = max(self.cfg.measure_windows * window_s, 1.0)
        rates = [limit_rps * 3] + [limit_rps * 0.5] * (len(keys) - 1)
        runs: dict[int, tuple[list[RequestResult], int, int]] = {}

        def drive(i: int) -> None:
            runs[i] = self.open_loop(keys[i], fairness_label(i), rates[i], window_s + measure_s)

        self.rt.join([self.rt.spawn(functools.partial(drive, i)) for i in range(len(keys))])
        per_key = []
        for i, key in enumerate(keys):
            results, start, end = runs[i]
            stats = step_stats(
                results, start + int(window_s * _NS), end, rates[i], limit_rps, limit=limit
            )
            expected = stats.get("expected_rps") or 1.0
            per_key.append(
                {
                    "key": mask_key(key),
                    "role": "hot" if i == 0 else "cold",
                    "offered_rps": stats["offered_rps"],
                    "accepted_rps": stats["accepted_rps"],
                    "normalized": round(stats["accepted_rps"] / expected, 4),
                    "ok_p99_ms": stats["ok_ms"]["p99"],
                    "rate_limited_share": stats["rate_limited_share"],
                }
            )
        jain = jain_index([k["normalized"] for k in per_key])
        return {"keys": per_key, "jain_index": None if jain is None else round(jain, 4)}

    def retry_policies(self, limit_rps: float, window_s: float) -> dict[str, Any]:
        key = self.cfg.keys[0]
        measure_s = max(self.cfg.measure_windows * window_s, 1.0)
        out: dict[str, Any] = {}
        for policy in ("none", "honour", "exponential"):
            self._settle(window_s)
            logical: list[tuple[int, bool, float]] = []  # attempts, succeeded, seconds
            self.paced(
                limit_rps * 1.5,
                measure_s,
                functools.partial(self._with_policy, key, policy, logical),
            )
            attempts = sum(a for a, _, _ in logical)
            succeeded = sum(1 for _, ok, _ in logical if ok)
            out[policy] = {
                "logical_requests": len(logical),
                "attempts": attempts,
                "succeeded": succeeded,
                "amplification": round(attempts / len(logical), 3) if logical else None,
                "attempts_per_success": round(attempts / succeeded, 3) if succeeded else None,
                "success_share": round(succeeded / len(logical), 4) if logical else None,
                "completion_s": _pcts((s for _, ok, s in logical if ok), (50, 99)),
            }
        return out

    def _with_policy(
        self, key: str, policy: str, into: list[tuple[int, bool, float]], slot: int
    ) -> None:
        into.append(self._attempts(key, policy, slot))

    def _attempts(self, key: str, policy: str, slot: int) -> tuple[int, bool, float]:
        """One logical request under a retry policy: (attempts, succeeded, seconds)."""
        attempts = 0
        while True:
            res = self.send(key, f"ratelimit.retry-{policy}", slot if attempts == 0 else None)
            attempts += 1
            if res.outcome == outcomes.OK:
                return attempts, True, (self.clock() - slot) / _NS
            if res.outcome != outcomes.RATE_LIMITED or attempts >= self.cfg.max_attempts:
                return attempts, False, (self.clock() - slot) / _NS
            if policy == "none":
                return attempts, False, (self.clock() - slot) / _NS
            if policy == "honour":
                wait = retry_after_s(res.headers)
                self.rt.sleep(1.0 if wait is None else wait)
            else:  # naive exponential backoff that ignores the server's hint
                self.rt.sleep(0.1 * 2 ** (attempts - 1))

    def billing(self, limit: int) -> dict[str, Any]:
        if self._read_usage is None:
            return {"readable": False}
        key = self.cfg.keys[0]
        before = self._read_usage(key)
        if before is None:
            return {"readable": False, "note": "GET /v1/dashboard/billing/usage did not answer"}
        costly = {"usage": "1000/1000"}
        first = self.send(key, "ratelimit.billing", None, **costly)
        if first.outcome != outcomes.OK:
            first_ok = self.poll_until_accepted(key, "ratelimit.billing")
            if first_ok is None:
                return {"readable": True, "note": "no request accepted"}
        self.rt.sleep(0.3)  # relays may bill asynchronously
        one = self._read_usage(key)
        if one is None:
            return {"readable": False}
        unit = one - before
        self._settle(self.cfg.window_s)
        results = self.burst(key, "ratelimit.billing", limit * 2, **costly)
        self.rt.sleep(0.5)
        after = self._read_usage(key)
        if after is None:
            return {"readable": False}
        accepted = sum(r.outcome == outcomes.OK for r in results)
        refused = sum(r.outcome == outcomes.RATE_LIMITED for r in results)
        out: dict[str, Any] = {
            "readable": True,
            "unit_cost_cents": round(unit, 6),
            "burst_accepted": accepted,
            "burst_rate_limited": refused,
            "burst_cost_cents": round(after - one, 6),
        }
        if unit > 0 and refused:
            billed = ((after - one) - accepted * unit) / (refused * unit)
            out["billed_per_rate_limited"] = round(billed, 4)
            out["rate_limited_billed"] = billed > 0.5
        elif unit <= 0:
            out["note"] = "an accepted request cost 0: cannot tell"
        return out


def summarize_stream_429s(
    rate_limited: int, total: int, retry_after_present: int, hist: Histogram | None
) -> dict[str, Any]:
    """The ``rate_limit`` block of a run without the prober: what the 429s looked like."""
    return {
        "rate_limited": rate_limited,
        "rate_limited_share": round(rate_limited / total, 4) if total else None,
        "retry_after_present_share": (
            round(retry_after_present / rate_limited, 4) if rate_limited else None
        ),
        "rate_limited_ms": hist.summary((50, 99)) if hist is not None and hist.count else None,
    }
