"""pytest plugin for the detection matrix: one session runs the whole conformance suite once
per *run* (no fault, or one fault switch) against one reference relay.

Loaded with ``-p matrix_runner`` (``tests/`` on ``PYTHONPATH``) next to the relaygate plugin's
``--relay-url/--relay-key/--relay-admin-token/--upstream-url``. Imports and collection happen
once; before each run the relay goes back to its state at session start (``POST
/api/admin/restore``: balances, keys, request log, rate-limit windows) and gets the run's fault
(``PUT /api/admin/settings``); every fixture, session-scoped ones included, is torn down at the
end of a run, so runs are as independent as separate sessions.

Each case's outcome per run is one JSON line in ``--matrix-out``: ``{"run", "id", "status",
"detail"}`` with ``id`` the case's full id (``area.name[param]``, as conformance.json records
it) and ``status`` one of

* ``failed``: the case's own assertion failed (a :class:`CaseFailure` from ``require``, or an
  ``AssertionError`` raised in a conformance module) while it ran: a detection;
* ``error``: anything else went wrong (a setup/teardown error, an exception from a bug);
* ``passed``, ``skipped``, ``deviation``.

Live mode (``tests/test_live_detection_matrix.py``): the suite gets only ``--relay-url`` and
``--relay-key``, as a relay customer runs it; the runner alone switches faults, with the admin
token given as ``--matrix-admin-token``.

:func:`run_matrix` is the driver both matrix tests share: one embedded stack and one such
session per worker, the runs spread over them.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import pytest

from relaygate.pytest_plugin import relay_options
from relaygate.stack import EmbeddedStack, StackInfo
from relaygate.suite.failures import DEVIATION_PREFIX, CaseFailure

#: The run name for the reference relay without any fault switch.
BASELINE = "baseline"
ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE_DIR = ROOT / "conformance"

#: run -> full case id -> (status, detail); see the module docstring for the statuses.
Results = dict[str, dict[str, tuple[str, str]]]

_STATUS = pytest.StashKey[dict[str, tuple[str, str]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("matrix", "detection matrix (tests/test_detection_matrix.py)")
    group.addoption(
        "--matrix-run",
        action="append",
        default=[],
        metavar="FAULT",
        help=f"run the suite with this fault switch on ({BASELINE!r}: none); repeatable",
    )
    group.addoption("--matrix-out", metavar="PATH", help="JSON lines, one per case and run")
    group.addoption(
        "--matrix-admin-token",
        metavar="TOKEN",
        help="the relay's admin token for the runner only (live mode: the suite has none)",
    )


def _raised_in_conformance(tb: TracebackType | None) -> bool:
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).is_relative_to(
        CONFORMANCE_DIR
    )


def own_assertion(exc: BaseException) -> bool:
    """True for the case's own verdict: ``require``'s CaseFailure, or an AssertionError raised
    in a conformance module (hypothesis may group several: all of them must be)."""
    if isinstance(exc, CaseFailure):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(own_assertion(e) for e in exc.exceptions)
    return isinstance(exc, AssertionError) and _raised_in_conformance(exc.__traceback__)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    statuses = item.config.stash.get(_STATUS, None)
    if statuses is None:
        return report
    status, detail = statuses.get(item.nodeid, ("passed", ""))
    excinfo = call.excinfo
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        deviation = wasxfail.startswith(DEVIATION_PREFIX)
        status, detail = ("deviation" if deviation else "skipped"), wasxfail
    elif report.skipped:
        longrepr = report.longrepr
        status = "skipped"
        detail = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    elif report.failed and status not in ("failed", "error"):
        assert excinfo is not None
        own = report.when == "call" and own_assertion(excinfo.value)
        status = "failed" if own else "error"
        where = "" if own else f"{report.when}: "
        detail = f"{where}{excinfo.typename}: {_first_line(str(excinfo.value))}"
    statuses[item.nodeid] = (status, detail)
    return report


def share_default_tls_context(
    setattr_: Callable[[object, str, object], None] = setattr,
) -> None:
    """Make every httpx client of this process share one default TLS context.

    Each client the suite makes (an SDK client per case, the relay/journal/provisioner clients
    per run) otherwise loads the CA bundle anew, ~0.1 s of CPU each, about 1 s per run. The
    matrix only talks plain HTTP on loopback, so the context is never even used. ``setattr_``
    lets a test undo the patch (``monkeypatch.setattr``).
    """
    for name in ("httpx._transports.default", "httpx2._transports.default"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        original = module.create_ssl_context
        cache: dict[bool, Any] = {}

        def shared(
            verify: Any = True,
            cert: Any = None,
            trust_env: bool = True,
            _original: Any = original,
            _cache: dict[bool, Any] = cache,
        ) -> Any:
            if verify is not True or cert is not None:
                return _original(verify=verify, cert=cert, trust_env=trust_env)
            if trust_env not in _cache:
                _cache[trust_env] = _original(verify=verify, cert=cert, trust_env=trust_env)
            return _cache[trust_env]

        setattr_(module, "create_ssl_context", shared)


def _case_id(item: pytest.Item) -> str | None:
    return dict(item.user_properties).get("case_id")


class _Relay:
    """The reference relay's admin API, for snapshot/restore and fault switches."""

    def __init__(self, config: pytest.Config) -> None:
        opts = relay_options(config)
        token = config.getoption("matrix_admin_token") or opts.admin_token
        if not opts.relay_url or not token:
            raise pytest.UsageError(
                "matrix_runner needs --relay-url and --relay-admin-token or --matrix-admin-token"
            )
        root = opts.relay_url.removesuffix("/v1")
        self.http = httpx.Client(
            base_url=root + "/api/admin",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
        )

    def call(self, method: str, path: str, body: Any = None) -> None:
        response = self.http.request(method, path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    config = session.config
    runs: list[str] = config.getoption("matrix_run")
    if not runs:
        return None
    if session.testsfailed:
        raise session.Interrupted(f"{session.testsfailed} error(s) during collection")
    out_path = config.getoption("matrix_out")
    if not out_path:
        raise pytest.UsageError("--matrix-run needs --matrix-out")
    share_default_tls_context()
    relay = _Relay(config)
    try:
        relay.call("POST", "/snapshot")
        with Path(out_path).open("w") as out:
            for run in runs:
                _run(session, relay, run, session.items, out)
    finally:
        relay.http.close()
    return True


def _run(
    session: pytest.Session, relay: _Relay, run: str, items: list[pytest.Item], out: IO[str]
) -> None:
    relay.call("POST", "/restore")
    relay.call("PUT", "/settings", {"faults": [] if run == BASELINE else [run]})
    statuses: dict[str, tuple[str, str]] = {}
    session.config.stash[_STATUS] = statuses
    for i, item in enumerate(items):
        # nextitem None after the last item tears every fixture down, session scope included.
        nextitem = items[i + 1] if i + 1 < len(items) else None
        item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        if session.shouldstop or session.shouldfail:
            raise session.Interrupted(str(session.shouldstop or session.shouldfail))
    del session.config.stash[_STATUS]
    for item in items:
        case_id = _case_id(item)
        if case_id is None:
            continue
        status, detail = statuses.get(item.nodeid, ("error", "no report"))
        line = {"run": run, "id": case_id, "status": status, "detail": detail}
        out.write(json.dumps(line) + "\n")
    out.flush()


# --- the driver: sessions on embedded stacks ---------------------------------------------------


def session_args(info: StackInfo, runs: list[str], out: Path, live: bool) -> list[str]:
    """The command line of one matrix session (``live``: the suite gets only URL and key)."""
    args = [sys.executable, "-m", "pytest", str(CONFORMANCE_DIR), "-q"]
    args += ["-p", "no:cacheprovider", "-p", "matrix_runner", "--report-dir", str(out.parent)]
    args += ["--relay-url", info.relay_url, "--relay-key", info.relay_key]
    if live:
        args += ["--matrix-admin-token", info.admin_token]
    else:
        args += ["--relay-admin-token", info.admin_token, "--upstream-url", info.upstream_url]
    # An oversized body that a faulty relay accepts is tokenised whole (seconds): no timeout.
    args += ["--matrix-out", str(out), "--relay-timeout", "120"]
    for run in runs:
        args += ["--matrix-run", run]
    return args


def _session(stack: EmbeddedStack, runs: list[str], out: Path, live: bool) -> Results:
    """One pytest session on ``stack`` running the suite once per run."""
    info = stack.info
    assert info is not None
    out.parent.mkdir(parents=True)
    args = session_args(info, runs, out, live)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    # A bound per run: a live run waits on real-length answers and paced streams.
    timeout_s = max(600, 180 * len(runs))
    proc = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    results: Results = {}
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            results.setdefault(row["run"], {})[row["id"]] = (row["status"], row["detail"])
    missing = [run for run in runs if run not in results]
    if missing:
        output = proc.stdout[-3000:] + "\n" + proc.stderr[-2000:]
        pytest.fail(f"the matrix session recorded no results for {missing}:\n{output}")
    return results


#: Live mode paces the mock's plain answers like a model writing (a gap between content
#: events), so that a buffered stream shows as one burst: the live streaming case judges a
#: probe of 64-128 tokens that lasts 300 ms or more. Every long plain answer pays the gap too
#: (1100 tokens for the max_tokens case), so it is no longer than that needs.
LIVE_MOCK_ARGS = ("--default-itl-ms", "5")


def run_matrix(runs: list[str], workers: int, folder: Path, *, live: bool = False) -> Results:
    """Every run, spread over ``workers`` embedded stacks (one session each).

    ``live``: the suite sees only the relay URL and a key (no journal, no admin token), and
    the mock answers at a model's pace (:data:`LIVE_MOCK_ARGS`).
    """
    shares = [runs[i::workers] for i in range(workers) if runs[i::workers]]
    stacks = [EmbeddedStack(mock_args=LIVE_MOCK_ARGS if live else ()) for _ in shares]
    results: Results = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(shares)) as pool:
            list(pool.map(EmbeddedStack.start, stacks))
            futures = [
                pool.submit(_session, stack, share, folder / f"worker{i}" / "matrix.jsonl", live)
                for i, (stack, share) in enumerate(zip(stacks, shares, strict=True))
            ]
            for future in futures:
                results.update(future.result())
    finally:
        for stack in stacks:
            stack.stop()
    return results


def detected(cases: dict[str, tuple[str, str]]) -> set[str]:
    """The case instances a run failed by their own assertion."""
    return {case for case, (status, _) in cases.items() if status == "failed"}


def errors(cases: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The case instances a run errored (not a verdict), with their detail."""
    return {case: detail for case, (status, detail) in cases.items() if status == "error"}
