"""The Locust event listeners and the end-of-run reports.

What happens when:

``init_command_line_parser``  our ``--relay-key``, ``--slo``, … (:mod:`.locust_options`)
``init``                      parse ``--slo`` (fail fast); pick ``StreamingChatUser`` when no
                              class is named; on the master/local runner only: preflight the
                              ``--host`` relay and key (exit 2 with one line when unusable), or
                              start the embedded stack when there is no ``--host``
``test_start``                type again what the web UI's form sent (stop on a bad value);
                              GC tuning; self-check
``test_stop``                 every request still in flight is counted ``incomplete``
``report_to_master``          (worker) attach the registry delta
``worker_report``             (master) merge it; the master's ``quit`` waits for every
                              worker's final report (:func:`_wait_for_final_reports`)
``quitting``                  (master/local) summary, CSV, plots, SLO lines, exit code
``quit``                      stop the embedded stack (:mod:`.locust_stack`)
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import gevent
from locust import log as locust_log
from locust import stats as locust_stats
from locust.env import Environment
from locust.rpc.protocol import Message
from locust.runners import STATE_MISSING, MasterRunner

from relaygate.load import selfcheck, slo
from relaygate.load.locust_options import listen, run_secrets, values_from_web_ui
from relaygate.load.locust_outcomes import count_incomplete
from relaygate.load.locust_stack import preflight, start_stack, stop_stacks
from relaygate.load.locust_state import (
    NS_PER_MS,
    RunState,
    controls_run,
    is_worker,
    quit_soon,
    selected,
    state_of,
    states,
)
from relaygate.load.prober import parse_rate_limit
from relaygate.load.summary import build_summary, format_table, write_metrics_csv, write_summary
from relaygate.suite.target import parse_header_lines

__all__ = ["PROBER_DONE", "locust_exit_code", "register"]

logger = logging.getLogger("relaygate.load")

PROBER_DONE = "relaygate_prober_done"
GC_THRESHOLDS = (50_000, 20, 20)
FINAL_REPORT_GRACE_S = 5.0
"""How long past ``--stop-timeout`` the master waits for a worker's final report."""


def register(events: Any) -> None:
    """Add our listeners to Locust's ``events`` (its EventHook is untyped, hence Any)."""
    listen(events)
    events.init.add_listener(_on_init)
    events.test_start.add_listener(_on_test_start)
    events.test_stop.add_listener(_on_test_stop)
    events.report_to_master.add_listener(_on_report_to_master)
    events.worker_report.add_listener(_on_worker_report)
    events.quitting.add_listener(_on_quitting)
    events.quit.add_listener(stop_stacks)


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
    if controls_run(environment):
        options.relaygate_users_total = options.num_users or 1
        if not environment.host and not options.host:
            start_stack(environment, state)
        else:
            preflight(environment.host or options.host, options)
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(PROBER_DONE, lambda *_a, **_k: quit_soon(environment))
        _wait_for_final_reports(environment.runner, environment.stop_timeout or 0.0)
    if environment.web_ui is not None and controls_run(environment):
        from relaygate.load import webui

        webui.install(environment.web_ui, lambda: state.registry, lambda: run_secrets(options))


def _wait_for_final_reports(runner: MasterRunner, stop_timeout_s: float) -> None:
    """Make the master's ``quit`` wait until every worker has quit (its final report comes
    first on the same socket), at most ``--stop-timeout`` plus a grace.

    Locust's ``MasterRunner.quit`` asks the workers to quit, waits 0.5 s and stops listening,
    while each worker first lets its streams finish (``--stop-timeout``, 10 s by default
    here) and only then sends its final report: that report (the last seconds of the run,
    the streams cut off as ``incomplete``) was lost, in the summary and in Locust's own
    statistics alike (tests/test_load_merge.py). Locust offers no hook for this wait, hence
    the wrapped method.
    """
    locust_quit = runner.quit

    def quit_after_final_reports() -> None:
        runner.stop(send_stop_to_client=False)
        for client in runner.clients.all:
            runner.server.send_to_client(Message("quit", None, client.id))  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + stop_timeout_s + FINAL_REPORT_GRACE_S
        # A worker gone missing (no heartbeat) never answers: wait only for the live ones.
        while time.monotonic() < deadline and any(
            client.state != STATE_MISSING for client in runner.clients.all
        ):
            gevent.sleep(0.05)
        locust_quit()

    runner.quit = quit_after_final_reports  # type: ignore[method-assign]


def _default_user_classes(environment: Environment) -> None:
    """``locust -f loadtests`` without a class name runs ``StreamingChatUser`` only."""
    options = environment.parsed_options
    names = [u.__name__ for u in environment.user_classes]
    only = options is not None and not options.user_classes and len(names) > 1
    if only and "StreamingChatUser" in names:
        environment.user_classes[:] = [
            u for u in environment.user_classes if u.__name__ == "StreamingChatUser"
        ]


def _from_web_ui(environment: Environment, state: RunState) -> None:
    """The web UI's start form may have changed our options: type them again. A value that is
    not valid stops the test it started (the web UI stays, to start it again)."""
    options = environment.parsed_options
    runner = environment.runner
    if options is None or environment.web_ui is None or runner is None:
        return
    problems = values_from_web_ui(options)
    for line in problems:
        logger.error("%s; test stopped", line)
    if problems:
        gevent.spawn(runner.stop)


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    state = state_of(environment)
    state.started_wall = state.started_wall or time.time()
    if controls_run(environment):
        _from_web_ui(environment, state)
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


def _on_report_to_master(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    for environment, state in states():
        if is_worker(environment):
            _attach_pacer(state)
            if not state.registry.is_empty():
                data["relaygate"] = state.registry.take_delta()


def _on_worker_report(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    snapshot = data.get("relaygate")
    if not snapshot:
        return
    for environment, state in states():
        if isinstance(environment.runner, MasterRunner):
            state.registry.merge(snapshot)


def _attach_pacer(state: RunState) -> None:
    pacer = state.pacer
    if pacer is not None and pacer.late:
        state.registry.count("pacer.late", pacer.late)
        state.registry.extras["pacer_max_late_ms"] = pacer.max_late_ns / NS_PER_MS
        pacer.late = 0


def _on_quitting(environment: Environment, **_kwargs: Any) -> None:
    state = state_of(environment)
    state.running = False
    if not controls_run(environment) or state.written:
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
        scenario=sorted(selected(environment)),
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
