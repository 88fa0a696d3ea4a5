"""``relaygate relay …``: install, start, stop and check third-party relays; build the matrix.

    relaygate relay list
    relaygate relay start litellm [--json]      # mock upstream + relay, detached
    relaygate relay stop litellm
    relaygate relay run litellm openai-forward  # start, suite, short load run, stop
    relaygate relay run litellm:quickstart      # one documented configuration of a relay
    relaygate relay matrix                      # every relay + the reference relay, matrix.md/html

A relay name alone runs its default configuration; ``name:configuration`` another deployment
its documentation shows (``relaygate relay list`` names them). Each is a row of the matrix.

Relays install into ``$RELAYGATE_RELAYS_HOME`` (default ``~/.cache/relaygate/relays``), each in
its own venv or node_modules; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from relaygate.argtypes import port_number
from relaygate.keys import mask_key

__all__ = ["add_arguments", "run"]

REFERENCE = "reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="relay_command", metavar="ACTION")
    sub.add_parser("list", help="the relays relaygate can run, their pinned versions")
    p = sub.add_parser("install", help="install relays (pinned) into the relays home")
    p.add_argument("names", nargs="+", metavar="NAME")
    p = sub.add_parser("start", help="start a relay (+ a mock upstream) detached, print its URL")
    p.add_argument("name", metavar="NAME[:CONFIG]")
    p.add_argument("--port", type=port_number, default=0, help="relay port (default: free)")
    p.add_argument("--upstream-url", default=None, help="use this upstream, not a new mock")
    p.add_argument("--upstream-key", default=None, help="the upstream's key")
    p.add_argument("--json", action="store_true", help="print the state as JSON (keys shown)")
    p = sub.add_parser("stop", help="stop a relay started with 'relay start'")
    p.add_argument("name", metavar="NAME[:CONFIG]")
    for action, text in (
        ("run", "start each relay, run the suite and a short load run, stop it"),
        ("matrix", "run every relay (and the reference relay), write matrix.md and matrix.html"),
    ):
        p = sub.add_parser(action, help=text, description=text)
        p.add_argument(
            "names",
            nargs="*",
            metavar="NAME[:CONFIG]",
            help="a relay (its default configuration) or relay:configuration; default: all, "
            + ("every configuration" if action == "matrix" else "default configurations"),
        )
        p.add_argument("--report-dir", type=Path, default=Path("reports/relays"))
        p.add_argument("--load-seconds", type=int, default=12, help="0: no load run")
        p.add_argument("--load-users", type=int, default=10)
        if action == "matrix":
            p.add_argument("--render-only", action="store_true", help="only rebuild matrix.md/html")
            p.add_argument(
                "--no-reference", action="store_true", help="leave out the reference relay"
            )


def _driver_names(
    names: list[str], *, reference_ok: bool = True, every_configuration: bool = False
) -> list[str]:
    """The rows to run (``name`` or ``name:configuration``), checked; all when none given."""
    from relaygate.thirdparty import DRIVERS, get_driver
    from relaygate.thirdparty.base import parse_row

    known = [*DRIVERS, *([REFERENCE] if reference_ok else [])]
    unknown = [n for n in names if parse_row(n)[0] not in known]
    if unknown:
        hint = "" if reference_ok else f" ({REFERENCE} is started with 'relaygate up')"
        raise SystemExit(
            f"relaygate relay: unknown relay {', '.join(unknown)}; known: {', '.join(known)}{hint}"
        )
    rows = []
    for row in names:
        name, configuration = parse_row(row)
        if name == REFERENCE:
            if ":" in row:
                raise SystemExit(f"relaygate relay: {REFERENCE} has one configuration only")
            rows.append(row)
            continue
        driver = get_driver(name)
        try:
            driver.configuration(configuration)
        except KeyError as exc:
            raise SystemExit(f"relaygate relay: {exc.args[0]}") from None
        rows.append(driver.row(configuration))
    if rows:
        return rows
    if every_configuration:
        return [row for name in DRIVERS for row in get_driver(name).rows()]
    return list(DRIVERS)


def _cmd_list() -> int:
    from relaygate.thirdparty import DRIVERS, get_driver
    from relaygate.thirdparty.launcher import install_dir_of

    for name in DRIVERS:
        driver = get_driver(name)
        state = "installed" if driver.is_installed(install_dir_of(name)) else "not installed"
        print(f"{name:16} {driver.version:10} {state}")
        print(f"{'':16} {driver.description}")
        for configuration in driver.all_configurations():
            row = driver.row(configuration.name)
            profile = driver.profile_of(configuration.name)
            print(f"  {row:30} profile {profile:22} {configuration.description}")
    return 0


def _cmd_install(names: list[str]) -> int:
    from relaygate.thirdparty import get_driver
    from relaygate.thirdparty.base import InstallError
    from relaygate.thirdparty.launcher import ensure_installed

    code = 0
    from relaygate.thirdparty.base import parse_row

    drivers = dict.fromkeys(parse_row(row)[0] for row in _driver_names(names))
    for name in drivers:
        if name == REFERENCE:
            continue
        try:
            ensure_installed(get_driver(name), out=sys.stderr)
        except InstallError as exc:
            print(f"relaygate relay install: {exc}", file=sys.stderr)
            code = 1
    return code


def _cmd_start(args: argparse.Namespace) -> int:
    from relaygate.thirdparty.base import InstallError
    from relaygate.thirdparty.launcher import RelayLauncher, RelayStartError

    (row,) = _driver_names([args.name], reference_ok=False)
    launcher = RelayLauncher(
        row, port=args.port, upstream_url=args.upstream_url, upstream_key=args.upstream_key
    )
    try:
        running = launcher.start()
    except (InstallError, RelayStartError) as exc:
        print(f"relaygate relay start: {exc}", file=sys.stderr)
        return 1
    launcher.detach()
    if args.json:
        print(json.dumps(running.to_json(show_keys=True)))
    else:
        print(f"{running.row} {running.version} listening on {running.base_url}")
        print(f"  upstream (mock): {running.upstream_url}")
        for state, key in running.keys.items():
            print(f"  key {state.lower():16} {mask_key(key)}")
        print(f"  state (keys in clear): {running.run_dir / 'relay.json'}")
        print(f"  stop with: relaygate relay stop {running.row}")
    return 0


def _cmd_stop(name: str) -> int:
    from relaygate.thirdparty.launcher import stop_recorded

    (name,) = _driver_names([name], reference_ok=False)
    if not stop_recorded(name):
        print(f"relaygate relay stop: {name} is not running (no state file)", file=sys.stderr)
        return 1
    return 0


def _run_reference(out_dir: Path, load_seconds: int, load_users: int) -> dict[str, Any]:
    """The reference relay (embedded stack, faq profile) as the matrix's baseline column."""
    from relaygate import __version__
    from relaygate.cli.check import conformance_dir
    from relaygate.load import loadtests_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    steps = []
    started = time.monotonic()
    suite = [
        sys.executable, "-m", "pytest", str(conformance_dir()), "-p", "no:cacheprovider",
        "-q", "--no-header", "-o", "addopts=", "--report-dir", str(out_dir),
        "--junitxml", str(out_dir / "junit.xml"),
    ]  # fmt: skip
    with (out_dir / "suite.log").open("w") as log:
        code = subprocess.call(suite, stdout=log, stderr=subprocess.STDOUT)
    steps.append({"step": "suite", "exit_code": code, "duration_s": time.monotonic() - started})
    if load_seconds > 0:
        started = time.monotonic()
        load = [
            sys.executable, "-m", "locust", "-f", str(loadtests_dir() / "streaming_chat.py"),
            "--headless", "--only-summary", "-u", str(load_users), "-r", str(load_users),
            "-t", f"{load_seconds}s", "--mock-ttft-ms", "100", "--mock-itl-ms", "10",
            "--mock-output-tokens", "32", "--report-dir", str(out_dir), "StreamingChatUser",
        ]  # fmt: skip
        with (out_dir / "load.log").open("w") as log:
            code = subprocess.call(load, stdout=log, stderr=subprocess.STDOUT, timeout=300)
        steps.append({"step": "load", "exit_code": code, "duration_s": time.monotonic() - started})
    return {
        "relay": REFERENCE,
        "version": __version__,
        "profile": "faq",
        "steps": steps,
        "error": None,
    }


def _run_one(row: str, report_dir: Path, load_seconds: int, load_users: int) -> dict[str, Any]:
    from relaygate.thirdparty import get_driver
    from relaygate.thirdparty.base import InstallError, parse_row, write_private
    from relaygate.thirdparty.launcher import RelayLauncher, RelayStartError
    from relaygate.thirdparty.runner import LoadPlan, run_load, run_suite

    out_dir = report_dir / row
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("conformance.json", "conformance.html", "load-summary.json", "run.json"):
        (out_dir / stale).unlink(missing_ok=True)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    if row == REFERENCE:
        record = _run_reference(out_dir, load_seconds, load_users)
    else:
        name, configuration = parse_row(row)
        driver = get_driver(name)
        record = {
            "relay": row,
            "driver": name,
            "version": driver.version,
            "profile": driver.profile_of(configuration),
            "configuration": driver.configuration(configuration).to_json(),
            "steps": [],
            "error": None,
        }
        try:
            with RelayLauncher(row) as running:
                suite = run_suite(running, out_dir)
                record["steps"].append(suite.to_json())
                if load_seconds > 0:
                    plan = LoadPlan(users=load_users, spawn_rate=load_users, seconds=load_seconds)
                    record["steps"].append(run_load(running, out_dir, plan).to_json())
                record["error"] = suite.error
        except (InstallError, RelayStartError) as exc:
            record["error"] = str(exc)
    record["started_at"] = started_at
    record["duration_s"] = round(time.monotonic() - t0, 1)
    write_private(out_dir / "run.json", json.dumps(record, indent=2))  # may name the relay's keys
    conf = out_dir / "conformance.json"
    counts = json.loads(conf.read_text())["summary"] if conf.is_file() else None
    _write_relay_page(out_dir, row, record)
    print(
        f"relaygate relay: {row}: {counts or 'no conformance report'}"
        + (f" — {str(record['error']).splitlines()[0]}" if record["error"] else "")
        + f" ({record['duration_s']} s)",
        file=sys.stderr,
    )
    return record


def _write_relay_page(out_dir: Path, name: str, record: dict[str, Any]) -> None:
    """``<relay>/index.html``: the same self-contained page as ``relaygate demo`` writes,
    without a verdict (the matrix reports; it does not gate)."""
    from relaygate.report.page import write_page
    from relaygate.thirdparty.runner import read_json

    conformance = read_json(out_dir / "conformance.json")
    load = read_json(out_dir / "load-summary.json")
    if conformance is None and load is None:
        return
    write_page(
        out_dir / "index.html",
        conformance,
        load,
        plots_dir=out_dir,
        title=f"relaygate report: {name} {record.get('version', '')}".rstrip(),
    )


def _cmd_run(args: argparse.Namespace, *, matrix: bool) -> int:
    from relaygate.thirdparty.matrix import write_matrix

    names = _driver_names(list(args.names), every_configuration=matrix)
    if matrix and not args.names and not args.no_reference:
        names = [REFERENCE, *names]
    report_dir: Path = args.report_dir
    if not (matrix and args.render_only):
        for name in names:
            _run_one(name, report_dir, args.load_seconds, args.load_users)
    else:
        from relaygate.thirdparty.runner import read_json

        for name in names:
            if (report_dir / name).is_dir():
                record = read_json(report_dir / name / "run.json") or {}
                _write_relay_page(report_dir / name, name, record)
    if matrix:
        md, page = write_matrix(report_dir, names)
        print(f"relaygate relay: matrix written: {md} and {page}")
    return 0


def run(args: argparse.Namespace) -> int:
    action = args.relay_command
    if action == "list":
        return _cmd_list()
    if action == "install":
        return _cmd_install(list(args.names))
    if action == "start":
        return _cmd_start(args)
    if action == "stop":
        return _cmd_stop(args.name)
    if action in ("run", "matrix"):
        return _cmd_run(args, matrix=action == "matrix")
    print("usage: relaygate relay {list,install,start,stop,run,matrix} …", file=sys.stderr)
    return 2
