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
``request_timeout``    the whole exchange (connect, send, headers, body) passed its total
                       deadline (``request_timeout_s``), e.g. a stream that drips forever
``oversize``           head + body passed the byte cap (``max_response_bytes``)
``overrun``            a stream delivered more token events than ``max_tokens`` allows
                       (more than ``max_tokens + max(8, 10 %)``); aborted
``connection_error``   refused, reset or closed before a complete answer, or framing we
                       cannot read (bad status line, ``Content-Length`` or chunk size)
``client_exception``   the client itself failed (an exception it did not expect); the
                       result's ``error`` names the exception - a harness defect to report
``incomplete``         still in flight when the run ended (counted by the Locust side;
                       the client never returns it)
=====================  ===========================================================

The client aborts a request on ``request_timeout``, ``oversize`` and ``overrun`` and closes
its connection (never reused).
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
    request_timed_out: bool = False,
    oversize: bool = False,
    overrun: bool = False,
    client_exception: bool = False,
) -> str:
    """The outcome class of one request (see the module table).

    ``status`` is None when no status line was received. A client exception wins over
    everything (nothing else about the request can be trusted), then the reasons the client
    aborted it (deadline, idle timeout, byte cap, overrun: the cause an operator must fix);
    a connection lost after a 2xx status line of a stream is a truncated stream, before a
    status line a connection error.
    """
    if client_exception:
        return CLIENT_EXCEPTION
    if request_timed_out:
        return REQUEST_TIMEOUT
    if timed_out:
        return TIMEOUT
    if oversize:
        return OVERSIZE
    if overrun:
        return OVERRUN
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
