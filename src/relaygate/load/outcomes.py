"""Outcome classes of one request: every request lands in exactly one.

Latency percentiles are computed from ``ok`` requests only; the others are counted apart so
that a failure never shortens (or lengthens) the latency a relay is credited with.

=====================  ===========================================================
``ok``                 2xx; a stream ended with a ``finish_reason`` and ``[DONE]``
``truncated``          2xx stream that ended (EOF) without ``finish_reason`` or
                       without ``[DONE]``
``stream_error``       2xx stream carrying an error event (``data: {"error": …}`` or
                       ``event: error``) - the status line promised success
``rate_limited``       HTTP 429
``client_error``       other 4xx (by status code in ``by_status``)
``server_error``       5xx
``timeout``            no byte for ``--stream-timeout`` seconds (connect, headers or body)
``connection_error``   refused, reset or closed before a complete answer
=====================  ===========================================================
"""

from __future__ import annotations

__all__ = [
    "CLIENT_ERROR",
    "CLIENT_EXCEPTION",
    "CONNECTION_ERROR",
    "INCOMPLETE",
    "OK",
    "OUTCOMES",
    "OVERRUN",
    "OVERSIZE",
    "RATE_LIMITED",
    "REQUEST_TIMEOUT",
    "SERVER_ERROR",
    "STREAM_ERROR",
    "TIMEOUT",
    "TRUNCATED",
    "classify",
]

OK = "ok"
TRUNCATED = "truncated"
STREAM_ERROR = "stream_error"
RATE_LIMITED = "rate_limited"
CLIENT_ERROR = "client_error"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
REQUEST_TIMEOUT = "request_timeout"
OVERSIZE = "oversize"
OVERRUN = "overrun"
CLIENT_EXCEPTION = "client_exception"
INCOMPLETE = "incomplete"

OUTCOMES = (
    OK,
    TRUNCATED,
    STREAM_ERROR,
    RATE_LIMITED,
    CLIENT_ERROR,
    SERVER_ERROR,
    TIMEOUT,
    CONNECTION_ERROR,
    REQUEST_TIMEOUT,
    OVERSIZE,
    OVERRUN,
    CLIENT_EXCEPTION,
    INCOMPLETE,
)


def classify(
    status: int | None,
    *,
    stream: bool = True,
    saw_done: bool = False,
    saw_finish: bool = False,
    saw_error_event: bool = False,
    timed_out: bool = False,
    connection_failed: bool = False,
) -> str:
    """The outcome class of one request (see the module table).

    ``status`` is None when no status line was received. A timeout wins over everything (the
    cause an operator must fix); a connection lost after a 2xx status line of a stream is a
    truncated stream, before a status line a connection error.
    """
    if timed_out:
        return TIMEOUT
    if status is None or (connection_failed and not 200 <= status < 300):
        return CONNECTION_ERROR
    if status == 429:
        return RATE_LIMITED
    if 400 <= status < 500:
        return CLIENT_ERROR
    if status >= 500:
        return SERVER_ERROR
    if not 200 <= status < 300:
        return CLIENT_ERROR  # 1xx/3xx where an answer was due: the client cannot use it
    if saw_error_event:
        return STREAM_ERROR
    if connection_failed:
        return TRUNCATED if stream else CONNECTION_ERROR
    if stream and not (saw_done and saw_finish):
        return TRUNCATED
    return OK
