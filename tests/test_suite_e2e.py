"""The suite end to end, the way users run it: against a relay started by ``relaygate up
--json`` in another process, and with a custom profile that documents a deviation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = str(ROOT / "conformance")


def _pytest(*args: str, cwd: Path, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            CONFORMANCE,
            *(["-q"] * quiet),
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_suite_against_relaygate_up(tmp_path: Path) -> None:
    with (tmp_path / "up.log").open("w") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "relaygate", "up", "--json"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert up.stdout is not None
    try:
        info = json.loads(up.stdout.readline())
        result = _pytest(
            "--relay-url", info["relay_url"] + "/v1",
            "--relay-key", info["relay_key"],
            "--relay-admin-token", info["admin_token"],
            "--upstream-url", info["upstream_url"],
            "--report-dir", str(tmp_path / "reports"),
            "--junitxml", str(tmp_path / "reports" / "junit.xml"),
            "-k", "auth or models or security",
            cwd=tmp_path,
        )  # fmt: skip
    finally:
        up.terminate()
        up.wait(10)
        up.stdout.close()
    assert result.returncode == 0, result.stdout[-3000:]
    doc = json.loads((tmp_path / "reports" / "conformance.json").read_text())
    assert doc["mode"] == "mock" and doc["relay_url"] == info["relay_url"]
    assert doc["summary"]["failed"] == 0 and doc["summary"]["passed"] >= 20
    assert info["relay_key"] not in (tmp_path / "reports" / "conformance.json").read_text()
    junit = (tmp_path / "reports" / "junit.xml").read_text()
    assert 'name="case_id"' in junit and "auth.refused[missing_key]" in junit


def test_documented_deviation_is_reported_not_passed(tmp_path: Path) -> None:
    profile = tmp_path / "my-relay.toml"
    profile.write_text(
        'extends = "faq"\n'
        'name = "my-relay"\n'
        'role = "relay"\n'
        'description = "answers exhausted quota with 429"\n'
        "[errors.token_quota_exhausted]\n"
        "status = 429\n"
        'deviation = "my-relay answers an exhausted token with 429 instead of 403 (F20)"\n'
        'doc = "https://docs.example.invalid/my-relay/errors#quota"\n'
        "[errors.user_quota_exhausted]\n"
        "status = 429\n"
        'deviation = "my-relay answers an exhausted wallet with 429 instead of 403 (F21)"\n'
        'doc = "https://docs.example.invalid/my-relay/errors#quota"\n'
    )
    result = _pytest(
        "--relay-fault", "wrong_quota_status",
        "--relay-profile", str(profile),
        "--report-dir", str(tmp_path / "reports"),
        "-k", "token_exhausted or user_exhausted",
        cwd=tmp_path,
    )  # fmt: skip
    doc = json.loads((tmp_path / "reports" / "conformance.json").read_text())
    outcomes = {c["id"]: (c["outcome"], c["reason"]) for c in doc["cases"]}
    assert outcomes["quota.token-exhausted"] == (
        "deviation",
        "my-relay answers an exhausted token with 429 instead of 403 (F20) "
        "(docs: https://docs.example.invalid/my-relay/errors#quota)",
    ), result.stdout[-3000:]
    assert outcomes["quota.user-exhausted"][0] == "deviation"
    assert doc["summary"]["deviations"] == 2 and doc["summary"]["failed"] == 0
    assert result.returncode == 0
    assert "DEVIATION quota.token-exhausted" in result.stdout


@pytest.mark.parametrize("profile", ["one-api", "new-api", "strict-openai"])
def test_shipped_profiles_are_named_in_the_header(profile: str, tmp_path: Path) -> None:
    result = _pytest("--relay-profile", profile, "--co", cwd=tmp_path, quiet=False)
    assert result.returncode == 0, result.stdout[-2000:]
    assert f"relaygate: profile {profile}, mode mock" in result.stdout
