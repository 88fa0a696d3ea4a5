"""Outcome classifier: every request lands in exactly one class."""

from __future__ import annotations

import pytest

from relaygate.load import outcomes as o


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"status": 200, "saw_done": True, "saw_finish": True}, o.OK),
        ({"status": 200, "saw_done": False, "saw_finish": True}, o.TRUNCATED),
        ({"status": 200, "saw_done": True, "saw_finish": False}, o.TRUNCATED),
        (
            {"status": 200, "saw_done": True, "saw_finish": True, "saw_error_event": True},
            o.STREAM_ERROR,
        ),
        ({"status": 200, "connection_failed": True}, o.TRUNCATED),
        ({"status": 200, "stream": False}, o.OK),
        ({"status": 200, "stream": False, "connection_failed": True}, o.CONNECTION_ERROR),
        ({"status": 429}, o.RATE_LIMITED),
        ({"status": 401}, o.CLIENT_ERROR),
        ({"status": 404, "stream": False}, o.CLIENT_ERROR),
        ({"status": 500}, o.SERVER_ERROR),
        ({"status": 503, "saw_done": True, "saw_finish": True}, o.SERVER_ERROR),
        ({"status": None}, o.CONNECTION_ERROR),
        ({"status": 200, "timed_out": True}, o.TIMEOUT),
        ({"status": None, "timed_out": True}, o.TIMEOUT),
    ],
)
def test_classify(kwargs: dict[str, object], expected: str) -> None:
    status = kwargs.pop("status")
    assert o.classify(status, **kwargs) == expected  # type: ignore[arg-type]
    assert expected in o.OUTCOMES
