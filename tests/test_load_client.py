"""TimingClient against a tiny fake SSE server (threads, no gevent): events are timed when
they arrive, not when 1 KB has accumulated, and every framing and failure is classified."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from relaygate.load import outcomes
from relaygate.load.client import RequestResult, TimingClient

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
                try:
                    SCRIPTS[path](conn, self.sent)
                except OSError:
                    return
                if path in ("/truncated", "/silent"):
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
        client._idle.extend(pooled)
        time.sleep(0.6)  # the server closes all three
        results = [client.get("/x") for _ in range(3)]
        assert [r.status for r in results] == [200, 200, 200], [r.error for r in results]
        assert all(r.outcome == outcomes.OK for r in results)
        client.close()
    finally:
        server.shutdown()
        server.server_close()
