"""The pytest plugin, tested through pytest itself: options, env vars, ini keys, the case
marker, outcomes (incl. deviations) and the report files users script against."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

CASES = """
import pytest
from relaygate.suite.failures import deviation, fail

@pytest.mark.case("demo.pass", title="passes", area="auth", faq=("F15",))
def test_pass():
    pass

@pytest.mark.case("demo.fail", title="fails", area="quota", faq="F9")
def test_fail():
    key = "sk-" + "secret" * 3 + "123"
    fail("F9: the charge is exact", "225 quota", "226 quota",
         curl=f"curl -H 'Authorization: Bearer {key}'")

@pytest.mark.case("demo.skip", title="skips", area="models", level="SHOULD")
def test_skip():
    pytest.skip("needs ground truth: pass --upstream-url")

@pytest.mark.case("demo.deviation", title="deviates", area="streaming")
def test_deviation():
    deviation("one-api answers 401 for an exhausted token")

@pytest.mark.parametrize("model", ["a", "b"])
@pytest.mark.case("demo.param", title="params", area="models")
def test_param(model):
    pass

def test_not_a_case():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_cases=CASES)
    return pytester


def test_report_json_contract(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--relay-url", "http://relay.invalid:3000/v1", "--report-dir", "out")
    result.assert_outcomes(passed=4, failed=1, skipped=1, xfailed=1)
    doc = json.loads((suite.path / "out" / "conformance.json").read_text())
    assert set(doc) == {
        "relay_url", "profile", "mode", "started_at", "duration_s", "summary", "cases",
        "run_mode", "relaygate_version",
    }  # fmt: skip
    assert doc["relay_url"] == "http://relay.invalid:3000"
    assert doc["profile"] == "faq" and doc["mode"] == "live"
    assert doc["summary"] == {"passed": 3, "failed": 1, "skipped": 1, "deviations": 1}
    by_id = {c["id"]: c for c in doc["cases"]}
    assert set(by_id) == {
        "demo.pass", "demo.fail", "demo.skip", "demo.deviation", "demo.param[a]", "demo.param[b]",
    }  # fmt: skip
    for case in doc["cases"]:
        assert set(case) >= {"id", "title", "area", "faq", "level", "outcome", "reason",
                             "duration_s"}  # fmt: skip
    assert by_id["demo.fail"]["faq"] == ["F9"] and by_id["demo.fail"]["outcome"] == "failed"
    assert "sk-secretsecretsecret123" not in (suite.path / "out" / "conformance.json").read_text()
    assert by_id["demo.skip"]["reason"] == "needs ground truth: pass --upstream-url"
    assert by_id["demo.skip"]["level"] == "SHOULD"
    assert by_id["demo.deviation"]["outcome"] == "deviation"
    assert by_id["demo.deviation"]["reason"] == "one-api answers 401 for an exhausted token"
    assert (suite.path / "out" / "conformance.html").read_text().startswith("<!doctype html>")


def test_failure_reads_like_h2spec(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--relay-url", "http://relay.invalid", "-k", "test_fail")
    result.stdout.fnmatch_lines(
        [
            "*-> F9: the charge is exact*",
            "*Expected: 225 quota*",
            "*Actual: 226 quota*",
            "*Reproduce: curl*sk-sec…123*",
        ]
    )
    assert "sk-secretsecretsecret123" not in result.stdout.str()


def test_env_var_and_ini_and_header(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    pytester.makeini("[pytest]\nrelay_profile = one-api\n")
    monkeypatch.setenv("RELAYGATE_RELAY_URL", "http://from-env:3000")
    monkeypatch.setenv("RELAYGATE_RELAY_KEY", "sk-envkeyenvkeyenvkey0001")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "relaygate: relay http://from-env:3000 (key sk-env…001)",
            "relaygate: profile one-api, mode live (ground-truth cases skip)",
        ]
    )
    result = pytester.runpytest("--relay-url", "http://from-cli:1", "--relay-profile", "faq")
    result.stdout.fnmatch_lines(["relaygate: relay http://from-cli:1 *", "relaygate: profile faq*"])


def test_embedded_header(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("--relay-fault", "drop_done")
    result.stdout.fnmatch_lines(["relaygate: relay embedded stack * with faults drop_done"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--relay-url", "relay:3000"], "*must start with http://*"),
        (["--relay-timeout", "soon", "--relay-url", "http://x"], "*bad numeric option*"),
        (["--relay-url", "http://x", "--relay-fault", "drop_done"], "*embedded stack*"),
    ],
)
def test_bad_options_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_duplicate_case_ids_are_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_dup="""
import pytest
@pytest.mark.case("x.same", title="a", area="auth")
def test_a(): pass
@pytest.mark.case("x.same", title="b", area="auth")
def test_b(): pass
"""
    )
    result = pytester.runpytest("--relay-url", "http://x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*case id x.same used twice*"])


def test_unknown_area_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_area="""
import pytest
@pytest.mark.case("x.a", title="a", area="nowhere")
def test_a(): pass
"""
    )
    result = pytester.runpytest("--relay-url", "http://x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown area 'nowhere'*"])


def test_no_cases_no_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    pytester.runpytest("--report-dir", "out").assert_outcomes(passed=1)
    assert not (pytester.path / "out").exists()


USES_RELAY = """
import pytest

@pytest.mark.case("x.one", title="one", area="auth")
def test_one(relay, profile):
    pass

@pytest.mark.case("x.two", title="two", area="auth")
def test_two(relay, profile):
    pass
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_relay_stops_the_session_with_one_line(pytester: pytest.Pytester) -> None:
    # Before: every case failed with the same httpx traceback and the report recorded them.
    pytester.makepyfile(test_cases=USES_RELAY)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    result = pytester.runpytest("--relay-url", url, "--relay-key", "sk-abcdefghijklmnop0123")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.assert_outcomes()
    result.stdout.fnmatch_lines(["*relaygate: cannot reach the relay at http://127.0.0.1:*"])
    assert "sk-abcdefghijklmnop0123" not in result.stdout.str() + result.stderr.str()
    assert not (pytester.path / "reports").exists()


def test_unknown_profile_stops_the_session_with_one_line(pytester: pytest.Pytester) -> None:
    # Before: 92 setup errors with the same message, and 92 failures in conformance.json.
    pytester.makepyfile(test_cases=USES_RELAY)
    url = f"http://127.0.0.1:{_free_port()}"
    result = pytester.runpytest("--relay-url", url, "--relay-profile", "nonexistent")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.assert_outcomes()
    result.stdout.fnmatch_lines(["*relaygate: --relay-profile: unknown profile 'nonexistent'*"])
    assert not (pytester.path / "reports").exists()


def test_embedded_run_writes_reports_only_when_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*embedded stack: no report written (pass --report-dir*"])
    assert not (pytester.path / "reports").exists()
    pytester.runpytest("--report-dir", "out")
    assert (pytester.path / "out" / "conformance.json").is_file()


def test_interrupted_run_keeps_the_previous_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_cases="""
import pytest

@pytest.mark.case("x.one", title="one", area="auth")
def test_one():
    pass

@pytest.mark.case("x.two", title="two", area="auth")
def test_two():
    raise KeyboardInterrupt
"""
    )
    report = pytester.path / "reports" / "conformance.json"
    report.parent.mkdir()
    report.write_text("previous")
    result = pytester.runpytest_subprocess("--relay-url", "http://relay.invalid")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*the run was interrupted; the previous report is kept*"])
    assert report.read_text() == "previous"


def test_the_checkouts_own_test_run_leaves_reports_alone() -> None:
    """``pytest`` in the checkout runs ``conformance/`` against the embedded stack; it must not
    overwrite the reports ``relaygate demo`` left in ``reports/``."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    reports = root / "reports"

    def snapshot() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in reports.iterdir()} if reports.exists() else {}

    before = snapshot()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider",
         "-k", "auth and refused"],
        cwd=root, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no report written" in proc.stdout
    assert snapshot() == before
