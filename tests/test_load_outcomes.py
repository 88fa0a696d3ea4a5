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


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"status": 200, "request_timed_out": True, "timed_out": True}, o.REQUEST_TIMEOUT),
        ({"status": None, "request_timed_out": True}, o.REQUEST_TIMEOUT),
        ({"status": 429, "oversize": True}, o.OVERSIZE),
        ({"status": 200, "saw_done": True, "saw_finish": True, "overrun": True}, o.OVERRUN),
        ({"status": 200, "client_exception": True, "request_timed_out": True}, o.CLIENT_EXCEPTION),
        ({"status": None, "client_exception": True}, o.CLIENT_EXCEPTION),
    ],
)
def test_classify_aborts(kwargs: dict[str, object], expected: str) -> None:
    status = kwargs.pop("status")
    assert o.classify(status, **kwargs) == expected  # type: ignore[arg-type]


def test_every_class_is_listed_once_and_documented() -> None:
    assert len(set(o.OUTCOMES)) == len(o.OUTCOMES)
    assert {o.REQUEST_TIMEOUT, o.OVERSIZE, o.OVERRUN, o.CLIENT_EXCEPTION, o.INCOMPLETE} <= set(
        o.OUTCOMES
    )
    for name in o.OUTCOMES:
        assert f"``{name}``" in (o.__doc__ or ""), name
