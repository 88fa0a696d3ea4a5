"""``relaygate demo`` end to end (short load run), and its page in headless Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import ChromiumRender


pytestmark = pytest.mark.timeout(240)
#: The tests whose demo runs its load phase judge timing (the gate's latency self-check): under
#: xdist they run last and alone (conftest.py).
serial = pytest.mark.serial


def _demo(report_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``relaygate demo``; run once more when its only failure was its own latency self-check.

    That self-check fails the gate when the machine delayed the harness (event-loop lag over
    10 ms), as it must; on a shared CI runner it happened with everything else passing (lag
    p99 11.4 ms). A second failure stands.
    """
    argv = [sys.executable, "-m", "relaygate", "demo", "--report-dir", str(report_dir), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=220, check=False)
    if proc.returncode == 1 and _only_the_self_check_failed(proc.stdout):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=220, check=False)
    return proc


def _only_the_self_check_failed(stdout: str) -> bool:
    failures = [line for line in stdout.splitlines() if line.startswith("  - ")]
    return (
        "self-check: latency percentiles INVALID" in stdout
        and "CHECK FAILED" not in stdout
        and " 0 failed" in stdout
        and all("latency percentiles are invalid" in line for line in failures)
    )


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo")
    return out, _demo(out, "--load-seconds", "10")


@serial
def test_demo_passes_and_writes_the_page(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = demo_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GATE PASSED" in proc.stdout
    assert "report: " in proc.stdout
    assert "conformance [" in proc.stderr and "load        [" in proc.stderr
    page = (out / "index.html").read_text()
    assert "GATE PASSED" in page
    summary = json.loads((out / "load-summary.json").read_text())
    assert summary["requests"]["ok"] > 0
    assert summary["rate_limit"]["limit"]["requests"] == 10  # the prober ran on its own keys
    assert summary["requests"]["rate_limited"] == 0  # and never throttled the streams
    conformance = json.loads((out / "conformance.json").read_text())
    assert conformance["summary"]["failed"] == 0
    # One stack: the suite and the load run gated the same relay address.
    assert conformance["relay_url"] == summary["host"]
    assert "the embedded stack (mock upstream + reference relay at http://127.0.0.1:" in proc.stderr
    assert not list(out.parent.glob(f".{out.name}-new-*"))
    for plot in ("load-ttft-itl-cdf.png", "load-rate-limit.png"):
        assert f"({plot})" in page
    # Locust's own reports sit beside ours (its stats, ours in locust_relaygate_metrics.csv)
    assert (out / "locust.html").is_file() and (out / "locust_stats.csv").is_file()
    assert (out / "locust_relaygate_metrics.csv").is_file()


@serial
def test_demo_page_renders_in_chromium(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
    chromium: ChromiumRender,
) -> None:
    out, _proc = demo_run
    console = chromium(out / "index.html", tmp_path / "demo.png")
    assert console == []


def test_demo_fails_the_gate_when_the_relay_breaks_its_profile(tmp_path: Path) -> None:
    # The reference relay judged by api.openai.com's profile: its relay-specific answers
    # (quota, channels) are failures or deviations there, so the gate must say FAILED.
    proc = _demo(tmp_path, "--no-load", "--relay-profile", "strict-openai")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "GATE FAILED" in proc.stdout
    assert "GATE FAILED" in (tmp_path / "index.html").read_text()


def _previous(out: Path) -> dict[str, str]:
    """A previous run's report in ``out``; returns what each file holds."""
    out.mkdir(parents=True, exist_ok=True)
    files = {name: f"previous {name}" for name in
             ("conformance.json", "load-summary.json", "index.html", "suite.log")}  # fmt: skip
    for name, text in files.items():
        (out / name).write_text(text)
    return files


def _unchanged(out: Path, files: dict[str, str]) -> None:
    assert {p.name: p.read_text() for p in out.iterdir()} == files
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}-new-")]


def test_demo_rejects_bad_input_without_running(tmp_path: Path) -> None:
    # Before: 'ttft<<5' deleted conformance.json, load-summary.json and index.html first.
    out = tmp_path / "reports"
    files = _previous(out)
    for args in (
        ("--slo", "ttft<<5"),
        ("--slo", "ttft is fast"),
        ("--relay-profile", "nonexistent"),
        ("--rate-limit", "lots"),
        ("--run-timeout", "0"),
        ("--relay-key-group", "gold"),  # a group the profile does not price
    ):
        proc = _demo(out, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        if not proc.stderr.startswith("usage:"):  # argparse's own errors come with usage
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert args[0] in proc.stderr and "Traceback" not in proc.stderr
        _unchanged(out, files)
    proc = _demo(out, "--relay-key", "sk-abcdefghijklmnop")
    assert proc.returncode == 2
    assert "sk-abcdefghijklmnop" not in proc.stdout + proc.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_preflight_fails_fast_with_one_line(tmp_path: Path) -> None:
    """Before: nothing listening gave ~4,400 lines of tracebacks, 43 s of suite and load run,
    and exit 1; a bad URL gave "the conformance suite wrote no report"."""
    import time

    out = tmp_path / "reports"
    files = _previous(out)
    key = "sk-abcdefghijklmnop0123"
    for url, message in (
        (f"http://127.0.0.1:{_free_port()}/v1", "cannot reach the relay at http://127.0.0.1:"),
        ("ftp://relay.invalid", "--relay-url must start with http:// or https://"),
    ):
        started = time.monotonic()
        proc = _demo(out, "--relay-url", url, "--relay-key", key)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert message in proc.stderr and key not in proc.stderr
        assert time.monotonic() - started < 30
        _unchanged(out, files)


def test_demo_refused_key_is_named(tmp_path: Path) -> None:
    from relaygate.stack import EmbeddedStack

    out = tmp_path / "reports"
    files = _previous(out)
    with EmbeddedStack() as info:
        proc = _demo(out, "--relay-url", info.relay_url, "--relay-key", "sk-notakey0123456789")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the relay refused --relay-key (HTTP 401" in proc.stderr
    assert "check the key" in proc.stderr and "sk-notakey0123456789" not in proc.stderr
    _unchanged(out, files)


def test_demo_interrupted_or_empty_run_keeps_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from relaygate.cli import build_parser, demo

    out = tmp_path / "reports"
    files = _previous(out)
    target = demo._Target("http://127.0.0.1:9", None, None, None, None, None, None)
    monkeypatch.setattr(demo, "_stack_target", lambda args, stack: target)

    def interrupted(args: object, target: object, work: Path, *rest: object) -> int:
        (work / "conformance.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_run_suite", interrupted)
    args = build_parser().parse_args(["demo", "--no-load", "--report-dir", str(out)])
    with pytest.raises(KeyboardInterrupt):
        demo.run(args)
    assert "the previous report in" in capsys.readouterr().err
    _unchanged(out, files)

    # A suite that wrote nothing: the run fails (never a pass by omission) and keeps the old.
    monkeypatch.setattr(demo, "_run_suite", lambda *a: 3)
    assert demo.run(args) == 1
    assert "the conformance suite wrote no report" in capsys.readouterr().err
    _unchanged(out, files)


@serial
def test_demo_watchdog_stops_the_run_and_keeps_the_report(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    files = _previous(out)
    # 5 s: past the stack's start (1-2 s here), well before the suite's end (8-10 s from the
    # start on a quiet machine; with 8 s the watchdog sometimes fired in the load run instead).
    proc = _demo(out, "--run-timeout", "5", "--load-seconds", "30")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--run-timeout 5 s passed during the conformance suite" in proc.stderr
    assert "the previous report in" in proc.stderr
    _unchanged(out, files)
    # The step it stopped (and what that started) is gone too.
    import psutil

    def ours(p: psutil.Process) -> bool:
        try:
            return any(str(tmp_path) in arg for arg in p.cmdline())
        except psutil.Error:
            return False

    assert not [p for p in psutil.process_iter() if ours(p)]


@serial
def test_demo_gates_a_relay_given_by_url(tmp_path: Path) -> None:
    """--relay-url path: the suite and the load run go to a relay the demo did not start (here
    the reference relay of an embedded stack), the prober on a rate-limited key of its own;
    keys stay out of the output."""
    from relaygate.stack import EmbeddedStack

    stack = EmbeddedStack()
    with stack as info:
        limited = stack.new_key(rate_limit="10/1s")
        proc = _demo(
            tmp_path,
            "--relay-url", info.relay_url + "/v1",
            "--relay-key", info.relay_key,
            "--relay-admin-token", info.admin_token,
            "--upstream-url", info.upstream_url,
            "--load-seconds", "8",
            "--rate-limit", "10/1s",
            "--rl-key", limited,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GATE PASSED" in proc.stdout
    for secret in (info.relay_key, info.admin_token, limited):
        assert secret not in proc.stdout + proc.stderr
        assert secret not in (tmp_path / "index.html").read_text()
    summary = json.loads((tmp_path / "load-summary.json").read_text())
    assert summary["host"] == info.relay_url
    assert summary["rate_limit"]["limit"]["requests"] == 10
    conformance = json.loads((tmp_path / "conformance.json").read_text())
    assert conformance["mode"] == "mock" and conformance["summary"]["failed"] == 0


@serial
def test_demo_sigterm_stops_the_run_and_keeps_the_report(tmp_path: Path) -> None:
    """A cancelled CI job (SIGTERM) stops like Ctrl-C: steps stopped, previous report kept."""
    import signal
    import time

    out = tmp_path / "reports"
    files = _previous(out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relaygate", "demo", "--report-dir", str(out), "--no-load"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        assert "relaygate demo: gating" in proc.stderr.readline()
        time.sleep(2)  # the suite is running
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130
        assert "the previous report in" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    _unchanged(out, files)


def test_demo_complete_run_replaces_the_whole_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A complete run swaps its files in and drops the previous run's files it did not write
    (--no-load: no load-summary.json beside a page that has no load section)."""
    from relaygate.cli import build_parser, demo

    out = tmp_path / "reports"
    _previous(out)
    target = demo._Target("http://127.0.0.1:9", None, None, None, None, None, None)
    monkeypatch.setattr(demo, "_stack_target", lambda args, stack: target)
    report = {"relay_url": target.url, "profile": "faq", "mode": "mock", "duration_s": 1.0,
              "started_at": "2026-01-01T00:00:00+00:00", "cases": [],
              "summary": {"passed": 0, "failed": 0, "skipped": 0, "deviations": 0}}  # fmt: skip

    def suite(args: object, target: object, work: Path, *rest: object) -> int:
        (work / "conformance.json").write_text(json.dumps(report))
        (work / "suite.log").write_text("new")
        return 0

    monkeypatch.setattr(demo, "_run_suite", suite)
    args = build_parser().parse_args(["demo", "--no-load", "--report-dir", str(out)])
    demo.run(args)
    assert "report: " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["conformance.json", "index.html", "suite.log"]
    assert (out / "suite.log").read_text() == "new"
    assert "previous" not in (out / "index.html").read_text()
    assert not list(tmp_path.glob(".reports-new-*"))
