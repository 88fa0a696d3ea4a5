"""Locust integration: arguments, event listeners and the user base class.

This is the only module of :mod:`relaygate.load` that imports Locust (and so gevent's
monkey-patching); only the locustfiles under ``loadtests/`` import it. Importing it registers
the listeners below on ``locust.events`` - the standard Locust way, and idempotent because a
module is imported once however many locustfiles use it.

What happens when:

``init_command_line_parser``  our ``--relay-key``, ``--slo``, … (each with an env var; key
                              options secret in the web UI, which binds 127.0.0.1 by default)
``init``                      parse ``--slo`` (fail fast); pick ``StreamingChatUser`` when no
                              class is named; on the master/local runner only: preflight the
                              ``--host`` relay and key (exit 2 with one line when unusable), or
                              start the embedded stack when there is no ``--host``
``test_stop``                 every request still in flight is counted ``incomplete``
``report_to_master``          (worker) attach the registry delta
``worker_report``             (master) merge it
``quitting``                  (master/local) summary, CSV, plots, SLO lines, exit code, stack

Every request a user starts ends in exactly one outcome: what the client returns, a
``client_exception`` when the client raised, or ``incomplete`` when the run ended (or Locust
stopped the user) first. Error text is masked with every key and header value of the run
before it reaches Locust (its failure table, ``locust.html``, the CSVs).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import itertools
import logging
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import gevent
import orjson
from locust import User, events
from locust import log as locust_log
from locust import stats as locust_stats
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from relaygate.directives import directive
from relaygate.keys import mask_key, mask_secrets
from relaygate.load import outcomes, selfcheck, slo
from relaygate.load.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_REQUEST_TIMEOUT_S,
    RequestResult,
    TimingClient,
)
from relaygate.load.geventio import cooperative
from relaygate.load.metrics import Registry, record_result
from relaygate.load.pacer import Pacer
from relaygate.load.prober import (
    EXPECTED_429,
    PHASES,
    ProbeConfig,
    RateLimitProber,
    parse_rate_limit,
    refusal_expected,
)
from relaygate.load.summary import build_summary, format_table, write_metrics_csv, write_summary
from relaygate.suite.target import parse_header_lines

__all__ = ["RelaygateUser", "RunState", "state_of"]

logger = logging.getLogger("relaygate.load")

CHAT_PATH = "/v1/chat/completions"
DEFAULT_STACK_RATE_LIMIT = "10/1s"
DEFAULT_MOCK = {"ttft_ms": 100.0, "itl_ms": 10.0, "chunks": 32}
PROBER_DONE = "relaygate_prober_done"
GC_THRESHOLDS = (50_000, 20, 20)
# Locust kills users at the end of -t by default, cutting every stream in flight; they would
# all count as `incomplete`. This long, a stream may finish first (`--stop-timeout`).
DEFAULT_STOP_TIMEOUT_S = 10
_NS_PER_MS = 1_000_000.0
_NS_PER_S = 1_000_000_000

# The load client's total deadline and byte cap per request (issue #10). Until that client
# change is merged into this branch, its constants and parameters may be missing: the
# defaults below are its values, and a parameter it does not take is not passed.


class RunState:
    """Per-Environment state: the registry, the pacer, the embedded stack, timings."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.pacer: Pacer | None = None
        self.rules: list[slo.SLORule] = []
        self.stack: Any = None
        self.started_wall: float | None = None
        self.stopped_wall: float | None = None
        self.selfcheck_started = False
        self.running = True
        self.written = False
        self.in_flight = InFlight()


@dataclasses.dataclass(frozen=True, slots=True)
class Started:
    """A request that was started and has no outcome yet."""

    name: str
    scope: str
    t_intended_ns: int
    t_start_ns: int


class InFlight:
    """Requests started and not yet reported, so that the ones a run's end cuts off are
    counted (``incomplete``) instead of vanishing. Each ends exactly once: whoever calls
    :meth:`end` or :meth:`drain` first reports it."""

    def __init__(self) -> None:
        self._open: dict[int, Started] = {}
        self._tokens = itertools.count()

    def begin(self, name: str, scope: str, t_intended_ns: int | None = None) -> int:
        now = time.monotonic_ns()
        token = next(self._tokens)
        self._open[token] = Started(name, scope, t_intended_ns or now, now)
        return token

    def end(self, token: int) -> Started | None:
        """The request, if it was still open (then the caller reports its outcome)."""
        return self._open.pop(token, None)

    def drain(self) -> list[Started]:
        """Every open request, now closed."""
        started = list(self._open.values())
        self._open.clear()
        return started

    def __len__(self) -> int:
        return len(self._open)


_STATES: weakref.WeakKeyDictionary[Environment, RunState] = weakref.WeakKeyDictionary()


def state_of(environment: Environment) -> RunState:
    state = _STATES.get(environment)
    if state is None:
        state = _STATES[environment] = RunState()
    return state


# -- arguments ---------------------------------------------------------------------------


def _add_arguments(parser: Any) -> None:
    # Locust's web UI listens on every interface by default and shows the run (host, failure
    # texts) to anyone who can reach it: loopback unless --web-host (or LOCUST_WEB_HOST) says
    # otherwise. Streams in flight at the end of -t get time to finish (see the constant).
    parser.set_defaults(web_host="127.0.0.1", stop_timeout=DEFAULT_STOP_TIMEOUT_S)
    group = parser.add_argument_group("relaygate", "relaygate load scenarios (docs/load.md)")
    arg = group.add_argument

    def secret(*args: Any, **kwargs: Any) -> None:
        # Locust's web-UI flags, set by hand: its parser's add_argument takes them as keywords,
        # a group's does not. Never offered in the web UI's form, a password field if it were.
        action = arg(*args, **kwargs)
        action.include_in_web_ui = False
        action.is_secret = True

    secret(
        "--relay-key",
        env_var="RELAYGATE_RELAY_KEY",
        default="",
        help="API key for the relay (default with no --host: the embedded stack's key)",
    )
    secret(
        "--relay-header",
        env_var="RELAYGATE_RELAY_HEADERS",
        action="append",
        default=[],
        help="repeatable 'Name: value' sent on every request to the relay (e.g. a gateway's "
        "routing headers); the env var takes newline- or ';'-separated lines",
    )
    arg(
        "--model",
        env_var="RELAYGATE_MODEL",
        default="gpt-4o-mini",
        help="model name sent in every request",
    )
    arg(
        "--prompt-tokens",
        env_var="RELAYGATE_PROMPT_TOKENS",
        type=int,
        default=64,
        help="approximate prompt length in tokens (synthetic text)",
    )
    arg(
        "--max-tokens",
        env_var="RELAYGATE_MAX_TOKENS",
        type=int,
        default=128,
        help="max_tokens of every request",
    )
    arg(
        "--mock-ttft-ms",
        env_var="RELAYGATE_MOCK_TTFT_MS",
        type=float,
        default=None,
        help="directive to the mock upstream: arrival -> first content event (ms)",
    )
    arg(
        "--mock-itl-ms",
        env_var="RELAYGATE_MOCK_ITL_MS",
        type=float,
        default=None,
        help="directive to the mock upstream: gap between content events (ms)",
    )
    arg(
        "--mock-output-tokens",
        env_var="RELAYGATE_MOCK_OUTPUT_TOKENS",
        type=int,
        default=None,
        help="directive to the mock upstream: number of content events (one token each)",
    )
    arg(
        "--target-rps",
        env_var="RELAYGATE_TARGET_RPS",
        type=float,
        default=None,
        help="open loop: total requests/s over all users and processes (spare users needed)",
    )
    arg(
        "--arrival",
        env_var="RELAYGATE_ARRIVAL",
        choices=("constant", "poisson"),
        default="constant",
        help="open-loop arrival process for --target-rps",
    )
    arg(
        "--slo",
        env_var="RELAYGATE_SLO",
        action="append",
        default=[],
        help="repeatable SLO gate, e.g. ttft_p95_ms<=500, error_rate<=0.01, "
        "rate_limit_accuracy>=0.9; any failure makes the exit code 1",
    )
    arg(
        "--report-dir",
        env_var="RELAYGATE_REPORT_DIR",
        default="reports",
        help="where load-summary.json, load-metrics.csv and the PNG plots go",
    )
    arg(
        "--no-plots",
        env_var="RELAYGATE_NO_PLOTS",
        action="store_true",
        default=False,
        help="skip the PNG plots (saves the matplotlib import)",
    )
    arg(
        "--stream-timeout",
        env_var="RELAYGATE_STREAM_TIMEOUT",
        type=float,
        default=120.0,
        help="seconds without a byte before a request counts as timeout",
    )
    arg(
        "--request-timeout",
        env_var="RELAYGATE_REQUEST_TIMEOUT",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help="total seconds per request, connect to last byte, before it counts as "
        f"request_timeout (a stream that drips forever; default {DEFAULT_REQUEST_TIMEOUT_S:g})",
    )
    arg(
        "--max-response-bytes",
        env_var="RELAYGATE_MAX_RESPONSE_BYTES",
        type=int,
        default=DEFAULT_MAX_RESPONSE_BYTES,
        help="byte cap per response (head and body) before it counts as oversize "
        f"(default {DEFAULT_MAX_RESPONSE_BYTES})",
    )
    arg(
        "--rx-stamps",
        env_var="RELAYGATE_RX_STAMPS",
        choices=("kernel", "user"),
        default="kernel",
        help="arrival time of received bytes: the kernel's receive stamp (SO_TIMESTAMPNS, "
        "plain HTTP on Linux; default) or when recv() returned in the client",
    )
    arg(
        "--upstream-url",
        env_var="RELAYGATE_UPSTREAM_URL",
        default="",
        help="RelayOverheadUser: the relay's upstream, called directly for comparison",
    )
    secret(
        "--upstream-key",
        env_var="RELAYGATE_UPSTREAM_KEY",
        default="",
        help="RelayOverheadUser: API key for --upstream-url",
    )
    arg(
        "--rate-limit",
        env_var="RELAYGATE_RATE_LIMIT",
        default="",
        help="declared per-key limit N/Ws (e.g. 10/1s) for the 429 analysis; also applied "
        f"to the embedded stack (default there for RateLimitUser: {DEFAULT_STACK_RATE_LIMIT})",
    )
    arg(
        "--rl-phases",
        env_var="RELAYGATE_RL_PHASES",
        default=",".join(PHASES),
        help=f"RateLimitUser phases, comma list of: {', '.join(PHASES)}",
    )
    arg(
        "--rl-measure-windows",
        env_var="RELAYGATE_RL_MEASURE_WINDOWS",
        type=float,
        default=2.0,
        help="RateLimitUser: measured windows per offered-load step",
    )
    arg(
        "--rl-steps",
        env_var="RELAYGATE_RL_STEPS",
        default="0.5,1,1.5,3",
        help="RateLimitUser: offered load per step as multiples of the limit rate",
    )
    secret(
        "--rl-key",
        env_var="RELAYGATE_RL_KEY",
        default="",
        help="RateLimitUser: the prober's key (default --relay-key); give it a key of its own "
        "when other user classes run alongside (the embedded stack does)",
    )
    secret(
        "--fairness-keys",
        env_var="RELAYGATE_FAIRNESS_KEYS",
        default="",
        help="extra relay keys (comma list) for the fairness phase; the embedded stack "
        "provisions 3 when empty",
    )
    arg(
        "--stack-faults",
        env_var="RELAYGATE_STACK_FAULTS",
        default="",
        help="embedded stack only: reference-relay fault switches, comma list "
        "(e.g. buffer_streams, ignore_rate_limit)",
    )


# -- lifecycle ---------------------------------------------------------------------------


def _is_worker(environment: Environment) -> bool:
    return isinstance(environment.runner, WorkerRunner)


def _controls_run(environment: Environment) -> bool:
    return isinstance(environment.runner, (MasterRunner, LocalRunner))


def _on_init(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None:  # Environment built by hand (tests, run_single_user without args)
        return
    state = state_of(environment)
    try:
        state.rules = [slo.parse_rule(text) for text in options.slo]
        if options.rate_limit:
            parse_rate_limit(options.rate_limit)
        options.relaygate_headers = parse_header_lines(options.relay_header)
    except ValueError as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from None
    _default_user_classes(environment)
    if _controls_run(environment):
        options.relaygate_users_total = options.num_users or 1
        if not environment.host and not options.host:
            _start_stack(environment, state)
        else:
            _preflight(environment.host or options.host, options)
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(PROBER_DONE, lambda *_a, **_k: _quit_soon(environment))
    if environment.web_ui is not None and _controls_run(environment):
        from relaygate.load import webui

        webui.install(environment.web_ui, lambda: state.registry, lambda: run_secrets(options))


def _preflight(host: str, options: Any) -> None:
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


def run_secrets(options: Any) -> tuple[str, ...]:
    """Every key and key-carrying header value of the run: masked wherever text leaves."""
    values = [options.relay_key, options.rl_key, options.upstream_key]
    values += options.fairness_keys.split(",")
    values += getattr(options, "relaygate_headers", {}).values()
    return tuple(v.strip() for v in values if v and v.strip())


def _default_user_classes(environment: Environment) -> None:
    """``locust -f loadtests`` without a class name runs ``StreamingChatUser`` only."""
    options = environment.parsed_options
    names = [u.__name__ for u in environment.user_classes]
    only = options is not None and not options.user_classes and len(names) > 1
    if only and "StreamingChatUser" in names:
        environment.user_classes[:] = [
            u for u in environment.user_classes if u.__name__ == "StreamingChatUser"
        ]


def _selected(environment: Environment) -> set[str]:
    return {u.__name__ for u in environment.user_classes}


def _start_stack(environment: Environment, state: RunState) -> None:
    try:
        from relaygate.stack import EmbeddedStack
    except ImportError as exc:
        logger.error("no --host given and the embedded stack is unavailable (%s)", exc)
        raise SystemExit(2) from None
    options = environment.parsed_options
    assert options is not None
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per admin call
    rate_limit = options.rate_limit or None
    probing = "RateLimitUser" in _selected(environment)
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


def _quit_soon(environment: Environment) -> None:
    runner = environment.runner
    if runner is not None:
        gevent.spawn_later(0.2, runner.quit)


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    state = state_of(environment)
    state.started_wall = state.started_wall or time.time()
    if not isinstance(environment.runner, MasterRunner):
        # Move start-up objects out of the collector's reach: gen-2 pauses of 15-60 ms
        # otherwise land inside streams (LOCUST_BASELINE.md, "GC pauses").
        gc.collect()
        gc.freeze()
        # Per stream the client allocates a few dozen containers; at the default gen-0
        # threshold (700) that is a young collection every ~15 streams and a full one
        # every ~100 young ones. Larger thresholds make collections rarer; after freeze()
        # each one only walks objects of the run itself, so it stays short.
        gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])
        if not state.selfcheck_started:
            state.selfcheck_started = True
            gevent.spawn(
                selfcheck.run_probe, state.registry, gevent.sleep, running=lambda: state.running
            )


def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    state = state_of(environment)
    state.stopped_wall = time.time()
    # Locust has stopped (or killed) every user by now; what is still open was cut off,
    # e.g. a prober request in a greenlet of its own.
    count_incomplete(environment, state)


def count_incomplete(environment: Environment, state: RunState) -> int:
    """Report every request still in flight as ``incomplete``; returns how many."""
    started = state.in_flight.drain()
    for request in started:
        record_outcome(environment, state, request, outcomes.INCOMPLETE, _cut_off_text(request))
    if started:
        logger.warning(
            "%d request(s) still in flight when the run ended: counted as incomplete "
            "(a stream longer than --stop-timeout, or a relay that never ends it)",
            len(started),
        )
    return len(started)


def _cut_off_text(request: Started) -> str:
    running_s = (time.monotonic_ns() - request.t_start_ns) / _NS_PER_S
    return f"still in flight after {running_s:.1f} s when the run ended"


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


def _on_report_to_master(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    for environment, state in list(_STATES.items()):
        if _is_worker(environment):
            _attach_pacer(state)
            if not state.registry.is_empty():
                data["relaygate"] = state.registry.take_delta()


def _on_worker_report(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    snapshot = data.get("relaygate")
    if not snapshot:
        return
    for environment, state in list(_STATES.items()):
        if isinstance(environment.runner, MasterRunner):
            state.registry.merge(snapshot)


def _attach_pacer(state: RunState) -> None:
    pacer = state.pacer
    if pacer is not None and pacer.late:
        state.registry.count("pacer.late", pacer.late)
        state.registry.extras["pacer_max_late_ms"] = pacer.max_late_ns / _NS_PER_MS
        pacer.late = 0


def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    state = state_of(environment)
    state.running = False
    if not _controls_run(environment) or state.written:
        return
    state.written = True
    # On Ctrl-C Locust quits before it stops the users: their requests are cut off now.
    count_incomplete(environment, state)
    options = environment.parsed_options
    if options is not None and options.csv_prefix:
        # Locust's --csv writer rewrites its files once a second and not again at exit: let it
        # run once more, or the last second (the requests counted incomplete at the end, the
        # workers' final reports) is missing from locust_*.csv.
        gevent.sleep(locust_stats.CSV_STATS_INTERVAL_SEC + 0.1)
    _write_reports(environment, state)


def _on_quit(**_kwargs: Any) -> None:
    """Stop the embedded stack last: ``quit`` fires after the runner stopped every user, so
    no user sees the relay vanish (``quitting`` comes before that, e.g. on Ctrl-C)."""
    for state in list(_STATES.values()):
        _stop_stack(state)


def _stop_stack(state: RunState) -> None:
    if state.stack is not None:
        stack, state.stack = state.stack, None
        with contextlib.suppress(Exception):
            stack.__exit__(None, None, None)


def _write_reports(environment: Environment, state: RunState) -> None:
    options = environment.parsed_options
    assert options is not None
    _attach_pacer(state)
    registry = state.registry
    stopped = state.stopped_wall or time.time()
    duration = stopped - (state.started_wall or stopped)
    summary = build_summary(
        registry,
        host=environment.host,
        users=options.num_users,
        duration_s=duration,
        scenario=sorted(_selected(environment)),
        target_rps=options.target_rps,
    )
    summary["slo"] = slo.evaluate(state.rules, summary, registry.hists)
    path = write_summary(summary, options.report_dir)
    write_metrics_csv(registry, f"{options.report_dir}/load-metrics.csv")
    if options.csv_prefix:
        write_metrics_csv(registry, f"{options.csv_prefix}_relaygate_metrics.csv")
    if not options.no_plots:
        try:
            from relaygate.load.plots import write_plots

            write_plots(registry, summary, options.report_dir)
        except Exception as exc:  # a plot must never cost the summary or the exit code
            logger.warning("plots not written: %s", exc)
    print(format_table(registry))
    for reason in summary["self_check"]["reasons"]:
        logger.warning("self-check: latency percentiles INVALID - %s", reason)
    logger.info("relaygate summary written to %s", path)
    failed = False
    for result in summary["slo"]:
        failed |= not result["passed"]
        print(
            slo.check_line(
                result["rule"], result["observed"], result["threshold"], result["passed"]
            )
        )
    if state.rules:
        # The SLO verdict may raise Locust's own exit code, never lower it: a run with failed
        # requests or a crashed greenlet stays non-zero however good its percentiles were.
        environment.process_exit_code = max(locust_exit_code(environment), 1 if failed else 0)


def locust_exit_code(environment: Environment) -> int:
    """The code Locust itself would exit with (``locust.main``'s ``shutdown``): one set by
    another listener, else ``--exit-code-on-error`` after any failed request or exception in
    a task, else 2 after an unhandled greenlet exception, else 0."""
    if environment.process_exit_code is not None:
        return int(environment.process_exit_code)
    runner = environment.runner
    options = environment.parsed_options
    if runner is not None and (runner.errors or runner.exceptions):
        return int(getattr(options, "exit_code_on_error", 1))
    return 2 if locust_log.unhandled_greenlet_exception else 0


# Registered at import, like any locustfile's listeners; the module is imported once.
# (Locust's EventHook is untyped, hence the Any.)
_hooks: Any = events
_hooks.init_command_line_parser.add_listener(_add_arguments)
_hooks.init.add_listener(_on_init)
_hooks.test_start.add_listener(_on_test_start)
_hooks.test_stop.add_listener(_on_test_stop)
_hooks.report_to_master.add_listener(_on_report_to_master)
_hooks.worker_report.add_listener(_on_worker_report)
_hooks.quitting.add_listener(_on_quitting)
_hooks.quit.add_listener(_on_quit)


# -- users -------------------------------------------------------------------------------


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
        response_time=(end - begin) / _NS_PER_MS,
        response_length=res.bytes_received,
        exception=exception,
        context={"outcome": res.outcome},
        response=None,
        url=CHAT_PATH,
        start_time=time.time(),
    )


class RelaygateUser(User):
    """Base of the relaygate users: a :class:`TimingClient` and helpers. Not run itself."""

    abstract = True

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
                (time.monotonic_ns() - slot) / _NS_PER_MS,
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
                    self.environment, state, request, outcomes.INCOMPLETE, _cut_off_text(request)
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
    if _selected(user.environment) == {"RateLimitUser"}:
        if isinstance(runner, WorkerRunner):
            runner.send_message(PROBER_DONE, None)
        else:
            _quit_soon(user.environment)
    raise StopUser()
