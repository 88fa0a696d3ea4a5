"""TimingClient against a tiny fake SSE server (threads, no gevent): events are timed when
they arrive, not when 1 KB has accumulated, and every framing and failure is classified."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from relaygate.load import outcomes
from relaygate.load.client import RequestResult, TimingClient
from relaygate.load.http11 import ConnectionPool

Script = Callable[[socket.socket, list[int]], None]


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


HEAD_SSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
ROLE = {"choices": [{"delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
FINISH = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}


def token(stamp: bool = True) -> dict[str, object]:
    body: dict[str, object] = {"choices": [{"delta": {"content": " tok"}, "finish_reason": None}]}
    if stamp:
        body["relaygate_emit_ns"] = time.monotonic_ns()
    return body


def send(conn: socket.socket, sent: list[int], data: bytes) -> None:
    sent.append(time.monotonic_ns())
    conn.sendall(data)


def timed_stream(conn: socket.socket, sent: list[int]) -> None:
    """Role chunk at once, first token after 300 ms, then 4 tokens 50 ms apart."""
    send(conn, sent, HEAD_SSE + chunk(event(ROLE)))
    time.sleep(0.3)
    for i in range(5):
        if i:
            time.sleep(0.05)
        send(conn, sent, chunk(event(token())))
    send(
        conn,
        sent,
        chunk(event(FINISH)) + chunk(event(USAGE)) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n",
    )


def content_length_crlf_nospace(conn: socket.socket, sent: list[int]) -> None:
    events = [
        b'data:{"choices":[{"delta":{"content":"a"}}]}\r\n\r\n',
        b": keep-alive comment\r\n\r\n",
        b'data:{"choices":[{"delta":{"reasoning_content":"b"},"finish_reason":"stop"}]}\r\n\r\n',
        b"data: [DONE]\r\n\r\n",
    ]
    body = b"".join(events)
    send(
        conn,
        sent,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + events[0],
    )
    time.sleep(0.1)
    send(conn, sent, b"".join(events[1:]))


def truncated(conn: socket.socket, sent: list[int]) -> None:
    send(conn, sent, HEAD_SSE + chunk(event(ROLE)) + chunk(event(token())))
    conn.shutdown(socket.SHUT_WR)


def in_stream_error(conn: socket.socket, sent: list[int]) -> None:
    err = {"error": {"message": "upstream died", "type": "server_error"}}
    send(
        conn,
        sent,
        HEAD_SSE
        + chunk(event(token()))
        + chunk(event(err))
        + chunk(b"data: [DONE]\n\n")
        + b"0\r\n\r\n",
    )


def rate_limited(conn: socket.socket, sent: list[int]) -> None:
    body = b'{"error":{"message":"slow down","code":"rate_limit_exceeded"}}'
    send(
        conn,
        sent,
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        + b"Retry-After: 2\r\nretry-after-ms: 1500\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )


def silent(conn: socket.socket, sent: list[int]) -> None:
    send(conn, sent, HEAD_SSE + chunk(event(ROLE)))
    time.sleep(0.6)


SCRIPTS: dict[str, Script] = {
    "/timed": timed_stream,
    "/cl": content_length_crlf_nospace,
    "/truncated": truncated,
    "/error": in_stream_error,
    "/429": rate_limited,
    "/silent": silent,
}


class FakeServer:
    """Keep-alive HTTP/1.1 server; the path picks the script; records its send times."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.sent: list[int] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        # The client under test may reset the connection at any point (an aborted overrun
        # stream does): that ends this connection, never the test.
        try:
            self._exchange(conn)
        except OSError:
            return

    def _exchange(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                path = head.split(b" ")[1].decode()
                SCRIPTS[path](conn, self.sent)
                if path in ("/truncated", "/silent") or path in CLOSING:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


def post(client: TimingClient, path: str) -> RequestResult:
    return client.post_json(path, {"model": "m", "messages": []}, {"Authorization": "Bearer sk-x"})


def once(url: str, path: str, timeout_s: float = 5.0) -> RequestResult:
    with TimingClient(url, timeout_s=timeout_s) as client:
        return post(client, path)


@pytest.mark.serial  # judges timing: under xdist, last and alone (conftest.py)
def test_small_events_are_timed_on_arrival_and_directed_timings_hold(server: FakeServer) -> None:
    client = TimingClient(server.url, timeout_s=5)
    res = post(client, "/timed")
    assert res.outcome == outcomes.OK, res.error
    assert res.t_sent_ns and res.t_first_event_ns and res.t_first_token_ns
    # Each ~90-byte event is seen within a few ms of the server writing it (no 1 KB wait).
    for sent_ns, got_ns in zip(server.sent[1:6], res.token_event_ns, strict=True):
        assert 0 <= (got_ns - sent_ns) / 1e6 < 15
    assert res.emit_lag_ns and max(res.emit_lag_ns) / 1e6 < 15
    ttft_ms = (res.t_first_token_ns - res.t_sent_ns) / 1e6
    ack_ms = (res.t_first_event_ns - res.t_sent_ns) / 1e6
    assert 295 <= ttft_ms < 330 and ack_ms < 30  # the role chunk is the ack, not a token
    gaps = [(b - a) / 1e6 for a, b in zip(res.token_event_ns, res.token_event_ns[1:], strict=False)]
    assert all(45 <= g < 65 for g in gaps), gaps
    assert res.output_tokens == 5 and res.completion_tokens == 5 and res.finish_reason == "stop"
    # The connection is reused for the next request.
    assert post(client, "/timed").outcome == outcomes.OK and server.connections == 1
    client.close()


def test_content_length_crlf_nospace_comment_reasoning(server: FakeServer) -> None:
    res = once(server.url, "/cl")
    assert res.outcome == outcomes.OK, res.error
    assert len(res.token_event_ns) == 2  # content + reasoning; the comment is no event
    first_gap_ms = (res.token_event_ns[1] - res.token_event_ns[0]) / 1e6
    assert first_gap_ms >= 90  # the first event was not held back until the rest came
    assert res.completion_tokens is None and res.output_tokens == 2


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/truncated", outcomes.TRUNCATED),
        ("/error", outcomes.STREAM_ERROR),
        ("/429", outcomes.RATE_LIMITED),
    ],
)
def test_failure_outcomes(server: FakeServer, path: str, expected: str) -> None:
    res = once(server.url, path)
    assert res.outcome == expected
    if expected == outcomes.RATE_LIMITED:
        assert res.headers["retry-after"] == "2" and res.headers["retry-after-ms"] == "1500"
        assert res.error and "rate_limit_exceeded" in res.error


def test_timeout_and_connection_refused(server: FakeServer) -> None:
    assert once(server.url, "/silent", timeout_s=0.3).outcome == outcomes.TIMEOUT
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    refused = once(f"http://127.0.0.1:{port}", "/timed")
    assert refused.outcome == outcomes.CONNECTION_ERROR and refused.status is None


def test_bad_base_url() -> None:
    with pytest.raises(ValueError, match="http"):
        TimingClient("ftp://example")


@pytest.mark.serial  # judges timing (a 0.2 s keep-alive timeout): under xdist, last and alone
def test_idle_connections_closed_by_the_server_are_replaced_by_a_fresh_one() -> None:
    """A server's keep-alive timeout closes every idle connection of the pool at once (uvicorn:
    5 s). The retry must use a new connection, not the next dead one from the pool - else a
    burst after a quiet spell reports connection errors that never reached the server (seen
    against LM-Proxy 3.3.2 by the 429 prober)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 0.2  # the keep-alive timeout: idle connections are closed after it

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = TimingClient(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=5.0)
        # Three pooled keep-alive connections, as a burst through one client leaves them.
        pooled = [client._checkout(fresh=True) for _ in range(3)]
        for conn in pooled:
            conn.reused = True
        client._pool.idle.extend(pooled)
        time.sleep(0.6)  # the server closes all three
        results = [client.get("/x") for _ in range(3)]
        assert [r.status for r in results] == [200, 200, 200], [r.error for r in results]
        assert all(r.outcome == outcomes.OK for r in results)
        client.close()
    finally:
        server.shutdown()
        server.server_close()


# --- bounds: total deadline, byte cap, overrun, one exception boundary (issue #10) ---------

BIG_BYTES = 50 * 1024 * 1024


def drip(conn: socket.socket, sent: list[int]) -> None:
    """A stream that never ends: one token every 100 ms, each resetting the idle timeout."""
    send(conn, sent, HEAD_SSE + chunk(event(ROLE)))
    for _ in range(600):
        time.sleep(0.1)
        conn.sendall(chunk(event(token())))


def big_stream(conn: socket.socket, sent: list[int]) -> None:
    """50 MB of one SSE data line that never ends, in 64 KB chunks."""
    send(conn, sent, HEAD_SSE + chunk(b'data: {"x":"'))
    piece = chunk(b"x" * 65536)
    for _ in range(BIG_BYTES // 65536):
        conn.sendall(piece)


def big_json(conn: socket.socket, sent: list[int]) -> None:
    """A 50 MB non-stream answer with a correct Content-Length."""
    send(
        conn,
        sent,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {BIG_BYTES}\r\n\r\n".encode(),
    )
    piece = b"x" * 65536
    for _ in range(BIG_BYTES // 65536):
        conn.sendall(piece)


def overrun(conn: socket.socket, sent: list[int]) -> None:
    """100 token events for a request that asked for at most 10."""
    send(conn, sent, HEAD_SSE + chunk(event(ROLE)))
    for _ in range(100):
        conn.sendall(chunk(event(token())))
    conn.sendall(chunk(event(FINISH)) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def raw_answer(head: bytes) -> Script:
    def script(conn: socket.socket, sent: list[int]) -> None:
        send(conn, sent, head)

    return script


SCRIPTS.update(
    {
        "/drip": drip,
        "/big-stream": big_stream,
        "/big-json": big_json,
        "/overrun": overrun,
        "/dup-cl-same": raw_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"
        ),
        "/dup-cl-differ": raw_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
        ),
        "/bad-cl": raw_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\n{}"),
        "/negative-chunk": raw_answer(HEAD_SSE + b"-5\r\nhello\r\n0\r\n\r\n"),
        "/prefixed-chunk": raw_answer(HEAD_SSE + b"0x5\r\nhello\r\n0\r\n\r\n"),
        "/garbage-chunk": raw_answer(HEAD_SSE + b"zz\r\nhello\r\n0\r\n\r\n"),
        "/endless-size-line": raw_answer(HEAD_SSE + b"1" * 200_000),
        "/mid-headers": raw_answer(b"HTTP/1.1 200 OK\r\nContent-Ty"),
    }
)
CLOSING = {"/drip", "/big-stream", "/big-json", "/mid-headers", "/endless-size-line"}
CLOSING |= {"/dup-cl-differ", "/bad-cl", "/negative-chunk", "/prefixed-chunk", "/garbage-chunk"}


@pytest.mark.serial  # judges timing: under xdist, last and alone (conftest.py)
def test_slow_drip_stream_ends_at_the_total_deadline(server: FakeServer) -> None:
    """Each token resets the idle timeout, so only a total deadline ends this stream."""
    with TimingClient(server.url, timeout_s=5.0, request_timeout_s=0.6) as client:
        began = time.monotonic()
        res = post(client, "/drip")
        took_s = time.monotonic() - began
        assert res.outcome == outcomes.REQUEST_TIMEOUT, (res.outcome, res.error)
        assert 0.6 <= took_s < 0.6 + 0.4
        assert res.error and "0.6" in res.error
        assert res.token_event_ns and res.t_end_ns is not None
        assert client._pool.idle == [] and client.in_flight() == 0


@pytest.mark.serial  # judges timing: under xdist, last and alone (conftest.py)
def test_total_deadline_caps_a_silent_wait_shorter_than_the_idle_timeout(
    server: FakeServer,
) -> None:
    with TimingClient(server.url, timeout_s=5.0, request_timeout_s=0.3) as client:
        began = time.monotonic()
        res = post(client, "/silent")
        assert res.outcome == outcomes.REQUEST_TIMEOUT, (res.outcome, res.error)
        assert time.monotonic() - began < 0.3 + 0.3


def test_defaults_are_finite() -> None:
    from relaygate.load import client as module

    with TimingClient("http://127.0.0.1:9") as client:
        assert client.request_timeout_s == module.DEFAULT_REQUEST_TIMEOUT_S < float("inf")
        assert client.max_response_bytes == module.DEFAULT_MAX_RESPONSE_BYTES == 16 * 1024 * 1024


@pytest.mark.parametrize(("path", "stream"), [("/big-stream", True), ("/big-json", False)])
def test_a_50_mb_answer_is_cut_at_the_byte_cap(server: FakeServer, path: str, stream: bool) -> None:
    import tracemalloc

    cap = 1024 * 1024
    with TimingClient(server.url, timeout_s=5.0, max_response_bytes=cap) as client:
        tracemalloc.start()
        try:
            began = time.monotonic()
            res = client.post_json(path, {"model": "m"}, stream=stream)
            took_s = time.monotonic() - began
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert res.outcome == outcomes.OVERSIZE, (res.outcome, res.error)
        assert cap < res.bytes_received <= cap + 262144
        assert peak < 8 * cap  # bounded: never the 50 MB
        assert took_s < 5.0
        assert res.error and "1048576" in res.error
        assert client._pool.idle == []


def test_a_stream_beyond_max_tokens_is_aborted_as_overrun(server: FakeServer) -> None:
    with TimingClient(server.url, timeout_s=5.0) as client:
        body = {"model": "m", "max_tokens": 10}
        res = client.post_json("/overrun", body, max_tokens=10)
        assert res.outcome == outcomes.OVERRUN, (res.outcome, res.error)
        # the margin: more than max_tokens + max(8, 10 %) token events
        assert len(res.token_event_ns) == 10 + 8 + 1
        assert client._pool.idle == []
        # without the cap (or with room for them) the same stream is ok
        assert client.post_json("/overrun", body).outcome == outcomes.OK
        assert client.post_json("/overrun", body, max_tokens=100).outcome == outcomes.OK


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/dup-cl-same", outcomes.OK),  # identical repeated values: RFC 9110 allows one
        ("/dup-cl-differ", outcomes.CONNECTION_ERROR),
        ("/bad-cl", outcomes.CONNECTION_ERROR),
        ("/negative-chunk", outcomes.TRUNCATED),
        ("/prefixed-chunk", outcomes.TRUNCATED),
        ("/garbage-chunk", outcomes.TRUNCATED),
        ("/endless-size-line", outcomes.TRUNCATED),
        ("/mid-headers", outcomes.CONNECTION_ERROR),
    ],
)
def test_malformed_framing_ends_in_an_outcome(server: FakeServer, path: str, expected: str) -> None:
    with TimingClient(server.url, timeout_s=2.0) as client:
        res = client.post_json(path, {"model": "m"})
        assert res.outcome == expected, (res.outcome, res.error)
        if expected != outcomes.OK:
            assert res.error and client._pool.idle == []
        assert client.in_flight() == 0


def test_an_unexpected_exception_is_a_client_exception_with_the_key_masked(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaygate.load.body_sinks import SSESink

    key = "sk-live-0123456789abcdef"

    def boom(*_args: object) -> None:
        raise RuntimeError(f"parser broke near Authorization: Bearer {key}")

    with TimingClient(server.url, timeout_s=2.0) as client:
        # a header value the request line cannot carry (not latin-1)
        res = client.post_json("/timed", {"model": "m"}, {"Authorization": f"Bearer {key}ключ"})
        assert res.outcome == outcomes.CLIENT_EXCEPTION and res.status is None
        assert res.error and res.error.startswith("UnicodeEncodeError")
        assert res.t_end_ns is not None and client.in_flight() == 0
        monkeypatch.setattr(SSESink, "_parse", boom)
        res = client.post_json("/timed", {"model": "m"}, {"Authorization": f"Bearer {key}"})
        assert res.outcome == outcomes.CLIENT_EXCEPTION, (res.outcome, res.error)
        assert res.error and res.error.startswith("RuntimeError: parser broke")
        assert key not in res.error and client._pool.idle == []
    assert outcomes.CLIENT_EXCEPTION in outcomes.OUTCOMES


def test_the_pool_never_reuses_a_connection_after_an_abort(server: FakeServer) -> None:
    with TimingClient(server.url, timeout_s=5.0, request_timeout_s=0.3) as client:
        assert post(client, "/429").outcome == outcomes.RATE_LIMITED
        assert len(client._pool.idle) == 1 and server.connections == 1
        assert post(client, "/drip").outcome == outcomes.REQUEST_TIMEOUT
        assert client._pool.idle == []
        assert post(client, "/429").outcome == outcomes.RATE_LIMITED
        assert server.connections == 2


def test_in_flight_counts_requests_started_and_not_returned(server: FakeServer) -> None:
    with TimingClient(server.url, timeout_s=5.0, request_timeout_s=0.5) as client:
        assert client.in_flight() == 0
        done: list[RequestResult] = []
        threads = [
            threading.Thread(target=lambda: done.append(post(client, "/drip"))) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        assert client.in_flight() == 2
        for thread in threads:
            thread.join(5)
        assert client.in_flight() == 0 and len(done) == 2


def test_connection_pool_resolves_its_host_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new connection used to look the host up (``create_connection``): under gevent a
    trip through its thread pool per connect, queued when a wave of users connects at once."""
    lookups: list[object] = []
    real = socket.getaddrinfo

    def counting(*args: Any, **kwargs: Any) -> Any:
        lookups.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    with socket.create_server(("127.0.0.1", 0)) as server:
        pool = ConnectionPool(
            "localhost", server.getsockname()[1], tls=None, kernel_stamps=False, max_idle=4
        )
        conns = [pool.connect(5.0) for _ in range(3)]
        for conn in conns:
            assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            pool.discard(conn)
    assert lookups == ["localhost"]
    refused = ConnectionPool("127.0.0.1", _free_port(), tls=None, kernel_stamps=False, max_idle=4)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            refused.connect(5.0)
    assert lookups == ["localhost", "127.0.0.1", "127.0.0.1"]  # looked up again after failing


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
