"""Every request a user starts ends in exactly one outcome, reported once to our registry and
once to Locust: what the client returns, a ``client_exception`` when the client raised, or
``incomplete`` when the run ended (or Locust stopped the user) first. Error text is masked with
every key and header value of the run before it reaches Locust (its failure table,
``locust.html``, the CSVs)."""

from __future__ import annotations

import logging
import time
from typing import Any

from locust.env import Environment

from relaygate.keys import mask_secrets
from relaygate.load import outcomes
from relaygate.load.client import RequestResult
from relaygate.load.locust_options import run_secrets
from relaygate.load.locust_state import CHAT_PATH, NS_PER_MS, NS_PER_S, RunState, Started
from relaygate.load.metrics import record_result
from relaygate.load.prober import EXPECTED_429

__all__ = ["OutcomeError", "count_incomplete", "cut_off_text", "record_outcome", "report_result"]

logger = logging.getLogger("relaygate.load")


class OutcomeError(Exception):
    """What Locust shows in its failure table: the outcome class and the HTTP status."""


def report_result(
    environment: Environment,
    state: RunState,
    name: str,
    res: RequestResult,
    *,
    scope: str = "",
    expected: tuple[str, ...] = (),
) -> None:
    """Record into our registry and fire ONE Locust request event (e2e or time to answer).

    An outcome other than ``ok`` (and not in ``expected``) is a Locust failure whose text -
    it may quote the relay's error body, which can echo a key - is masked first. An expected
    429 (the prober's) is a success named ``EXPECTED_429``.
    """
    record_result(state.registry, res, scope=scope)
    end = res.t_end_ns or res.t_headers_ns or time.monotonic_ns()
    begin = res.t_sent_ns or res.t_start_ns
    exception = None
    if res.outcome == outcomes.RATE_LIMITED and res.outcome in expected:
        name = EXPECTED_429
    elif res.outcome != outcomes.OK and res.outcome not in expected:
        text = f"{res.outcome} (HTTP {res.status}): {res.error or ''}"
        secrets = run_secrets(environment.parsed_options) if environment.parsed_options else ()
        exception = OutcomeError(mask_secrets(text, *secrets)[:200])
    hooks: Any = environment.events  # Locust's EventHook is untyped
    hooks.request.fire(
        request_type="POST",
        name=name,
        response_time=(end - begin) / NS_PER_MS,
        response_length=res.bytes_received,
        exception=exception,
        context={"outcome": res.outcome},
        response=None,
        url=CHAT_PATH,
        start_time=time.time(),
    )


def record_outcome(
    environment: Environment, state: RunState, request: Started, outcome: str, error: str
) -> None:
    """Report a request that got no result from the client (cut off, or the client raised)."""
    res = RequestResult(
        outcome=outcome,
        t_intended_ns=request.t_intended_ns,
        t_start_ns=request.t_start_ns,
        t_end_ns=time.monotonic_ns(),
        error=error,
    )
    report_result(environment, state, request.name, res, scope=request.scope)


def count_incomplete(environment: Environment, state: RunState) -> int:
    """Report every request still in flight as ``incomplete``; returns how many."""
    started = state.in_flight.drain()
    for request in started:
        record_outcome(environment, state, request, outcomes.INCOMPLETE, cut_off_text(request))
    if started:
        logger.warning(
            "%d request(s) still in flight when the run ended: counted as incomplete "
            "(a stream longer than --stop-timeout, or a relay that never ends it)",
            len(started),
        )
    return len(started)


def cut_off_text(request: Started) -> str:
    running_s = (time.monotonic_ns() - request.t_start_ns) / NS_PER_S
    return f"still in flight after {running_s:.1f} s when the run ended"
