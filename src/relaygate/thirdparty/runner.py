"""Run the conformance suite and a short load run against a started third-party relay.

Both run in child processes (pytest and Locust must own their interpreter: assert rewriting,
gevent's monkey-patching) with the relay's keys in ``RELAYGATE_KEY_<STATE>`` and its run-time
headers in ``RELAYGATE_RELAY_HEADERS``. Each writes into ``<report dir>/<relay>/``:
``conformance.json`` + ``.html`` + ``junit.xml``, ``load-summary.json`` + plots, and the
captured output of both (``suite.log``, ``load.log``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from relaygate.keys import mask_secrets
from relaygate.thirdparty.launcher import RunningRelay

__all__ = ["LoadPlan", "StepResult", "run_load", "run_suite"]


# The 429 prober's program in the matrix: what fits in half a minute on a per-second limit.
PROBER_PHASES = "discover,steps,retry_after,recovery"
PROBER_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one step (suite or load) did: its exit code, wall time and where its output is."""

    step: str
    exit_code: int
    duration_s: float
    log_path: Path
    report: Path | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 2),
            "log": str(self.log_path),
            "report": str(self.report) if self.report else None,
            "error": self.error,
        }


@dataclasses.dataclass(frozen=True)
class LoadPlan:
    """The short, bounded load run of the matrix (per relay)."""

    users: int = 10
    spawn_rate: int = 10
    seconds: int = 12
    mock_ttft_ms: float = 100.0
    mock_itl_ms: float = 10.0
    mock_output_tokens: int = 32


def _env(relay: RunningRelay) -> dict[str, str]:
    env = dict(os.environ)
    for name in [n for n in env if n.startswith("RELAYGATE_")]:
        del env[name]  # the caller's own settings must not leak into a matrix run
    env.update(relay.suite_env())
    if relay.extra_headers:
        env["RELAYGATE_RELAY_HEADERS"] = "\n".join(
            f"{k}: {v}" for k, v in relay.extra_headers.items()
        )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _secrets(relay: RunningRelay) -> list[str]:
    found = [*relay.keys.values(), relay.upstream_key]
    if relay.admin_token:
        found.append(relay.admin_token)
    return found


def _run(
    step: str,
    argv: list[str],
    relay: RunningRelay,
    log_path: Path,
    report: Path,
    timeout_s: float,
    extra_env: dict[str, str] | None = None,
) -> StepResult:
    started = time.monotonic()
    error: str | None = None
    try:
        proc = subprocess.run(
            argv,
            env=_env(relay) | (extra_env or {}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
        output = proc.stdout
        code = proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = exc.output or b""
        code = 124
        error = f"{step} did not finish in {timeout_s:.0f} s (killed)"
    text = mask_secrets(output.decode("utf-8", "replace"), *_secrets(relay))
    log_path.write_text(text + (f"\n{error}\n" if error else ""))
    if code not in (0, 1) and error is None:
        error = f"{step} exited with {code}; see {log_path.name}"
    if not report.is_file():
        error = error or f"{step} wrote no {report.name}; see {log_path.name}"
    return StepResult(
        step=step,
        exit_code=code,
        duration_s=time.monotonic() - started,
        log_path=log_path,
        report=report if report.is_file() else None,
        error=error,
    )


def run_suite(relay: RunningRelay, out_dir: Path, *, timeout_s: float = 300.0) -> StepResult:
    """The conformance suite against ``relay`` with its profile; ``conformance.json`` in out_dir."""
    from relaygate.cli.check import conformance_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "conformance.json").unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "pytest", str(conformance_dir()),
        "-p", "no:cacheprovider", "-q", "-rfEs", "--no-header",
        "-o", "addopts=", "-o", "testpaths=",
        "--relay-url", relay.base_url,
        "--relay-key", relay.funded_key,
        "--relay-profile", relay.profile,
        "--upstream-url", relay.upstream_url,
        "--report-dir", str(out_dir),
        "--junitxml", str(out_dir / "junit.xml"),
    ]  # fmt: skip
    if relay.admin_token:
        argv += ["--relay-admin-token", relay.admin_token]
    return _run(
        "suite", argv, relay, out_dir / "suite.log", out_dir / "conformance.json", timeout_s
    )


def run_load(
    relay: RunningRelay, out_dir: Path, plan: LoadPlan | None = None, *, timeout_s: float = 180.0
) -> StepResult:
    """A short streaming load run (StreamingChatUser) through ``relay`` against the mock."""
    from relaygate.load import loadtests_dir

    plan = plan or LoadPlan()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "load-summary.json").unlink(missing_ok=True)
    # A driver that configured a rate-limited key hands it over as "--rl-key K": then the 429
    # prober runs beside the streams, on that key (through the environment, never argv).
    extra = list(relay.load_args)
    rl_key = None
    if "--rl-key" in extra:
        at = extra.index("--rl-key")
        rl_key = extra[at + 1]
        del extra[at : at + 2]
    seconds = max(plan.seconds, PROBER_SECONDS) if rl_key else plan.seconds
    users = plan.users + (1 if rl_key else 0)
    classes = ["StreamingChatUser"] + (
        ["RateLimitUser", "--rl-phases", PROBER_PHASES] if rl_key else []
    )
    argv = [
        sys.executable, "-m", "locust",
        "-f", str(loadtests_dir()),
        "--host", relay.root_url,
        "--relay-key", relay.funded_key,
        "--headless", "--only-summary",
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
        "--stop-timeout", "10",
        "--mock-ttft-ms", str(plan.mock_ttft_ms),
        "--mock-itl-ms", str(plan.mock_itl_ms),
        "--mock-output-tokens", str(plan.mock_output_tokens),
        "--report-dir", str(out_dir),
        *extra,
        *classes,
    ]  # fmt: skip
    return _run(
        "load",
        argv,
        relay,
        out_dir / "load.log",
        out_dir / "load-summary.json",
        timeout_s + seconds,
        extra_env={"RELAYGATE_RL_KEY": rl_key} if rl_key else None,
    )


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
