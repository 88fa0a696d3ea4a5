"""Locust integration: what a locustfile imports - the user base class :class:`RelaygateUser`
and :func:`finish_prober` - and, on import, our event listeners.

This module and the ``locust_*`` modules it uses are the only ones of :mod:`relaygate.load`
that import Locust (and so gevent's monkey-patching); only the locustfiles under ``loadtests/``
import them. Importing this module registers the listeners on ``locust.events`` - the standard
Locust way, and idempotent because a module is imported once however many locustfiles use it.

The parts: :mod:`.locust_options` (our arguments, from :mod:`relaygate.options`),
:mod:`.locust_hooks` (the listeners and the end-of-run reports), :mod:`.locust_stack` (the
``--host`` preflight or the embedded stack), :mod:`.locust_outcomes` (one outcome per started
request), :mod:`.locust_state` (per-run state), :mod:`.locust_prober` (``RateLimitUser``'s
program).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import gevent
import orjson
from locust import User, events
from locust.exception import StopUser
from locust.user.task import LOCUST_STATE_STOPPING

from relaygate.directives import directive
from relaygate.keys import mask_secrets
from relaygate.load import outcomes
from relaygate.load.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_REQUEST_TIMEOUT_S,
    RequestResult,
    TimingClient,
)
from relaygate.load.geventio import cooperative
from relaygate.load.locust_hooks import register
from relaygate.load.locust_options import run_secrets
from relaygate.load.locust_outcomes import cut_off_text, record_outcome, report_result
from relaygate.load.locust_prober import finish_prober
from relaygate.load.locust_state import CHAT_PATH, NS_PER_MS, RunState, state_of
from relaygate.load.pacer import Pacer

__all__ = ["RelaygateUser", "RunState", "finish_prober", "state_of"]

logger = logging.getLogger("relaygate.load")

DEFAULT_MOCK = {"ttft_ms": 100.0, "itl_ms": 10.0, "chunks": 32}

# Registered at import, like any locustfile's listeners; the module is imported once.
register(events)


class RelaygateUser(User):
    """Base of the relaygate users: a :class:`TimingClient` and helpers. Not run itself."""

    abstract = True

    def stop(self, force: bool = False) -> bool:
        """Locust's ``User.stop``, with a second graceful stop of a user already stopping a
        no-op. A terminal's Ctrl-C in a ``--processes`` run reaches the workers twice (the
        signal itself and the master's quit); stock Locust then raised "Tried to stop User in
        an unexpected state: stopping. This should never happen." in a worker."""
        if not force and self._state == LOCUST_STATE_STOPPING:
            return False
        stopped: bool = super().stop(force)
        return stopped

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.options = options
        host = self.environment.host or self.host
        if not host:
            raise StopUser()
        self.client = self.timing_client(host)
        self.state = state_of(self.environment)
        self._stream_body: bytes | None = None

    def timing_client(self, base_url: str, **kwargs: Any) -> TimingClient:
        """A :class:`TimingClient` with the run's timeouts, byte cap, stamps and gevent fast
        path."""
        options = self.options
        kwargs.setdefault("timeout_s", options.stream_timeout if options else 120.0)
        kwargs.setdefault("headers", getattr(options, "relaygate_headers", None))
        kwargs.setdefault(
            "request_timeout_s", getattr(options, "request_timeout", DEFAULT_REQUEST_TIMEOUT_S)
        )
        kwargs.setdefault(
            "max_response_bytes",
            getattr(options, "max_response_bytes", None) or DEFAULT_MAX_RESPONSE_BYTES,
        )
        return TimingClient(
            base_url,
            kernel_stamps=getattr(options, "rx_stamps", "kernel") == "kernel",
            cooperative=cooperative,
            **kwargs,
        )

    def on_stop(self) -> None:
        for name in ("client", "direct_client"):
            client = getattr(self, name, None)
            if client is not None:
                client.close()

    # -- request building -----------------------------------------------------------------

    def use_directives(self) -> bool:
        options = self.options
        return bool(
            getattr(options, "relaygate_embedded", False)
            or options.mock_ttft_ms is not None
            or options.mock_itl_ms is not None
            or options.mock_output_tokens is not None
        )

    def chat_body(self, *, stream: bool = True, **extra_directive: Any) -> dict[str, Any]:
        options = self.options
        text = " ".join(["hello"] * max(1, options.prompt_tokens))
        if self.use_directives() or extra_directive:
            fields: dict[str, Any] = {}
            if self.use_directives():
                fields = {
                    "ttft_ms": _first(options.mock_ttft_ms, DEFAULT_MOCK["ttft_ms"]),
                    "itl_ms": _first(options.mock_itl_ms, DEFAULT_MOCK["itl_ms"]),
                    "chunks": _first(options.mock_output_tokens, DEFAULT_MOCK["chunks"]),
                    "stamp": "field",
                }
            fields.update(extra_directive)
            text = f"{text} {directive(**fields)}"
        body: dict[str, Any] = {
            "model": options.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": options.max_tokens,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.options.relay_key}"}

    # -- pacing ---------------------------------------------------------------------------

    def next_slot(self) -> int:
        """Closed loop: now. Open loop: sleep until this process's pacer's next slot."""
        options = self.options
        if not options.target_rps:
            return time.monotonic_ns()
        state = self.state
        if state.pacer is None:
            state.pacer = Pacer(options.target_rps, mode=options.arrival)
        runner = self.environment.runner
        total = getattr(options, "relaygate_users_total", None) or options.num_users or 1
        mine = getattr(runner, "target_user_count", None) or total
        state.pacer.set_rate(options.target_rps * min(1.0, mine / total))
        late_before = state.pacer.late
        slot = state.pacer.claim()
        if slot is None:
            gevent.sleep(0.1)
            return time.monotonic_ns()
        if state.pacer.late > late_before and state.pacer.late % 100 == 1:
            logger.warning(
                "pacer cannot keep --target-rps %.3g: slot %.1f ms late, all users busy; "
                "add users (-u) so that users > rate x e2e latency",
                options.target_rps,
                (time.monotonic_ns() - slot) / NS_PER_MS,
            )
        wait = state.pacer.wait_s(slot)
        if wait > 0:
            gevent.sleep(wait)
        return slot

    # -- reporting ------------------------------------------------------------------------

    def report(
        self, name: str, res: RequestResult, *, scope: str = "", expected: tuple[str, ...] = ()
    ) -> None:
        """:func:`report_result` for this user's environment."""
        report_result(self.environment, self.state, name, res, scope=scope, expected=expected)

    def timed(
        self,
        name: str,
        send: Callable[[], RequestResult],
        *,
        scope: str = "",
        t_intended_ns: int | None = None,
        expected: tuple[str, ...] = (),
    ) -> RequestResult:
        """Run ``send`` (one request) and report its outcome, whatever happens.

        The client raising is a ``client_exception`` (its message, masked); Locust killing
        the user mid-request (the run ended) is ``incomplete``; a request the run's end
        already counted (:func:`count_incomplete`) is not reported twice.
        """
        state = self.state
        token = state.in_flight.begin(name, scope, t_intended_ns)
        try:
            res = send()
        except gevent.GreenletExit:
            request = state.in_flight.end(token)
            if request is not None:
                record_outcome(
                    self.environment, state, request, outcomes.INCOMPLETE, cut_off_text(request)
                )
            raise
        except Exception as exc:  # every started request ends in an outcome class
            secrets = run_secrets(self.options)
            text = mask_secrets(f"{type(exc).__name__}: {exc}", *secrets)
            request = state.in_flight.end(token)
            if request is not None:
                trace = "".join(traceback.format_exception(exc))
                logger.debug("client exception in %s: %s", name, mask_secrets(trace, *secrets))
                record_outcome(self.environment, state, request, outcomes.CLIENT_EXCEPTION, text)
            return RequestResult(outcome=outcomes.CLIENT_EXCEPTION, error=text)
        if state.in_flight.end(token) is not None:
            self.report(name, res, scope=scope, expected=expected)
        return res

    def stream_chat(self, *, name: str = "chat.stream") -> RequestResult:
        slot = self.next_slot()
        body = self._stream_body
        if body is None:  # the same request every time: encode it once per user
            body = self._stream_body = orjson.dumps(self.chat_body())
        extra = {"max_tokens": self.options.max_tokens}
        res = self.timed(
            name,
            lambda: self.client.post_json(
                CHAT_PATH, body, self.auth(), stream=True, t_intended_ns=slot, **extra
            ),
            t_intended_ns=slot,
        )
        self._pause_after_refusal(res)
        return res

    def _pause_after_refusal(self, res: RequestResult) -> None:
        """Closed loop only: a refused connection fails in microseconds; without a pause a
        user would spin, flood the stats and starve the other users' timing."""
        if res.outcome == outcomes.CONNECTION_ERROR and not self.options.target_rps:
            gevent.sleep(0.1)

    def stream_direct(self, *, name: str = "direct.chat.stream") -> RequestResult | None:
        """The same stream sent straight to ``--upstream-url`` (scope ``direct.``)."""
        options = self.options
        direct = getattr(self, "direct_client", None)
        if direct is None:
            if not options.upstream_url:
                logger.error("RelayOverheadUser needs --upstream-url (or the embedded stack)")
                raise StopUser()
            direct = self.direct_client = self.timing_client(options.upstream_url, headers=None)
        slot = self.next_slot()
        extra = {"max_tokens": options.max_tokens}
        res = self.timed(
            name,
            lambda: direct.post_json(
                CHAT_PATH,
                self.chat_body(),
                self.auth(options.upstream_key),
                stream=True,
                t_intended_ns=slot,
                **extra,
            ),
            scope="direct.",
            t_intended_ns=slot,
        )
        self._pause_after_refusal(res)
        return res


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value
