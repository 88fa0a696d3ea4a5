"""The "relaygate" tab in Locust's web UI: live histograms on /stats/requests, CSV and JSON.

The web UI listens on 127.0.0.1 only; the run is bounded (-t) and quits by itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from relaygate.load.metrics import Registry
from relaygate.load.webui import TAB_KEY, metric_rows

ROOT = Path(__file__).resolve().parents[1]
LOCUST = Path(sys.executable).with_name("locust")

#: The runs whose tab shows directed TTFTs judge timing: under xdist last and alone (conftest.py).
serial = pytest.mark.serial


def test_metric_rows_has_only_ms_histograms_with_fine_values() -> None:
    registry = Registry()
    registry.hist("ttft_ms").record(101.234)
    registry.hist("ttft_ms").record(99.876)
    registry.hist("output_tokens").record(5)
    registry.hist("empty_ms")
    rows = metric_rows(registry)
    assert [r["metric"] for r in rows] == ["ttft_ms"]
    row = rows[0]
    assert row["count"] == 2
    assert abs(row["max"] - 101.23) <= 0.01
    assert abs(row["p50"] - 99.88) <= 0.01  # 10 µs buckets, not Locust's 1 ms/10 ms


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Locust in a process group of its own, so that :func:`_stop` can end all of it."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes], wait_s: float) -> None:
    """Let Locust end by itself (within *wait_s*), else ask it to (SIGTERM: it stops its
    embedded stack); only then kill its whole process group. A plain SIGKILL left the
    embedded mock and relay running after the test."""
    try:
        proc.wait(timeout=wait_s)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@serial
def test_web_ui_tab_shows_our_histograms(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "RELAYGATE_"))}
    cmd = [
        str(LOCUST), "-f", str(ROOT / "loadtests"),
        "--web-host", "127.0.0.1", "--web-port", str(port),
        "--autostart", "--autoquit", "1", "-u", "3", "-r", "3", "-t", "12s",
        "--no-plots", "--report-dir", str(tmp_path / "reports"),
        "--mock-ttft-ms", "40", "--mock-itl-ms", "5", "--mock-output-tokens", "10",
    ]  # fmt: skip
    proc = _start(cmd, tmp_path, env)
    try:
        rows: list[dict[str, object]] = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as http:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    data = http.get("/stats/requests").json()
                except (httpx.HTTPError, json.JSONDecodeError):
                    time.sleep(0.3)
                    continue
                feeds = {f["key"]: f["data"] for f in data.get("extended_stats", [])}
                rows = list(feeds.get(TAB_KEY, []))
                if any(r["metric"] == "ttft_ms" and r["count"] for r in rows):  # type: ignore[index]
                    break
                time.sleep(0.3)
            page = http.get("/").text
            csv_text = http.get("/relaygate/metrics.csv").text
            as_json = http.get("/relaygate/metrics.json").json()
    finally:
        _stop(proc, wait_s=40)
        if proc.stdout is not None:
            proc.stdout.close()
    ttft = next(r for r in rows if r["metric"] == "ttft_ms")
    assert 35 <= float(ttft["p50"]) <= 80  # type: ignore[arg-type]
    assert '"relaygate"' in page and "extended_tabs" in page.replace(
        "extendedTabs", "extended_tabs"
    )
    assert csv_text.splitlines()[0].startswith("metric,count,p50")
    assert any(r["metric"] == "ttft_ms" for r in as_json)


def test_web_ui_binds_loopback_by_default_and_shows_no_key(tmp_path: Path) -> None:
    """Issue #10 item 4 (secrets): Locust's web UI listened on every interface by default; it
    shows the run. Without --web-host it now listens on 127.0.0.1 only, and no answer it gives
    (page, statistics, our CSV/JSON) holds the relay key."""
    import psutil  # type: ignore[import-untyped, unused-ignore]

    key = "sk-relaygateWEBUIkey0123456789"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "RELAYGATE_"))}
    cmd = [
        str(LOCUST), "-f", str(ROOT / "loadtests"), "--web-port", str(port),
        "--autostart", "--autoquit", "1", "-u", "2", "-r", "2", "-t", "6s", "--no-plots",
        "--report-dir", str(tmp_path / "reports"), "--relay-key", key,
    ]  # fmt: skip
    proc = _start(cmd, tmp_path, env)
    answers: list[str] = []
    listening: set[str] = set()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as http:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    stats = http.get("/stats/requests").json()
                except (httpx.HTTPError, json.JSONDecodeError):
                    time.sleep(0.3)
                    continue
                if stats.get("errors"):  # the wrong key was refused: failures are shown
                    break
                time.sleep(0.3)
            listening = {
                conn.laddr.ip
                for conn in psutil.Process(proc.pid).net_connections(kind="tcp")
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
            }
            locust_paths = ("/", "/stats/requests", "/stats/requests/csv", "/stats/failures/csv")
            for path in (*locust_paths, "/relaygate/metrics.csv", "/relaygate/metrics.json"):
                answers.append(http.get(path).text)
    finally:
        _stop(proc, wait_s=40)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        if proc.stdout is not None:
            proc.stdout.close()
    assert listening == {"127.0.0.1"}, output[-2000:]
    assert "Starting web interface at http://127.0.0.1:" in output
    assert any("invalid" in a.lower() for a in answers)  # the failures were in the answers
    assert not [a for a in answers if key in a]
    assert key not in output


@serial
def test_web_ui_offers_our_options_but_no_secret_and_types_what_it_sends(tmp_path: Path) -> None:
    """Issue #11 item 2: our options were in an argument group the web UI ignored. Now the
    start form offers every non-secret one (never a key), and what the form sends back as text
    (an option whose default is None) is typed again before the run: the mock timing asked for
    in the form is the one measured."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "RELAYGATE_"))}
    # Keys only the prober would use: the streams keep the embedded stack's own key.
    env["RELAYGATE_RL_KEY"] = "sk-relaygateFORMrlkey012345678"
    env["RELAYGATE_FAIRNESS_KEYS"] = "sk-relaygateFORMfair01234567,sk-relaygateFORMfair76543210"
    cmd = [
        str(LOCUST), "-f", str(ROOT / "loadtests"), "--web-port", str(port),
        "--no-plots", "--report-dir", str(tmp_path / "reports"),
    ]  # fmt: skip
    proc = _start(cmd, tmp_path, env)
    rows: list[dict[str, object]] = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as http:
            deadline = time.monotonic() + 60
            page = ""
            while time.monotonic() < deadline and proc.poll() is None and not page:
                try:
                    page = http.get("/").text
                except httpx.HTTPError:
                    time.sleep(0.3)
            form = {
                "user_count": "2", "spawn_rate": "2", "run_time": "6s",
                "mock_ttft_ms": "60", "mock_itl_ms": "", "target_rps": "", "model": "gpt-4o-mini",
            }  # fmt: skip
            started = http.post("/swarm", data=form).json()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                data = http.get("/stats/requests").json()
                feeds = {f["key"]: f["data"] for f in data.get("extended_stats", [])}
                rows = list(feeds.get(TAB_KEY, []))
                if any(r["metric"] == "ttft_ms" and int(r["count"]) >= 4 for r in rows):  # type: ignore[call-overload]
                    break
                time.sleep(0.3)
    finally:
        _stop(proc, wait_s=0)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        if proc.stdout is not None:
            proc.stdout.close()
    assert started["success"] is True, output[-2000:]
    template = re.search(r"window\.templateArgs = (\{.*\})", page)
    assert template is not None, page[:2000]
    offered = json.loads(template.group(1))["extra_options"]
    assert {"model", "mock_ttft_ms", "target_rps", "rate_limit", "report_dir"} <= set(offered)
    assert not {"relay_key", "rl_key", "upstream_key", "fairness_keys", "relay_header"} & set(
        offered
    )
    assert "slo" not in offered  # a list: Locust's form cannot take it (see locust_options)
    assert "FORMrlkey" not in page and "FORMfair" not in page
    ttft = [r for r in rows if r["metric"] == "ttft_ms"]
    assert ttft, (started, output[-3000:])
    assert 50 <= float(ttft[0]["p50"]) <= 200, (ttft, output[-2000:])  # type: ignore[arg-type]
