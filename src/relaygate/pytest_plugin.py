"""pytest plugin (``pytest11`` entry point): the conformance suite's options, marker, fixtures
and reports. Hooks and fixtures only; the logic lives in :mod:`relaygate.suite`.

Options: the ``PYTEST`` rows of :data:`relaygate.options.OPTIONS` (``--relay-url``,
``--relay-key``, ``--relay-profile`` …), each a flag, an ini key and an environment variable;
command line > env var > ini file. ``pytest --help`` lists them under "relaygate".

Before the first case that uses the ``relay`` fixture with ``--relay-url``, a preflight
(:mod:`relaygate.preflight`) checks the profile, the relay, the key, the admin token and the
upstream; an unusable one stops the session with one line and pytest's usage-error code (4).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from relaygate.keys import mask_key, mask_secrets
from relaygate.options import PYTEST, Option, by_flag, options_for
from relaygate.suite.failures import DEVIATION_PREFIX, mask_report
from relaygate.suite.results import CaseMeta, CaseResult, run_mode, write_reports
from relaygate.suite.target import (
    RelayOptions,
    RelayTarget,
    normalize_base_url,
    parse_header_lines,
)

if TYPE_CHECKING:
    from relaygate.profiles import Profile
    from relaygate.provision import Provisioner
    from relaygate.suite.budget import LiveMeter
    from relaygate.suite.client import RelayClient, UpstreamJournal
    from relaygate.suite.ledger import Ledger

_CASE_FAILURE_PREFIX = "relaygate.suite.failures.CaseFailure: "
_RESULTS = pytest.StashKey[dict[str, CaseResult]]()
_META = pytest.StashKey[dict[str, CaseMeta]]()
_STARTED = pytest.StashKey[tuple[dt.datetime, float]]()
_TARGET = pytest.StashKey[RelayTarget]()


def _dest(option: Option) -> str:
    return option.pytest_dest or option.name


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("relaygate", "relaygate conformance suite")
    for option in options_for(PYTEST):
        assert option.ini is not None  # every pytest option has an ini key (tests/test_options)
        # The flag's own default is None: a value from the env var or the ini file is taken
        # only when the flag is not given (CLI > env > ini).
        action = "append" if option.repeatable else "store_true" if option.switch else "store"
        group.addoption(
            option.flag, dest=_dest(option), default=None, action=action, help=option.help_with_env
        )
        if option.switch:
            parser.addini(option.ini, help=option.help, type="bool", default=bool(option.default))
        elif option.repeatable:
            parser.addini(option.ini, help=option.help, type="linelist", default=[])
        else:
            default = None if option.default is None else str(option.default)
            parser.addini(option.ini, help=option.help, default=default)


# -- live cost control (--live-budget, --live-dry-run) ----------------------------------------
_METER = pytest.StashKey["LiveMeter"]()


def live_cost_options(config: pytest.Config) -> tuple[str | None, bool]:
    """(``--live-budget`` text or None, ``--live-dry-run``); CLI > env > ini."""
    budget = option_value(config, "--live-budget")
    dry = config.getoption("live_dry_run")
    if dry is None:
        env = os.environ.get("RELAYGATE_LIVE_DRY_RUN", "").strip().lower()
        dry = env in ("1", "true", "yes", "on") if env else bool(config.getini("live_dry_run"))
    if budget is not None:
        from relaygate.suite.budget import BudgetError, parse_budget

        try:
            parse_budget(budget, 500000)
        except BudgetError as exc:
            raise pytest.UsageError(f"relaygate: {exc}") from None
    return budget, bool(dry)


_DRY_RUN_REASON = "live dry run: planned against a local stand-in; nothing sent to the relay"


def _is_dry_run(config: pytest.Config) -> bool:
    return bool(relay_options(config).relay_url) and live_cost_options(config)[1]


def _make_meter(config: pytest.Config, relay: RelayTarget, profile: Profile) -> LiveMeter | None:
    """The run's meter in live mode (and in a dry run), else None."""
    from relaygate.suite.budget import LiveMeter, parse_budget

    budget, dry = live_cost_options(config)
    if relay.mode != "live" and not dry:
        return None
    rules = profile.billing
    if not rules.applicable:
        # No prices in this profile: price with the FAQ's table, the one-api family's.
        from relaygate.preflight import check_profile

        rules = check_profile("faq").billing
    cap = None if budget is None else parse_budget(budget, rules.quota_per_usd)
    meter = LiveMeter(rules, cap_quota=cap, group=key_group(config, profile))
    config.stash[_METER] = meter
    return meter


@pytest.fixture(autouse=True)
def _live_budget_gate(request: pytest.FixtureRequest) -> None:
    """Once the budget held a request back, every later case skips before it starts."""
    meter = request.config.stash.get(_METER, None)
    is_case = request.config.stash[_META].get(request.node.nodeid) is not None
    if meter is not None and meter.spent_reason is not None and is_case:
        pytest.skip(meter.spent_reason)


def option_value(config: pytest.Config, flag: str) -> str | None:
    """The text of a single-valued option of the table: command line, else env var, else ini."""
    option = by_flag(flag)
    value = config.getoption(_dest(option))
    if value is None:
        value = os.environ.get(option.env) or None
    if value is None and option.ini is not None:
        value = config.getini(option.ini) or None
    return str(value) if value is not None else None


def _numbers(config: pytest.Config) -> tuple[float, int, int]:
    """``--relay-timeout``, ``--relay-fuzz-examples``, ``--relay-max-bytes``, parsed."""
    values = []
    for flag in ("--relay-timeout", "--relay-fuzz-examples", "--relay-max-bytes"):
        option = by_flag(flag)
        try:
            values.append(option.type(option_value(config, flag) or str(option.default)))
        except ValueError as exc:
            raise pytest.UsageError(f"relaygate: bad numeric option {flag}: {exc}") from None
    timeout_s, fuzz, max_bytes = values
    return float(timeout_s), int(fuzz), int(max_bytes)


_OPTIONS = pytest.StashKey["RelayOptions"]()


def relay_options(config: pytest.Config) -> RelayOptions:
    """The run's relay options (command line, env, ini), read and checked once per session:
    every case report masks the run's secrets, so this is asked for on every report."""
    cached = config.stash.get(_OPTIONS, None)
    if cached is None:
        cached = config.stash[_OPTIONS] = _read_relay_options(config)
    return cached


def _read_relay_options(config: pytest.Config) -> RelayOptions:
    values = {
        option.flag: option_value(config, option.flag)
        for option in options_for(PYTEST)
        if not option.repeatable
    }
    timeout_s, fuzz, max_bytes = _numbers(config)
    if not (0 < timeout_s < math.inf and max_bytes > 0):
        raise pytest.UsageError("relaygate: --relay-timeout and --relay-max-bytes must be > 0")
    url = values["--relay-url"]
    if url:
        try:
            url = normalize_base_url(url)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    faults = tuple(f.strip() for f in (values["--relay-fault"] or "").split(",") if f.strip())
    headers = by_flag("--relay-header")
    header_lines = config.getoption(_dest(headers))
    if header_lines is None:
        env_headers = os.environ.get(headers.env)
        header_lines = [env_headers] if env_headers else config.getini(str(headers.ini))
    try:
        extra_headers = parse_header_lines(header_lines)
    except ValueError as exc:
        raise pytest.UsageError(f"relaygate: {exc}") from None
    if faults and url:
        raise pytest.UsageError("--relay-fault applies to the embedded stack, not --relay-url")
    return RelayOptions(
        relay_url=url,
        relay_key=values["--relay-key"],
        admin_token=values["--relay-admin-token"],
        profile=values["--relay-profile"] or by_flag("--relay-profile").default,
        upstream_url=values["--upstream-url"],
        report_dir=values["--report-dir"] or by_flag("--report-dir").default,
        timeout_s=timeout_s,
        fuzz_examples=fuzz,
        faults=faults,
        extra_headers=extra_headers,
        max_bytes=max_bytes,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "case(id, *, title, area, faq=(), level='MUST', spec=None): a conformance case with "
        "a permanent id, the FAQ clauses or spec it checks, and its level (MUST/SHOULD)",
    )
    config.stash[_RESULTS] = {}
    config.stash[_META] = {}
    config.stash[_STARTED] = (dt.datetime.now(dt.UTC), time.perf_counter())


def pytest_report_header(config: pytest.Config) -> list[str]:
    opts = relay_options(config)
    if opts.relay_url:
        where = f"{opts.relay_url} (key {mask_key(opts.relay_key)})"
        mode = "mock (ground truth)" if opts.upstream_url else "live (ground-truth cases skip)"
    else:
        where = "embedded stack (mock upstream + reference relay, started on first use)"
        mode = "mock (ground truth)"
        if opts.faults:
            where += f" with faults {', '.join(opts.faults)}"
    budget, dry = live_cost_options(config)
    if opts.relay_url and dry:
        mode = "live dry run (nothing is sent to the relay; a local stand-in answers)"
    elif budget and opts.relay_url and not opts.upstream_url:
        mode += f", live budget {budget}"
    lines = [f"relaygate: relay {where}", f"relaygate: profile {opts.profile}, mode {mode}"]
    if opts.extra_headers:
        lines.append(f"relaygate: extra headers {', '.join(sorted(opts.extra_headers))}")
    return lines


def _case_meta(item: pytest.Item) -> CaseMeta | None:
    marker = item.get_closest_marker("case")
    if marker is None:
        return None
    if len(marker.args) != 1:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.case takes exactly one id")
    case_id = str(marker.args[0])
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        case_id += f"[{callspec.id}]"
    kwargs = dict(marker.kwargs)
    faq = kwargs.pop("faq", ())
    try:
        return CaseMeta(
            id=case_id,
            faq=(faq,) if isinstance(faq, str) else tuple(faq),
            **kwargs,
        )
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"{item.nodeid}: bad case marker: {exc}") from None


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    metas = config.stash[_META]
    seen: dict[str, str] = {}
    for item in items:
        meta = _case_meta(item)
        if meta is None:
            continue
        if meta.id in seen:
            raise pytest.UsageError(f"case id {meta.id} used twice: {seen[meta.id]}, {item.nodeid}")
        seen[meta.id] = item.nodeid
        metas[item.nodeid] = meta
        item.user_properties += [
            ("case_id", meta.id),
            ("area", meta.area),
            ("faq", ",".join(meta.faq)),
            ("level", meta.level),
        ]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    mask_report(report, _run_secrets(item.config))
    if report.when == "call" and not report.skipped and _is_dry_run(item.config):
        # The outcome is the stand-in's, not the relay's: nothing was checked.
        report.outcome = "skipped"
        report.longrepr = (str(item.path), 0, f"Skipped: {_DRY_RUN_REASON}")
    meta = item.config.stash[_META].get(item.nodeid)
    if meta is None:
        return report
    results = item.config.stash[_RESULTS]
    previous = results.get(item.nodeid)
    duration = report.duration + (previous.duration_s if previous else 0.0)
    outcome: str | None = None
    reason = ""
    details = ""
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        outcome = "deviation" if wasxfail.startswith(DEVIATION_PREFIX) else "skipped"
        reason = wasxfail.removeprefix(DEVIATION_PREFIX)
    elif report.skipped:
        outcome = "skipped"
        longrepr = report.longrepr
        reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
    elif report.failed:
        outcome = "failed"
        crash = getattr(report.longrepr, "reprcrash", None)
        details = str(getattr(crash, "message", "") or report.longreprtext)
        # A case failure reads "-> requirement / Expected / Actual / Reproduce"; the exception
        # class in front of it is noise in a report.
        details = details.removeprefix(_CASE_FAILURE_PREFIX).removeprefix("-> ")
        reason = details.splitlines()[0] if details else "failed"
        if report.when != "call":
            reason = f"error in {report.when}: {reason}"
    elif report.when == "call":
        outcome = "passed"
    if outcome is None:
        if previous is not None:
            previous.duration_s = duration
        return report
    if previous is not None and previous.outcome == "failed":
        return report
    secrets = _run_secrets(item.config)
    results[item.nodeid] = CaseResult(
        meta=meta,
        outcome=outcome,
        reason=mask_secrets(reason, *secrets),
        duration_s=duration,
        details=mask_secrets(details, *secrets),
    )
    return report


def _run_secrets(config: pytest.Config) -> tuple[str | None, ...]:
    """Every secret of this run: the target's, the options' and the static ``RELAYGATE_KEY_*``
    keys (a failure in setup can come before the target exists)."""
    target = config.stash.get(_TARGET, None)
    found: tuple[str | None, ...] = tuple(target.secrets) if target is not None else ()
    return found + _option_secrets(config)


_OPTION_SECRETS = pytest.StashKey[tuple[str | None, ...]]()


def _option_secrets(config: pytest.Config) -> tuple[str | None, ...]:
    """The secrets the options and the environment carry (read once: asked on every report)."""
    cached = config.stash.get(_OPTION_SECRETS, None)
    if cached is not None:
        return cached
    found: list[str | None] = []
    try:
        opts = relay_options(config)
    except pytest.UsageError:
        opts = None
    if opts is not None:
        found += opts.extra_headers.values()
    # Every secret option of the table (--relay-key, --relay-admin-token, …), as given.
    found += [
        option_value(config, option.flag)
        for option in options_for(PYTEST)
        if option.secret and not option.repeatable
    ]
    found += [v for k, v in os.environ.items() if k.startswith("RELAYGATE_KEY_")]
    if opts is not None:  # a bad option is reported again (and read again) on the next ask
        config.stash[_OPTION_SECRETS] = tuple(found)
    return tuple(found)


def _report_dir(config: pytest.Config, opts: RelayOptions) -> Path | None:
    """Where this run's reports go; ``None``: nowhere.

    Against a relay given by ``--relay-url`` the default is ``reports/`` (the documented
    contract). Against the embedded stack (the project's own test run, ``relaygate check``
    without a relay) reports are written only when a directory is asked for, so a test run in
    the checkout never overwrites the reports ``relaygate demo`` left there.
    """
    option = by_flag("--report-dir")
    asked = (
        config.getoption(_dest(option)) is not None
        or bool(os.environ.get(option.env))
        or config.getini(str(option.ini)) != option.default
    )
    if opts.relay_url or asked:
        return Path(opts.report_dir)
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    results = list(config.stash[_RESULTS].values())
    if not results or hasattr(config, "workerinput"):
        return
    opts = relay_options(config)
    out = _report_dir(config, opts)
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        # A partial run must not replace a complete report.
        config.stash[_NOT_WRITTEN] = "the run was interrupted; the previous report is kept"
        return
    if out is None:
        config.stash[_NOT_WRITTEN] = (
            "embedded stack: no report written (pass --report-dir DIR to keep one)"
        )
        return
    if live_cost_options(config)[1] and opts.relay_url:
        config.stash[_NOT_WRITTEN] = "live dry run: nothing was sent to the relay, no report"
        return
    meter = config.stash.get(_METER, None)
    started_at, started = config.stash[_STARTED]
    target = config.stash.get(_TARGET, None)
    relay_url = target.base_url if target is not None else (opts.relay_url or "embedded")
    mode = (
        target.mode
        if target is not None
        else ("live" if opts.relay_url and not opts.upstream_url else "mock")
    )
    path = write_reports(
        out,
        results,
        relay_url=relay_url,
        profile=opts.profile,
        mode=mode,
        started_at=started_at,
        duration_s=time.perf_counter() - started,
        secrets=_run_secrets(config),
        mode_detail=run_mode(
            relay_key=bool(target.key if target is not None else opts.relay_key),
            admin_api=bool(target.admin_token if target is not None else opts.admin_token),
            upstream_journal=bool(target.upstream_url if target is not None else opts.upstream_url),
            embedded=bool(target is not None and target.embedded),
        ),
        extra=None if meter is None else {"live_cost": meter.to_json()},
    )
    config.stash[_REPORT_PATH] = path


_REPORT_PATH = pytest.StashKey[Path]()
_NOT_WRITTEN = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    path = config.stash.get(_REPORT_PATH, None)
    not_written = config.stash.get(_NOT_WRITTEN, None)
    meter = config.stash.get(_METER, None)
    if meter is not None:
        terminalreporter.write_sep("-", "relaygate live cost")
        if live_cost_options(config)[1]:
            terminalreporter.write_line(
                "dry run, nothing sent to the relay; the plan, as the suite ran it against a "
                "local stand-in:"
            )
        terminalreporter.write_line(meter.summary())
    if path is None and not_written is None:
        return
    results = list(config.stash[_RESULTS].values())
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    terminalreporter.write_sep("-", "relaygate conformance")
    terminalreporter.write_line(f"{len(results)} cases: {summary}")
    for result in results:
        if result.outcome == "deviation":
            terminalreporter.write_line(f"DEVIATION {result.meta.id}: {result.reason}")
    if path is not None:
        terminalreporter.write_line(f"report: {path} (+ conformance.html, audit.md)")
    else:
        terminalreporter.write_line(f"relaygate: {not_written}")


# -- fixtures -----------------------------------------------------------------------------
def _stop_session(line: str) -> NoReturn:
    """An unusable input stops the whole session with one line and pytest's usage-error code
    (4), instead of failing every case with the same error."""
    pytest.exit(f"relaygate: {line}", returncode=pytest.ExitCode.USAGE_ERROR)


def _preflight(opts: RelayOptions) -> None:
    """Before the first case that talks to a ``--relay-url`` relay: is it usable at all?"""
    from relaygate.preflight import DEFAULT_TIMEOUT_S, PreflightError, check_target

    assert opts.relay_url is not None
    try:
        check_target(
            opts.relay_url,
            opts.relay_key,
            admin_token=opts.admin_token,
            upstream_url=opts.upstream_url,
            profile=opts.profile,
            timeout_s=min(opts.timeout_s, DEFAULT_TIMEOUT_S),
            headers=opts.extra_headers,
        )
    except PreflightError as exc:
        _stop_session(str(exc))


@pytest.fixture(scope="session")
def relay(request: pytest.FixtureRequest) -> Iterator[RelayTarget]:
    """The relay under test; starts the embedded stack when no ``--relay-url`` is given."""
    opts = relay_options(request.config)
    if opts.relay_url and live_cost_options(request.config)[1]:
        yield from _dry_run_target(request.config, opts)
        return
    if opts.relay_url:
        _preflight(opts)
        target = RelayTarget(
            base_url=opts.relay_url,
            key=opts.relay_key,
            admin_token=opts.admin_token,
            upstream_url=opts.upstream_url.rstrip("/") if opts.upstream_url else None,
            mode="mock" if opts.upstream_url else "live",
            embedded=False,
            timeout_s=opts.timeout_s,
            extra_headers=opts.extra_headers,
            max_bytes=opts.max_bytes,
        )
        request.config.stash[_TARGET] = target
        yield target
        return
    from relaygate.preflight import PreflightError, check_profile
    from relaygate.stack import EmbeddedStack, StackError

    try:
        check_profile(opts.profile)  # before starting servers for nothing
    except PreflightError as exc:
        _stop_session(str(exc))

    stack = EmbeddedStack(faults=opts.faults)
    try:
        info = stack.start()
    except StackError as exc:
        pytest.fail(f"relaygate: the embedded stack did not start: {exc}", pytrace=False)
    target = RelayTarget(
        base_url=info.relay_url,
        key=info.relay_key,
        admin_token=info.admin_token,
        upstream_url=info.upstream_url,
        mode="mock",
        embedded=True,
        timeout_s=opts.timeout_s,
        stack=stack,
        extra_headers=opts.extra_headers,
        max_bytes=opts.max_bytes,
    )
    request.config.stash[_TARGET] = target
    try:
        yield target
    finally:
        stack.stop()


def _dry_run_target(config: pytest.Config, opts: RelayOptions) -> Iterator[RelayTarget]:
    """``--live-dry-run``: the embedded stack stands in for the relay, seen as a live customer
    sees it (a key, no admin token, no journal), so every request the run would send is
    metered while nothing reaches the relay."""
    from relaygate.stack import EmbeddedStack, StackError

    stack = EmbeddedStack()
    try:
        info = stack.start()
    except StackError as exc:
        pytest.fail(f"relaygate: the dry run's stand-in did not start: {exc}", pytrace=False)
    target = RelayTarget(
        base_url=info.relay_url,
        key=info.relay_key,
        admin_token=None,
        upstream_url=None,
        mode="live",
        embedded=True,
        timeout_s=opts.timeout_s,
        stack=stack,
        extra_headers=opts.extra_headers,
        max_bytes=opts.max_bytes,
    )
    config.stash[_TARGET] = target
    try:
        yield target
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest) -> Profile:
    """The relay's dialect (``--relay-profile``)."""
    from relaygate.preflight import PreflightError, check_profile

    try:
        return check_profile(relay_options(request.config).profile)
    except PreflightError as exc:
        _stop_session(str(exc))


@pytest.fixture(scope="session")
def client(
    request: pytest.FixtureRequest, relay: RelayTarget, profile: Profile
) -> Iterator[RelayClient]:
    """HTTP client to the relay, sending the funded key by default."""
    from relaygate.suite.client import RelayClient

    headers = {**profile.http.extra_headers, **relay.extra_headers}
    http = RelayClient(
        relay.base_url,
        relay.key,
        relay.timeout_s,
        headers,
        max_bytes=relay.max_bytes,
        secrets=relay.secrets,
    )
    http.meter = _make_meter(request.config, relay, profile)
    try:
        yield http
    finally:
        http.close()


@pytest.fixture(scope="session")
def _journal(relay: RelayTarget) -> Iterator[UpstreamJournal | None]:
    from relaygate.suite.client import UpstreamJournal

    if relay.upstream_url is None:
        yield None
        return
    journal = UpstreamJournal(relay.upstream_url, relay.timeout_s, relay.max_bytes)
    try:
        yield journal
    finally:
        journal.close()


@pytest.fixture
def upstream(_journal: UpstreamJournal | None) -> UpstreamJournal:
    """The mock upstream's journal; skips the case in live mode (no ground truth)."""
    if _journal is None:
        pytest.skip("needs ground truth: pass --upstream-url (the relaygate mock upstream)")
    return _journal


@pytest.fixture
def funded_key(relay: RelayTarget) -> str:
    if not relay.key:
        pytest.skip("needs a funded key: pass --relay-key or RELAYGATE_RELAY_KEY")
    return relay.key


def key_group(config: pytest.Config, profile: Profile) -> str:
    """``--relay-key-group``: the group of the given keys' user, whose ratio prices them. A
    group the profile does not price stops the session with one line."""
    from relaygate.preflight import PreflightError, check_key_group

    group = option_value(config, "--relay-key-group") or "default"
    try:
        check_key_group(profile, group)
    except PreflightError as exc:
        _stop_session(str(exc))
    return group


@pytest.fixture(scope="session")
def _provisioner(
    request: pytest.FixtureRequest, relay: RelayTarget, profile: Profile
) -> Iterator[Provisioner]:
    from relaygate.provision import KeyState, make_provisioner

    # Without an admin API the funded key is --relay-key (RELAYGATE_KEY_<STATE> for the rest),
    # in the group --relay-key-group names.
    static: dict[str | KeyState, str] | None = {KeyState.FUNDED: relay.key} if relay.key else None
    prov = make_provisioner(
        profile,
        relay.base_url,
        relay.admin_token,
        static_keys=static,
        timeout_s=relay.timeout_s,
        static_group=key_group(request.config, profile),
    )
    try:
        yield prov
    finally:
        prov.close()


@pytest.fixture
def provision(_provisioner: Provisioner) -> Provisioner:
    """Creates keys in given states; a state it cannot make skips the case with the reason."""
    return _provisioner


@pytest.fixture(scope="session")
def ledger(
    client: RelayClient, _provisioner: Provisioner, profile: Profile, relay: RelayTarget
) -> Ledger:
    """Balances and charges: the admin API, or else the key's own billing endpoints."""
    from relaygate.suite.ledger import Ledger

    return Ledger(client, _provisioner, profile, relay.secrets)


@pytest.fixture
def case_id(request: pytest.FixtureRequest) -> str:
    meta = request.config.stash[_META].get(request.node.nodeid)
    return meta.id if meta is not None else request.node.name


@pytest.fixture
def case_level(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Set this case's level (MUST or SHOULD) at run time, where the profile decides it (the
    shape area: SHOULD under ``faq``, MUST under ``strict-openai``); the marker's is the
    default."""

    def set_level(level: str) -> None:
        metas = request.config.stash[_META]
        meta = metas.get(request.node.nodeid)
        if meta is None:
            raise pytest.UsageError(f"{request.node.nodeid}: case_level outside a case")
        metas[request.node.nodeid] = dataclasses.replace(meta, level=level)
        request.node.user_properties[:] = [
            (name, level if name == "level" else value)
            for name, value in request.node.user_properties
        ]

    return set_level


@pytest.fixture
def tag(case_id: str) -> str:
    """A tag unique to this case run, for the upstream journal."""
    from relaygate.suite.client import new_tag

    return new_tag(case_id)
