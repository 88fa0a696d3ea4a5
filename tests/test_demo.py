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


def _demo(report_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaygate", "demo", "--report-dir", str(report_dir), *args],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo")
    return out, _demo(out, "--load-seconds", "10")


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
    for plot in ("load-ttft-itl-cdf.png", "load-rate-limit.png"):
        assert f"({plot})" in page
    # Locust's own reports sit beside ours (its stats, ours in locust_relaygate_metrics.csv)
    assert (out / "locust.html").is_file() and (out / "locust_stats.csv").is_file()
    assert (out / "locust_relaygate_metrics.csv").is_file()


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


def test_demo_rejects_bad_input_without_running(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--slo", "ttft is fast")
    assert proc.returncode == 2
    assert "--slo" in proc.stderr
    assert not (tmp_path / "conformance.json").exists()
    proc = _demo(tmp_path, "--relay-key", "sk-abcdefghijklmnop")
    assert proc.returncode == 2
    assert "sk-abcdefghijklmnop" not in proc.stdout + proc.stderr


def test_demo_fails_when_the_suite_writes_no_report(tmp_path: Path) -> None:
    # An unusable relay URL stops pytest before any case ran: no conformance.json. The demo
    # must fail (never pass by omission) and show why.
    proc = _demo(tmp_path, "--no-load", "--relay-url", "ftp://relay.invalid")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "the conformance suite wrote no report" in proc.stderr
    assert "ftp://relay.invalid" in proc.stderr


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
