"""The suite's HTTP client is bounded: one total deadline and one byte cap per exchange, an
answer cut by either is marked as cut, and buffers grow linearly.

A stand-in relay on 127.0.0.1 hangs, drips or floods on request (its path says which).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from relaygate.sse import SSEDecoder
from relaygate.suite.client import (
    DEFAULT_MAX_BYTES,
    RelayClient,
    byte_cap_reason,
    curl_command,
    deadline_reason,
    sdk_http_client,
)
from relaygate.suite.failures import CaseFailure, require

MiB = 1 << 20

pytest_plugins = ["pytester"]


class _StandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stop: threading.Event

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _drain(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))

    def _head(self, content_type: str, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        if length is None:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.send_header("content-length", str(length))
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        self._drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            route = self.path.split("?")[0].strip("/").split("/")[0]  # /drip/x?y -> drip
            getattr(self, "_" + route.replace("-", "_"))()

    def _ok(self) -> None:
        body = b'{"ok": true}'
        self._head("application/json", len(body))
        self.wfile.write(body)

    # /v1/...: the relay answers (the preflight's GET /v1/models gets through)
    _v1 = _ok

    def _silent(self) -> None:  # accepts, never answers
        self.stop.wait(30)

    def _drip(self) -> None:  # a byte every 50 ms, forever
        self._head("text/event-stream")
        while not self.stop.wait(0.05):
            self._chunk(b":")

    def _drip_then_hang(self) -> None:  # trips no per-read timeout, then goes quiet
        self._head("text/event-stream")
        for _ in range(14):
            self._chunk(b'data: {"choices": []}\n\n')
            time.sleep(0.05)
        self.stop.wait(30)

    def _flood(self) -> None:  # 50 MB
        block = b"x" * MiB
        self._head("application/json", 50 * MiB)
        for _ in range(50):
            self.wfile.write(block)

    def _flood_stream(self) -> None:
        self._head("text/event-stream")
        frame = b'data: {"choices": [{"delta": {"content": "' + b"y" * 60_000 + b'"}}]}\n\n'
        for _ in range(1000):  # ~60 MB
            self._chunk(frame)


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    stop = threading.Event()
    handler = type("Handler", (_StandIn,), {"stop": stop})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def client(stand_in: str) -> Iterator[RelayClient]:
    http = RelayClient(stand_in, "sk-relaygate-test-SECRET-0123456789", timeout_s=1.0)
    try:
        yield http
    finally:
        http.close()


def test_defaults_are_documented_values() -> None:
    http = RelayClient("http://127.0.0.1:9", None)
    assert (http.timeout_s, http.max_bytes) == (30.0, 16 * MiB) == (30.0, DEFAULT_MAX_BYTES)
    http.close()


def test_a_relay_that_never_answers_is_cut_at_the_deadline(client: RelayClient) -> None:
    ex = client.request("POST", "/silent", json={})
    assert ex.cut_reason == deadline_reason(1.0)
    assert ex.status == 0 and ex.sent_status is None
    assert ex.elapsed_s < 2.5


def test_a_drip_that_never_ends_is_cut_at_the_total_deadline(client: RelayClient) -> None:
    # httpx's per-read timeout never fires on a byte every 50 ms: only a total deadline ends it
    ex = client.request("POST", "/drip", json={})
    assert ex.cut_reason == deadline_reason(1.0)
    assert "did not finish within 1 s (total deadline" in ex.describe()
    assert ex.status == 0 and ex.sent_status == 200
    assert ex.elapsed_s < 2.0
    stream = client.stream({"model": "m"}, path="/drip")
    assert stream.cut_reason == deadline_reason(1.0) and stream.status == 0
    assert stream.elapsed_s < 2.0


def test_the_deadline_counts_from_the_start_not_from_the_last_byte(client: RelayClient) -> None:
    # 0.7 s of events, then silence: a per-read timeout would end it at 1.7 s, the total at 1 s
    ex = client.stream({"model": "m"}, path="/drip-then-hang")
    assert ex.cut_reason == deadline_reason(1.0)
    assert len(ex.events) == 14  # what arrived is kept, marked as cut
    assert ex.elapsed_s < 1.5


def test_fifty_megabytes_are_cut_at_the_byte_cap(stand_in: str) -> None:
    http = RelayClient(stand_in, None, timeout_s=10.0)
    try:
        ex = http.request("GET", "/flood")
        assert ex.cut_reason == byte_cap_reason(16 * MiB)
        assert "the relay sent more than 16 MiB" in ex.describe()
        assert len(ex.body) == 16 * MiB and ex.status == 0 and ex.sent_status == 200
        assert ex.json() is None  # a cut body is never parsed as an answer
        stream = http.stream({"model": "m"}, path="/flood-stream")
        assert stream.cut_reason == byte_cap_reason(16 * MiB)
        assert sum(len(c) for _, c in stream.raw_chunks) == 16 * MiB
        small = RelayClient(stand_in, None, timeout_s=10.0, max_bytes=1000)
        cut = small.request("GET", "/flood").cut_reason
        assert cut == "the relay sent more than 1000 bytes (byte cap; --relay-max-bytes)"
        small.close()
    finally:
        http.close()


def test_a_case_never_takes_a_cut_answer_for_a_served_one(client: RelayClient) -> None:
    ex = client.request("POST", "/drip", json={})
    with pytest.raises(CaseFailure, match=r"did not finish within 1 s \(total deadline"):
        require(ex.status == 200, "the request is served", "HTTP 200", ex.describe(), ex.curl)


def test_a_complete_answer_is_not_cut_and_the_connection_stays_usable(
    client: RelayClient,
) -> None:
    first = client.request("GET", "/ok")
    assert first.status == 200 and first.cut_reason is None and first.json() == {"ok": True}
    time.sleep(1.2)  # past the first exchange's deadline: its watchdog must not fire
    second = client.request("GET", "/ok")
    assert second.status == 200 and second.cut_reason is None


def test_a_long_event_in_small_reads_decodes_in_linear_time() -> None:
    payload = b"z" * (4 * MiB)
    frame = b"data: " + payload + b"\n\n"
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(frame), 1024):
        events += list(decoder.feed(frame[i : i + 1024]))
    assert [len(e.data) for e in events] == [4 * MiB]
    # each byte of the unfinished line is searched once, not once per read (no re-scan)
    decoder = SSEDecoder()
    list(decoder.feed(b"data: "))
    for _ in range(100):
        list(decoder.feed(b"a" * 1024))
    assert decoder.work_bytes <= 6 + 100 * 1024


def test_curl_masks_every_credential() -> None:
    curl = curl_command(
        "POST",
        "http://relay/v1/chat/completions",
        {
            "Authorization": "Bearer sk-relaygate-test-SECRET-0123456789",
            "X-Provider-Key": "pk-SECRET-HEADER-987",
            "X-Api-Key": "plain-looking-secret-value",
            "X-Route": "routing-value-abcdef",
            "X-Plain": "hello",
        },
        b'{"note": "routing-value-abcdef"}',
        secrets=["routing-value-abcdef"],
    )
    for secret in (
        "sk-relaygate-test-SECRET-0123456789",
        "pk-SECRET-HEADER-987",
        "plain-looking-secret-value",
        "routing-value-abcdef",
    ):
        assert secret not in curl
    assert "X-Plain: hello" in curl
    assert "sk-rel…789" in curl  # still tells keys apart


def test_the_sdk_client_has_the_same_deadline_and_cap(stand_in: str) -> None:
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(
        base_url=stand_in, api_key="sk-none", max_retries=0, http_client=sdk_http_client(1.0)
    )
    try:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError) as timed_out:
            sdk.get("/drip", cast_to=object)
        assert time.monotonic() - started < 2.0
        assert deadline_reason(1.0) in str(timed_out.value.__cause__)
        with pytest.raises(openai.APIConnectionError) as flooded:
            sdk.get("/flood", cast_to=object)
        assert byte_cap_reason(16 * MiB) in str(flooded.value.__cause__)
        assert sdk.get("/ok", cast_to=object) == {"ok": True}
    finally:
        sdk.close()


OPTION_PROBE = """
def test_probe(relay, client):
    print(f"PROBE timeout={client.timeout_s} max_bytes={client.max_bytes} {relay.max_bytes}")
"""


def test_the_options_reach_the_client(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, stand_in: str
) -> None:
    pytester.makepyfile(test_probe=OPTION_PROBE)
    url = ["--relay-url", stand_in, "-s", "-p", "no:cacheprovider"]
    result = pytester.runpytest(*url)
    result.stdout.fnmatch_lines([f"*PROBE timeout=30.0 max_bytes={16 * MiB} {16 * MiB}"])
    pytester.makeini("[pytest]\nrelay_max_bytes = 2048\n")
    pytester.runpytest(*url).stdout.fnmatch_lines(["*PROBE timeout=30.0 max_bytes=2048 2048"])
    monkeypatch.setenv("RELAYGATE_RELAY_MAX_BYTES", "4096")
    pytester.runpytest(*url).stdout.fnmatch_lines(["*PROBE * max_bytes=4096 4096"])
    result = pytester.runpytest(*url, "--relay-max-bytes", "100", "--relay-timeout", "2.5")
    result.stdout.fnmatch_lines(["*PROBE timeout=2.5 max_bytes=100 100"])
    for bad in (
        ["--relay-max-bytes", "lots"],
        ["--relay-max-bytes", "0"],
        ["--relay-timeout", "-1"],
        ["--relay-timeout", "inf"],
    ):
        result = pytester.runpytest(*url, *bad)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*relaygate:*"])


def test_the_journal_reads_are_bounded_too(stand_in: str) -> None:
    from relaygate.suite.client import UpstreamJournal

    journal = UpstreamJournal(stand_in + "/drip", timeout_s=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(httpx.ReadError, match=r"mock upstream's answer did not finish"):
            journal.entries("t")
        assert time.monotonic() - started < 2.0
    finally:
        journal.close()


class _RecordingMeter:
    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.before_calls: list[tuple[str, str, bytes | None]] = []
        self.after_calls: list[tuple[str, str, Any]] = []

    def before(self, method: str, path: str, content: bytes | None) -> None:
        self.before_calls.append((method, path, content))
        if self.hold:
            pytest.skip("budget spent (test)")

    def after(self, method: str, path: str, content: bytes | None, exchange: Any) -> None:
        self.after_calls.append((method, path, exchange))


def test_the_sdk_client_goes_through_the_meter() -> None:
    """The SDK cases' requests are metered like the suite client's (the live budget and its
    spend count them): a plain answer as an Exchange, a stream as a StreamExchange with its
    events, and a request the meter holds back is never sent."""
    openai = pytest.importorskip("openai")
    from mock_helpers import MockThread

    from relaygate.suite.budget import answer_text
    from relaygate.suite.client import StreamExchange

    meter = _RecordingMeter()
    with MockThread() as mock:
        sdk = openai.OpenAI(
            base_url=f"http://127.0.0.1:{mock.port}/v1",
            api_key="sk-relaygate-upstream",
            max_retries=0,
            http_client=sdk_http_client(5.0, meter=meter),
        )
        try:
            answer = sdk.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "[[relaygate chunks=3]]"}]
            )
            parts = [
                c.choices[0].delta.content or ""
                for c in sdk.chat.completions.create(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": "[[relaygate chunks=4]]"}],
                    stream=True,
                )
                if c.choices
            ]
            journal = httpx.get(f"http://127.0.0.1:{mock.port}/_relaygate/journal", timeout=5)
            sent_before = len(journal.json()["data"])
            meter.hold = True
            with pytest.raises(pytest.skip.Exception):
                sdk.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "held back"}]
                )
            journal = httpx.get(f"http://127.0.0.1:{mock.port}/_relaygate/journal", timeout=5)
            assert len(journal.json()["data"]) == sent_before  # nothing reached the upstream
        finally:
            sdk.close()
    assert [(m, p) for m, p, _ in meter.before_calls] == [("POST", "/v1/chat/completions")] * 3
    assert b'"model":"gpt-4o"' in (meter.before_calls[0][2] or b"").replace(b" ", b"")
    plain, streamed = (exchange for _, _, exchange in meter.after_calls)
    assert plain.status == 200 and not isinstance(plain, StreamExchange)
    assert answer_text(plain) == answer.choices[0].message.content
    assert isinstance(streamed, StreamExchange) and streamed.done_count == 1
    assert answer_text(streamed) == "".join(parts)
