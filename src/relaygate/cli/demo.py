"""``relaygate demo``: the whole gate in one command, with a progress display.

1. the conformance suite (embedded mock upstream + reference relay, or ``--relay-url``);
2. a short load run: ``StreamingChatUser`` streams and, on the embedded stack (or with
   ``--rate-limit`` / ``--rl-key``), the 429 prober ``RateLimitUser`` on keys of its own;
3. ``relaygate gate`` on both reports and ``reports/index.html`` (one self-contained page).

Both steps run in child processes (pytest and Locust own their interpreters) against ONE relay:
without ``--relay-url`` the demo starts the embedded stack once and hands its URL, keys, admin
token and upstream to both. Their output goes to ``suite.log`` and ``load.log``. Keys reach them
through the environment, never the command line.

Inputs are checked before anything runs (options, SLO rules, profile, then a preflight of the
relay). Reports are written to a temporary directory beside ``--report-dir`` and moved in only
when the run is complete: a bad option, a failed preflight, Ctrl-C or the ``--run-timeout``
watchdog leave the previous report as it was.

Exit codes: 0 gate passed, 1 gate failed (or the run did not finish), 2 unusable input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from relaygate.keys import mask_secrets
from relaygate.options import DEMO, options_for

__all__ = ["DEFAULT_SLOS", "add_arguments", "run"]

# What the demo judges the load run by when no --slo is given. Generous: they catch a relay
# that buffers streams, errors or ignores its limit, not one that is merely slow.
DEFAULT_SLOS = ("error_rate<=0.01", "ttft_p99_ms<=2000", "itl_p99_ms<=500")
PROBER_SLOS = ("rate_limit_accuracy>=0.9",)
CASE_TIMEOUT_S = 120
RUN_TIMEOUT_S = 900
# The prober's limit on the demo's own stack (Locust's default for its embedded stack too).
_STACK_RATE_LIMIT = "10/1s"
# Mock timing the load run asks the demo's own stack for (Locust's defaults for its stack).
_STACK_MOCK_TTFT_MS = "100"
_BAR = 28
# Everything a demo run writes into the report directory; a complete new run replaces these.
_OUTPUTS = (
    "conformance.json", "conformance.html", "audit.md", "junit.xml", "suite.log", "load.log",
    "load-summary.json", "load-metrics.csv", "locust.html", "locust_*.csv", "*.png", "index.html",
)  # fmt: skip

EPILOG = f"""without --slo the load run is judged by {", ".join(DEFAULT_SLOS)}; with the 429
prober also by {", ".join(PROBER_SLOS)}.

exit codes: 0 gate passed; 1 gate failed, or the run did not finish (watchdog);
2 unusable input (bad option or SLO rule, unknown profile, relay unreachable, key or admin
token refused). The previous report stays in place until a run completes."""


_GROUPS = {
    "target": "relay under test (default: the embedded stack)",
    "load": "load run",
    "gate": "gate",
}


def _add_table_options(section: str, group: Any) -> None:
    """The demo's options of the shared table (:mod:`relaygate.options`) in ``section``."""
    for option in options_for(DEMO):
        if option.section != section:
            continue
        if option.repeatable:
            group.add_argument(option.flag, action="append", default=[], help=option.help)
            continue
        # Read at parser build time, like every default: --help never prints the value.
        from_env = os.environ.get(option.env) or None
        group.add_argument(
            option.flag,
            type=option.type,
            default=from_env if from_env is not None else option.default,
            help=option.help_with_env,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    # Defaults never show in --help (argparse prints no %(default)s here): an env var may
    # hold a key.
    target = parser.add_argument_group(_GROUPS["target"])
    _add_table_options("target", target)
    load = parser.add_argument_group(_GROUPS["load"])
    load.add_argument("--load-seconds", type=int, default=35, help="run time (default 35)")
    load.add_argument("--users", type=int, default=6, help="streaming users (default 6)")
    load.add_argument("--no-load", action="store_true", help="conformance only")
    _add_table_options("load", load)
    gate = parser.add_argument_group(_GROUPS["gate"])
    _add_table_options("gate", gate)
    gate.add_argument(
        "--allow-deviations",
        action="store_true",
        help="documented profile deviations do not fail the gate",
    )
    gate.add_argument(
        "--allow-skip",
        action="append",
        default=[],
        metavar="CASE",
        help="skips that do not fail the gate: an area, a skip class or a case id glob "
        "(repeatable; as relaygate gate --allow-skip)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--case-timeout",
        type=_positive,
        default=CASE_TIMEOUT_S,
        metavar="S",
        help=f"per-case timeout of the suite, seconds (default {CASE_TIMEOUT_S})",
    )
    limits.add_argument(
        "--run-timeout",
        type=_positive,
        default=RUN_TIMEOUT_S,
        metavar="S",
        help=f"watchdog for the whole run, seconds (default {RUN_TIMEOUT_S}); when it fires the "
        "steps are stopped, the previous report is kept and the exit code is 1",
    )
    _add_table_options("output", parser)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Progress display


class _Display:
    """One status line, redrawn in place on a terminal, printed at milestones otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_plain = ""

    def update(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()

    def milestone(self, text: str) -> None:
        if text == self._last_plain:
            return
        self._last_plain = text
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()


def _bar(done: float, total: float) -> str:
    frac = 0.0 if total <= 0 else max(0.0, min(1.0, done / total))
    filled = round(frac * _BAR)
    return "[" + "#" * filled + "." * (_BAR - filled) + "]"


class _Overtime(Exception):
    """The ``--run-timeout`` watchdog fired."""


def _spawn(argv: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    # A session of its own: the watchdog and Ctrl-C stop the step and everything it started.
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the step's process group, SIGKILL after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)


def _watch(
    proc: subprocess.Popen[bytes],
    poll: Callable[[], str | None],
    display: _Display,
    deadline: float,
) -> int:
    try:
        while True:
            code = proc.poll()
            line = poll()
            if line:
                display.update(line)
            if code is not None:
                return code
            if time.monotonic() > deadline:
                raise _Overtime
            time.sleep(0.2)
    except BaseException:
        _stop(proc)
        raise


# ---------------------------------------------------------------------------------------------
# Steps


@dataclasses.dataclass(frozen=True)
class _Target:
    """The one relay both steps run against (``--relay-url`` or the demo's own stack)."""

    url: str
    key: str | None
    admin_token: str | None
    upstream_url: str | None
    profile: str | None
    rate_limit: str | None
    rl_key: str | None
    fairness_keys: tuple[str, ...] = ()
    embedded: bool = False
    key_group: str | None = None

    def __repr__(self) -> str:
        return f"_Target(url={self.url!r}, embedded={self.embedded})"


def _child_env(target: _Target) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    pairs = {
        "RELAYGATE_RELAY_URL": target.url,
        "RELAYGATE_RELAY_KEY": target.key,
        "RELAYGATE_RELAY_ADMIN_TOKEN": target.admin_token,
        "RELAYGATE_RELAY_PROFILE": target.profile,
        "RELAYGATE_RELAY_KEY_GROUP": target.key_group,
        "RELAYGATE_UPSTREAM_URL": target.upstream_url,
        "RELAYGATE_RL_KEY": target.rl_key,
        "RELAYGATE_FAIRNESS_KEYS": ",".join(target.fairness_keys),
    }
    # Keys for other states (static provisioning) pass through unchanged.
    pairs.update({k: v for k, v in os.environ.items() if k.startswith("RELAYGATE_KEY_")})
    env.update({k: v for k, v in pairs.items() if v})
    return env


def _run_suite(
    args: argparse.Namespace, target: _Target, out: Path, display: _Display, deadline: float
) -> int:
    from relaygate.cli.check import conformance_dir

    with tempfile.NamedTemporaryFile("w+", prefix="relaygate-progress-", delete=False) as tmp:
        progress_path = Path(tmp.name)
    env = _child_env(target) | {"RELAYGATE_PROGRESS_FILE": str(progress_path)}
    argv = [
        sys.executable, "-m", "pytest", str(conformance_dir()),
        "-p", "no:cacheprovider", "-p", "relaygate.progress", "-q", "-rfE", "--no-header",
        "-o", "addopts=", "--timeout", str(args.case_timeout),
        "--report-dir", str(out), "--junitxml", str(out / "junit.xml"),
    ]  # fmt: skip
    started = time.monotonic()
    state = {"total": 0, "done": 0, "failed": 0}
    offset = 0

    def poll() -> str:
        nonlocal offset
        try:
            with progress_path.open(encoding="utf-8") as fh:
                fh.seek(offset)
                chunk = fh.read()
                offset = fh.tell()
        except OSError:
            chunk = ""
        for line in chunk.splitlines():
            word = line.split(" ", 1)[0]
            if word == "total":
                state["total"] = int(line.split()[1])
            elif word:
                state["done"] += 1
                state["failed"] += word == "failed"
        bad = f", {state['failed']} failed" if state["failed"] else ""
        return (
            f"  conformance {_bar(state['done'], state['total'])} "
            f"{state['done']}/{state['total'] or '?'}{bad}  {time.monotonic() - started:4.0f} s"
        )

    try:
        with (out / "suite.log").open("wb") as log:
            code = _watch(_spawn(argv, env, log), poll, display, deadline)
        display.milestone(poll().rstrip())
    finally:
        progress_path.unlink(missing_ok=True)
    return code


def _run_load(
    args: argparse.Namespace,
    target: _Target,
    out: Path,
    display: _Display,
    slos: Sequence[str],
    probe: bool,
    deadline: float,
) -> int:
    from relaygate.load import loadtests_dir
    from relaygate.load.prober import PHASES

    env = _child_env(target)
    users = max(1, args.users) + (1 if probe else 0)
    argv = [
        sys.executable, "-m", "locust", "-f", str(loadtests_dir()),
        "--headless", "--only-summary", "-u", str(users), "-r", str(users),
        "-t", f"{args.load_seconds}s", "--stop-timeout", "10", "--report-dir", str(out),
        "--html", str(out / "locust.html"), "--csv", str(out / "locust"),
        "--host", target.url,
    ]  # fmt: skip
    if target.embedded:
        # Our own mock upstream behind it: ask for the mock timing Locust's stack would use.
        argv += ["--mock-ttft-ms", _STACK_MOCK_TTFT_MS]
    if target.rate_limit:
        argv += ["--rate-limit", target.rate_limit]
    for rule in slos:
        argv += ["--slo", rule]
    if probe:
        # Every phase but the retry-policy comparison (11 s): the rest fits in the run time.
        argv += ["--rl-phases", ",".join(p for p in PHASES if p != "retry_policies")]
    argv += ["StreamingChatUser"] + (["RateLimitUser"] if probe else [])
    log_path = out / "load.log"
    started = time.monotonic()

    def poll() -> str:
        phase = ""
        try:
            text = log_path.read_text(errors="replace")
        except OSError:
            text = ""
        marker = text.rfind("429 probe: phase ")
        if marker >= 0:
            phase = " · 429 probe: " + text[marker + 17 :].split("\n", 1)[0].strip()
        elapsed = time.monotonic() - started
        return (
            f"  load        {_bar(elapsed, args.load_seconds + 5)} "
            f"{min(elapsed, args.load_seconds):3.0f}/{args.load_seconds} s{phase}"
        )

    with log_path.open("wb") as log:
        code = _watch(_spawn(argv, env, log), poll, display, deadline)
    display.milestone(
        f"  load        {_bar(1, 1)} {args.load_seconds}/{args.load_seconds} s "
        f"(exit {code}; {time.monotonic() - started:.0f} s)"
    )
    return code


def _read(path: Path) -> dict[str, Any] | None:
    from relaygate.gate import GateInputError, load_report

    kind = "conformance" if path.name.startswith("conformance") else "load"
    try:
        return load_report(path, kind)
    except GateInputError as exc:
        print(f"relaygate demo: {exc}", file=sys.stderr)
        return None


def _validate(args: argparse.Namespace, slos: Sequence[str]) -> str | None:
    """The first unusable option as one line, checked before anything runs or is touched."""
    from relaygate.gate import check_allow_skips
    from relaygate.load.prober import parse_rate_limit
    from relaygate.load.slo import parse_rule
    from relaygate.preflight import PreflightError, check_key_group, check_profile

    if args.relay_key and not args.relay_url:
        return "--relay-key needs --relay-url"
    if args.load_seconds <= 0 or args.users <= 0:
        return "--load-seconds and --users must be at least 1"
    for rule in slos:
        try:
            parse_rule(rule)
        except ValueError as exc:
            return f"--slo: {exc}"
    try:
        check_allow_skips(args.allow_skip or ())
    except ValueError as exc:
        return str(exc)
    if args.rate_limit:
        try:
            parse_rate_limit(args.rate_limit)
        except ValueError as exc:
            return f"--rate-limit: {exc}"
    try:
        check_key_group(check_profile(args.relay_profile or "faq"), args.relay_key_group)
    except PreflightError as exc:
        return str(exc)
    report_dir = Path(args.report_dir)
    if report_dir.exists() and not report_dir.is_dir():
        return f"--report-dir {args.report_dir} is a file, not a directory"
    return None


def _given_target(args: argparse.Namespace) -> _Target:
    """``--relay-url`` after its preflight (raises :class:`PreflightError`)."""
    from relaygate.preflight import check_target
    from relaygate.suite.target import normalize_base_url

    check_target(
        args.relay_url,
        args.relay_key,
        admin_token=args.relay_admin_token,
        upstream_url=args.upstream_url,
        profile=args.relay_profile or "faq",
    )
    return _Target(
        url=normalize_base_url(args.relay_url),
        key=args.relay_key,
        admin_token=args.relay_admin_token,
        upstream_url=args.upstream_url,
        profile=args.relay_profile,
        rate_limit=args.rate_limit,
        rl_key=args.rl_key,
        key_group=args.relay_key_group,
    )


def _stack_target(args: argparse.Namespace, stack: Any) -> _Target:
    """The demo's own stack: the prober gets rate-limited keys of its own."""
    info = stack.start()
    rate_limit = args.rate_limit or _STACK_RATE_LIMIT
    return _Target(
        url=info.relay_url,
        key=info.relay_key,
        admin_token=info.admin_token,
        upstream_url=info.upstream_url,
        profile=args.relay_profile,
        rate_limit=rate_limit,
        rl_key=stack.new_key(rate_limit=rate_limit),
        fairness_keys=tuple(stack.new_key(rate_limit=rate_limit) for _ in range(3)),
        embedded=True,
    )


def _swap_in(new: Path, out: Path) -> None:
    """Move a complete run's files into ``out`` (one rename each), then drop what the previous
    run left that this one did not write (e.g. ``load-summary.json`` after ``--no-load``)."""
    out.mkdir(parents=True, exist_ok=True)
    written = set()
    for path in sorted(new.iterdir()):
        os.replace(path, out / path.name)
        written.add(path.name)
    for pattern in _OUTPUTS:
        for stale in out.glob(pattern):
            if stale.name not in written and stale.is_file():
                stale.unlink()


def run(args: argparse.Namespace) -> int:
    from relaygate import gate
    from relaygate.preflight import PreflightError
    from relaygate.stack import EmbeddedStack, StackError

    probe = not args.relay_url or bool(args.rate_limit or args.rl_key)
    slos = list(args.slo or [*DEFAULT_SLOS, *(PROBER_SLOS if probe else ())])
    problem = _validate(args, slos)
    if problem is not None:
        print(f"relaygate demo: {problem}", file=sys.stderr)
        return gate.EXIT_USAGE
    started = time.monotonic()
    deadline = started + args.run_timeout
    out = Path(args.report_dir)
    stack = EmbeddedStack() if not args.relay_url else None
    work: Path | None = None
    display = _Display(sys.stderr)
    step = "the preflight"
    previous_sigterm = signal.signal(signal.SIGTERM, _sigterm)
    try:
        if stack is None:
            target = _given_target(args)
            where = mask_secrets(target.url, args.relay_key, args.relay_admin_token, args.rl_key)
        else:
            step = "starting the embedded stack"
            target = _stack_target(args, stack)
            where = f"the embedded stack (mock upstream + reference relay at {target.url})"
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}-new-", dir=out.parent))
        display.milestone(f"relaygate demo: gating {where}")
        step = "the conformance suite"
        _run_suite(args, target, work, display, deadline)
        if not args.no_load:
            step = "the load run"
            _run_load(args, target, work, display, slos, probe, deadline)
        code = _judge(args, target, work)
        if code is None:
            return gate.EXIT_FAILED
        _swap_in(work, out)
        page = out / "index.html"
        print(f"\nreport: {page.resolve()}  ({time.monotonic() - started:.0f} s)")
        return code
    except (PreflightError, gate.GateInputError) as exc:
        # GateInputError: an --allow-skip value the gate does not know (it checks them itself).
        print(f"relaygate demo: {exc}", file=sys.stderr)
        return gate.EXIT_USAGE
    except StackError as exc:
        print(f"relaygate demo: the embedded stack did not start: {exc}", file=sys.stderr)
        return gate.EXIT_FAILED
    except _Overtime:
        print(
            f"\nrelaygate demo: --run-timeout {args.run_timeout} s passed during {step}; "
            f"stopped it, the previous report in {out} is kept",
            file=sys.stderr,
        )
        return gate.EXIT_FAILED
    except KeyboardInterrupt:
        print(
            f"\nrelaygate demo: interrupted; the previous report in {out} is kept", file=sys.stderr
        )
        raise
    finally:
        if stack is not None:
            stack.stop()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_sigterm)


def _sigterm(_signum: int, _frame: Any) -> None:
    # A cancelled CI job: stop the steps and the stack and keep the report, as Ctrl-C does.
    raise KeyboardInterrupt


def _judge(
    args: argparse.Namespace,
    target: _Target,
    work: Path,
) -> int | None:
    """Gate the reports in ``work`` and write its page there; the exit code, or ``None`` when
    neither step produced anything (the run is incomplete: nothing to swap in)."""
    from relaygate import gate
    from relaygate.report.page import write_page

    secrets = [target.key, target.admin_token, target.rl_key, *target.fairness_keys]
    secrets += [v for k, v in os.environ.items() if k.startswith("RELAYGATE_KEY_")]
    conformance = _read(work / "conformance.json")
    load = None if args.no_load else _read(work / "load-summary.json")
    missing = []
    if conformance is None:
        missing.append("the conformance suite wrote no report (see suite.log)")
        try:
            tail = (work / "suite.log").read_text(errors="replace").splitlines()[-12:]
        except OSError:
            tail = []
        print(mask_secrets("\n".join(tail), *secrets), file=sys.stderr)
    if load is None and not args.no_load:
        missing.append("the load run wrote no summary (see load.log)")
    if conformance is None and load is None:
        print(f"relaygate demo: {'; '.join(missing)}", file=sys.stderr)
        return None
    verdict = gate.evaluate(
        conformance,
        load,
        slos=(),
        allow_deviations=args.allow_deviations,
        allow_skips=tuple(args.allow_skip or ()),
    )
    if missing:  # a step that produced nothing fails the gate: never a pass by omission
        verdict = dataclasses.replace(verdict, passed=False, reasons=(*missing, *verdict.reasons))
    write_page(
        work / "index.html",
        conformance,
        load,
        plots_dir=work,
        verdict=verdict,
        title="relaygate report",
        secrets=secrets,
    )
    print(mask_secrets(gate.render(verdict), *secrets))
    return verdict.exit_code
