"""Paths outside /v1 are judged by the profile's ``[http] non_api_paths``: a relay that serves
its web UI there (one-api's SPA: any other path is its page, text/html) is not failed under a
profile that says so, and still is under one that does not (the faq baseline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relaygate.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
CASE = "conformance/test_errors.py::test_unknown_path[/relaygate-nothing]"


def test_one_api_and_new_api_give_paths_outside_v1_to_their_web_ui() -> None:
    assert load_profile("faq").http.non_api_paths == "json"
    for name in ("one-api", "new-api"):
        profile = load_profile(name)
        assert profile.http.non_api_paths == "web-ui"
        assert profile.deviation("http.non_api_paths")


@pytest.mark.parametrize(
    ("profile", "verdict"),
    [("one-api", "DEVIATION errors.unknown-path[/relaygate-nothing]"), ("faq", "1 failed")],
)
def test_a_web_ui_outside_v1_is_a_deviation_only_where_the_profile_says_so(
    profile: str, verdict: str, tmp_path: Path
) -> None:
    # The reference relay with html_404_outside_v1 answers /relaygate-nothing with an HTML page.
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", str(ROOT / CASE), "-q", "-rxX",
            "-p", "no:cacheprovider", "--relay-fault", "html_404_outside_v1",
            "--relay-profile", profile, "--report-dir", str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert verdict in result.stdout, result.stdout[-3000:]
    assert profile == "faq" or " 1 failed" not in result.stdout
