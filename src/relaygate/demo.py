"""``relaygate demo``: the whole gate in one command, with a progress display.

1. the conformance suite (embedded mock upstream + reference relay, or ``--relay-url``);
2. a short load run: ``StreamingChatUser`` streams and, on the embedded stack (or with
   ``--rate-limit`` / ``--rl-key``), the 429 prober ``RateLimitUser`` on keys of its own;
3. ``relaygate gate`` on both reports and ``reports/index.html`` (one self-contained page).

Both steps run in child processes (pytest and Locust own their interpreters); their output goes
to ``<report dir>/suite.log`` and ``load.log``. Keys reach them through the environment, never
the command line. The exit code is the gate's: 0 passed, 1 failed, 2 unusable input.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from relaygate.keys import mask_secrets

__all__ = ["DEFAULT_SLOS", "add_arguments", "run"]

# What the demo judges the load run by when no --slo is given. Generous: they catch a relay
# that buffers streams, errors or ignores its limit, not one that is merely slow.
DEFAULT_SLOS = ("error_rate<=0.01", "ttft_p99_ms<=2000", "itl_p99_ms<=500")
PROBER_SLOS = ("rate_limit_accuracy>=0.9",)
_BAR = 28


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def env(name: str) -> str | None:
        return os.environ.get(name) or None

    target = parser.add_argument_group(
        "relay under test (default: the embedded stack); each also read from its env var"
    )
    for option, var, text in (
        ("--relay-url", "RELAYGATE_RELAY_URL", "base URL of the relay (with /v1 or not)"),
        (
            "--relay-key",
            "RELAYGATE_RELAY_KEY",
            "a funded key (prefer the env var: argv is visible)",
        ),
        ("--relay-admin-token", "RELAYGATE_RELAY_ADMIN_TOKEN", "admin token (provisioning)"),
        ("--relay-profile", "RELAYGATE_RELAY_PROFILE", "profile name or TOML path (default faq)"),
        ("--upstream-url", "RELAYGATE_UPSTREAM_URL", "the relaygate mock upstream it points at"),
    ):
        target.add_argument(option, default=env(var), help=f"{text} [env {var}]")
    load = parser.add_argument_group("load run")
    load.add_argument("--load-seconds", type=int, default=35, help="run time (default 35)")
    load.add_argument("--users", type=int, default=6, help="streaming users (default 6)")
    load.add_argument("--no-load", action="store_true", help="conformance only")
    load.add_argument(
        "--rate-limit",
        default=env("RELAYGATE_RATE_LIMIT"),
        help="declared per-key limit N/Ws: runs the 429 prober [env RELAYGATE_RATE_LIMIT]",
    )
    load.add_argument(
        "--rl-key",
        default=env("RELAYGATE_RL_KEY"),
        help="the 429 prober's own key [env RELAYGATE_RL_KEY]",
    )
    gate = parser.add_argument_group("gate")
    gate.add_argument(
        "--slo",
        action="append",
        default=None,
        help=f"SLO rule, repeatable (default: {', '.join(DEFAULT_SLOS)}; with the prober also "
        f"{', '.join(PROBER_SLOS)})",
    )
    gate.add_argument(
        "--allow-deviations",
        action="store_true",
        help="documented profile deviations do not fail the gate",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("reports"),
        help="where the reports and index.html go (default reports)",
    )


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


def _watch(proc: subprocess.Popen[bytes], poll: Callable[[], str | None], display: _Display) -> int:
    while True:
        code = proc.poll()
        line = poll()
        if line:
            display.update(line)
        if code is not None:
            return code
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# Steps


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    key = args.relay_key or os.environ.get("RELAYGATE_RELAY_KEY")
    pairs = {
        "RELAYGATE_RELAY_URL": args.relay_url,
        "RELAYGATE_RELAY_KEY": key,
        "RELAYGATE_RELAY_ADMIN_TOKEN": args.relay_admin_token,
        "RELAYGATE_RELAY_PROFILE": args.relay_profile,
        "RELAYGATE_UPSTREAM_URL": args.upstream_url,
    }
    # Keys for other states (static provisioning) pass through unchanged.
    pairs.update({k: v for k, v in os.environ.items() if k.startswith("RELAYGATE_KEY_")})
    env.update({k: v for k, v in pairs.items() if v})
    return env


def _run_suite(args: argparse.Namespace, out: Path, display: _Display) -> int:
    from relaygate.check import conformance_dir

    with tempfile.NamedTemporaryFile("w+", prefix="relaygate-progress-", delete=False) as tmp:
        progress_path = Path(tmp.name)
    env = _child_env(args) | {"RELAYGATE_PROGRESS_FILE": str(progress_path)}
    argv = [
        sys.executable, "-m", "pytest", str(conformance_dir()),
        "-p", "no:cacheprovider", "-p", "relaygate.progress", "-q", "-rfE", "--no-header",
        "-o", "addopts=", "--report-dir", str(out), "--junitxml", str(out / "junit.xml"),
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
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
            code = _watch(proc, poll, display)
        display.milestone(poll().rstrip())
    finally:
        progress_path.unlink(missing_ok=True)
    return code


def _run_load(
    args: argparse.Namespace, out: Path, display: _Display, slos: Sequence[str], probe: bool
) -> int:
    from relaygate.load import loadtests_dir
    from relaygate.load.ratelimit import PHASES

    env = _child_env(args)
    if args.rl_key:
        env["RELAYGATE_RL_KEY"] = args.rl_key
    users = max(1, args.users) + (1 if probe else 0)
    argv = [
        sys.executable, "-m", "locust", "-f", str(loadtests_dir()),
        "--headless", "--only-summary", "-u", str(users), "-r", str(users),
        "-t", f"{args.load_seconds}s", "--stop-timeout", "10", "--report-dir", str(out),
        "--html", str(out / "locust.html"), "--csv", str(out / "locust"),
    ]  # fmt: skip
    if args.relay_url:
        from relaygate.suite.target import normalize_base_url

        root = normalize_base_url(args.relay_url).removesuffix("/v1")
        argv += ["--host", root]
    if args.rate_limit:
        argv += ["--rate-limit", args.rate_limit]
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
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            code = _watch(proc, poll, display)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(30)
            raise
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


def run(args: argparse.Namespace) -> int:
    from relaygate import gate
    from relaygate.report.page import write_page

    if args.relay_key and not args.relay_url:
        print("relaygate demo: --relay-key needs --relay-url", file=sys.stderr)
        return gate.EXIT_USAGE
    out: Path = args.report_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("conformance.json", "load-summary.json", "index.html"):
        (out / stale).unlink(missing_ok=True)
    secrets = [args.relay_key, args.relay_admin_token, args.rl_key]
    secrets += [v for k, v in os.environ.items() if k.startswith("RELAYGATE_KEY_")]
    target = (
        mask_secrets(args.relay_url, *secrets)
        if args.relay_url
        else "the embedded stack (mock upstream + reference relay)"
    )
    probe = not args.relay_url or bool(args.rate_limit or args.rl_key)
    slos = list(args.slo or [*DEFAULT_SLOS, *(PROBER_SLOS if probe else ())])
    from relaygate.load.slo import parse_rule

    try:
        for rule in slos:
            parse_rule(rule)
    except ValueError as exc:
        print(f"relaygate demo: --slo: {exc}", file=sys.stderr)
        return gate.EXIT_USAGE
    display = _Display(sys.stderr)
    started = time.monotonic()
    display.milestone(f"relaygate demo: gating {target}")
    _run_suite(args, out, display)
    conformance = _read(out / "conformance.json")
    load = None
    if not args.no_load:
        _run_load(args, out, display, slos, probe)
        load = _read(out / "load-summary.json")
    missing = []
    if conformance is None:
        missing.append(f"the conformance suite wrote no report (see {out / 'suite.log'})")
        try:
            tail = (out / "suite.log").read_text(errors="replace").splitlines()[-12:]
        except OSError:
            tail = []
        print(mask_secrets("\n".join(tail), *secrets), file=sys.stderr)
    if load is None and not args.no_load:
        missing.append(f"the load run wrote no summary (see {out / 'load.log'})")
    if conformance is None and load is None:
        print(f"relaygate demo: {'; '.join(missing)}", file=sys.stderr)
        return gate.EXIT_FAILED
    verdict = gate.evaluate(conformance, load, slos=(), allow_deviations=args.allow_deviations)
    if missing:  # a step that produced nothing fails the gate: never a pass by omission
        verdict = dataclasses.replace(verdict, passed=False, reasons=(*missing, *verdict.reasons))
    page = write_page(
        out / "index.html",
        conformance,
        load,
        plots_dir=out,
        verdict=verdict,
        title="relaygate report",
        secrets=secrets,
    )
    print(mask_secrets(gate.render(verdict), *secrets))
    print(f"\nreport: {page.resolve()}  ({time.monotonic() - started:.0f} s)")
    return verdict.exit_code
