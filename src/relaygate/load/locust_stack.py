"""The relay a Locust run targets: the ``--host`` relay after its preflight, or - without
``--host`` - the embedded stack (mock upstream + reference relay), started at ``init`` on the
master/local runner and stopped last, at ``quit`` (or at exit when Locust never gets there).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
from typing import Any

from locust.env import Environment

from relaygate.directives import directive
from relaygate.keys import mask_key, mask_secrets
from relaygate.load.client import TimingClient
from relaygate.load.locust_options import run_secrets
from relaygate.load.locust_state import CHAT_PATH, RunState, selected, states

__all__ = ["DEFAULT_STACK_RATE_LIMIT", "preflight", "start_stack", "stop_stacks"]

logger = logging.getLogger("relaygate.load")

DEFAULT_STACK_RATE_LIMIT = "10/1s"


def preflight(host: str, options: Any) -> None:
    """An unreachable relay or a refused key is one line and exit 2 before any user starts,
    not a run of identical failures."""
    from relaygate.preflight import PreflightError, check_relay

    try:
        check_relay(
            host,
            options.relay_key or None,
            headers=options.relaygate_headers or None,
            url_option="--host",
        )
    except PreflightError as exc:
        line = str(exc)
        logger.error("%s", mask_secrets(line, *run_secrets(options)))
        raise SystemExit(2) from None


def start_stack(environment: Environment, state: RunState) -> None:
    """Start the embedded stack and point the run (host, keys, upstream) at it."""
    try:
        from relaygate.stack import EmbeddedStack
    except ImportError as exc:
        logger.error("no --host given and the embedded stack is unavailable (%s)", exc)
        raise SystemExit(2) from None
    options = environment.parsed_options
    assert options is not None
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per admin call
    rate_limit = options.rate_limit or None
    probing = "RateLimitUser" in selected(environment)
    if rate_limit is None and probing:
        rate_limit = options.rate_limit = DEFAULT_STACK_RATE_LIMIT
    faults = tuple(f.strip() for f in options.stack_faults.split(",") if f.strip())
    # With the prober, the limit goes on the prober's own keys only: other user classes of the
    # same run keep streaming unthrottled with the funded key (and never eat the prober's
    # budget). Without it, --rate-limit is the relay-wide per-key default.
    stack = EmbeddedStack(faults=faults, rate_limit=None if probing else rate_limit)
    info = stack.__enter__()
    state.stack = stack
    # Fallback for exits that skip Locust's quit event (e.g. an error during start-up).
    atexit.register(_stop_stack, state)
    environment.host = info.relay_url
    options.host = info.relay_url
    options.relay_key = options.relay_key or info.relay_key
    options.upstream_url = options.upstream_url or info.upstream_url
    options.upstream_key = options.upstream_key or info.upstream_key
    options.relaygate_embedded = True
    if probing:
        options.rl_key = options.rl_key or stack.new_key(rate_limit=rate_limit)
        if not options.fairness_keys:
            keys = (stack.new_key(rate_limit=rate_limit) for _ in range(3))
            options.fairness_keys = ",".join(keys)
    # A key of its own, so the warm-up never counts against the relay key's rate limit.
    _warm_up(info.relay_url, stack.new_key())
    logger.info(
        "embedded stack: relay %s, upstream %s, key %s, faults %s, rate limit %s",
        info.relay_url,
        info.upstream_url,
        mask_key(info.relay_key),
        faults or "none",
        rate_limit or "none",
    )


def _warm_up(relay_url: str, key: str) -> None:
    """One request through the fresh stack so one-time costs (imports, tokenizer loading in
    the mock) do not land in the first measured streams."""
    client = TimingClient(relay_url, timeout_s=30.0)
    try:
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"warm-up {directive(chunks=2)}"}],
            "stream": True,
        }
        client.post_json(CHAT_PATH, body, {"Authorization": f"Bearer {key}"})
    finally:
        client.close()


def stop_stacks(**_kwargs: Any) -> None:
    """``quit`` listener: stop the embedded stack last. ``quit`` fires after the runner
    stopped every user, so no user sees the relay vanish (``quitting`` comes before that,
    e.g. on Ctrl-C)."""
    for _environment, state in states():
        _stop_stack(state)


def _stop_stack(state: RunState) -> None:
    if state.stack is not None:
        stack, state.stack = state.stack, None
        with contextlib.suppress(Exception):
            stack.__exit__(None, None, None)
