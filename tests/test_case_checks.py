"""Helpers the conformance cases judge with (relaygate.suite.checks): no false failures on
legal variants of what a relay sends."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from relaygate.profiles import load_profile
from relaygate.suite.checks import check_error, retry_after_s
from relaygate.suite.client import Exchange
from relaygate.suite.failures import CaseFailure

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": " 3 "}, 3.0),
        # RFC 9110 §10.2.3: an HTTP-date is as legal as delta-seconds (a rate_limits MUST case
        # used to fail it)
        ({"Retry-After": email.utils.formatdate(NOW + 5, usegmt=True)}, 5.0),
        ({"Retry-After": email.utils.formatdate(NOW - 60, usegmt=True)}, 0.0),
        ({"retry-after-ms": "250", "Retry-After": "1"}, 0.25),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds_or_http_date(headers: dict[str, str], want: float | None) -> None:
    assert retry_after_s(httpx.Headers(headers), now=NOW) == want


def _exchange(status: int, body: bytes) -> Exchange:
    return Exchange(
        method="POST",
        url="http://127.0.0.1:1/v1/chat/completions",
        status=status,
        headers=httpx.Headers({"Content-Type": "application/json"}),
        body=body,
        elapsed_s=0.01,
        curl="curl …",
    )


def test_check_error_fails_when_the_upstream_status_is_unknown() -> None:
    """A status that must come from the upstream cannot be checked when nothing reached the
    upstream: the check used to skip the comparison and pass any answer (issue #10 item 5)."""
    profile = load_profile("faq")
    answer = _exchange(401, b'{"error": {"message": "Invalid API key", "type": "x", "code": "y"}}')
    with pytest.raises(CaseFailure, match="nothing reached the upstream"):
        check_error(answer, profile, "upstream_5xx_json", "an upstream 500 is relayed")
    with pytest.raises(CaseFailure, match="HTTP 500"):
        check_error(
            answer, profile, "upstream_5xx_json", "an upstream 500 is relayed", upstream_status=500
        )
