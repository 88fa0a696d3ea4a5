"""Helpers the conformance cases judge with (relaygate.suite.checks): no false failures on
legal variants of what a relay sends."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from relaygate.suite.checks import retry_after_s

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
