"""The 429 prober (:mod:`relaygate.load.prober`) run by ``RateLimitUser``: its requests go
through the user's timing client and outcome reporting, its waits through gevent."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent
from locust.exception import StopUser
from locust.runners import WorkerRunner

from relaygate.load import outcomes
from relaygate.load.client import RequestResult
from relaygate.load.locust_hooks import PROBER_DONE
from relaygate.load.locust_state import CHAT_PATH, quit_soon, selected
from relaygate.load.prober import (
    PHASES,
    ProbeConfig,
    RateLimitProber,
    parse_rate_limit,
    refusal_expected,
)

if TYPE_CHECKING:
    from relaygate.load.locust_plugin import RelaygateUser

__all__ = ["GeventRuntime", "finish_prober", "run_prober"]

logger = logging.getLogger("relaygate.load")


class GeventRuntime:
    """:class:`relaygate.load.prober.Runtime` on gevent."""

    def spawn(self, fn: Any) -> Any:
        return gevent.spawn(fn)

    def sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)

    def join(self, handles: Any) -> None:
        gevent.joinall(list(handles))


def run_prober(user: RelaygateUser) -> dict[str, Any]:
    """The RateLimitUser program: run every phase once, store the analysis, end the run."""
    options = user.options
    first = options.rl_key or options.relay_key
    keys = [first] + [k.strip() for k in options.fairness_keys.split(",") if k.strip()]
    limit = window = None
    if options.rate_limit:
        limit, window = parse_rate_limit(options.rate_limit)
    phases = tuple(p.strip() for p in options.rl_phases.split(",") if p.strip())
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ValueError(f"--rl-phases: unknown {sorted(unknown)}; known: {', '.join(PHASES)}")
    client = user.timing_client(user.client.scheme + "://" + user.client.host_header, max_idle=512)

    def send(key: str, label: str, t_intended_ns: int, fields: dict[str, Any]) -> RequestResult:
        # A fast, tiny answer: the prober measures the limiter, not the upstream.
        body = user.chat_body(stream=False, chunks=1, ttft_ms=0, itl_ms=0, **fields)
        body["max_tokens"] = 1
        # A 429 the prober provokes on purpose is what it measures, not a Locust failure; a
        # 429 on traffic the limiter must admit (refusal_expected is False) stays one.
        return user.timed(
            label,
            lambda: client.post_json(
                CHAT_PATH, body, user.auth(key), stream=False, t_intended_ns=t_intended_ns
            ),
            scope="ratelimit.",
            t_intended_ns=t_intended_ns,
            expected=(outcomes.RATE_LIMITED,) if refusal_expected(label) else (),
        )

    def read_usage(key: str) -> float | None:
        res = client.get("/v1/dashboard/billing/usage", user.auth(key))
        data = res.json() if res.status == 200 else None
        if isinstance(data, dict) and isinstance(data.get("total_usage"), (int, float)):
            return float(data["total_usage"])
        return None

    config = ProbeConfig(
        keys=keys,
        limit=limit,
        window_s=window,
        phases=phases,
        measure_windows=options.rl_measure_windows,
        multipliers=tuple(float(m) for m in options.rl_steps.split(",") if m.strip()),
    )
    prober = RateLimitProber(config, send, GeventRuntime(), read_usage=read_usage, log=logger.info)

    def partial(analysis: dict[str, Any]) -> None:
        user.state.registry.extras["rate_limit_analysis"] = analysis

    try:
        return prober.run(on_progress=partial)
    finally:
        client.close()


def finish_prober(user: RelaygateUser) -> None:
    """Run the prober once, hand its analysis to the master, end the run if it was alone."""
    state = user.state
    try:
        state.registry.extras["rate_limit_analysis"] = run_prober(user)
    except ValueError as exc:
        logger.error("429 prober: %s", exc)
        state.registry.extras["rate_limit_analysis"] = {"error": str(exc)}
    runner = user.environment.runner
    if selected(user.environment) == {"RateLimitUser"}:
        if isinstance(runner, WorkerRunner):
            runner.send_message(PROBER_DONE, None)
        else:
            quit_soon(user.environment)
    raise StopUser()
