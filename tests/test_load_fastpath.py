"""The client's fast paths decode exactly like the general path: frames split at every byte
offset, coalesced, CRLF, ``data:`` without space, comments, token chunks recognised by byte
search or by a stream's template, batch histogram recording, kernel receive stamps and the
gevent waiter (in a subprocess, so monkey-patching never reaches pytest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relaygate.load import outcomes
from relaygate.load.body_sinks import SSESink, TokenTemplate, fast_token
from relaygate.load.client import RequestResult, TimingClient, kernel_stamps_supported
from relaygate.load.histogram import Histogram
from relaygate.load.http11 import Dechunker, ProtocolError

ROOT = Path(__file__).resolve().parents[1]


def frame(obj: object, *, prefix: bytes = b"data: ", end: bytes = b"\n\n") -> bytes:
    return prefix + json.dumps(obj, separators=(",", ":")).encode() + end


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def base(delta: dict[str, object], finish: str | None = None, **extra: object) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
        **extra,
    }


def stream_frames(prefix: bytes = b"data: ", end: bytes = b"\n\n") -> list[bytes]:
    frames = [frame(base({"role": "assistant", "content": ""}, relaygate_emit_ns=1)), b": ping\n\n"]
    for i, text in enumerate(["Hel", 'lo \\"q\\"', "\\\\", " w", "orld"]):
        frames.append(frame(base({"content": text}, relaygate_emit_ns=100 + i)))
    frames.append(frame(base({"content": "!"}, "stop", relaygate_emit_ns=200)))
    usage = {"prompt_tokens": 3, "completion_tokens": 6}
    frames.append(frame({"id": "chatcmpl-1", "choices": [], "usage": usage}))
    frames.append(b"data: [DONE]\n\n")
    if prefix != b"data: " or end != b"\n\n":
        frames = [f.replace(b"data: ", prefix).replace(b"\n\n", end) for f in frames]
    return frames


def decode(reads: list[bytes]) -> RequestResult:
    """Dechunk + SSE-decode ``reads``; the i-th read arrives at time 1000 * (i + 1)."""
    res = RequestResult()
    sink = SSESink(res)
    dechunker = Dechunker()
    now = 0
    for i, data in enumerate(reads):
        now = 1000 * (i + 1)
        payload = dechunker.feed(data)
        if payload:
            sink.feed(payload, now)
    sink.close(now)
    assert dechunker.done
    return res


def summary(res: RequestResult) -> tuple[object, ...]:
    return (
        res.events,
        len(res.token_event_ns),
        res.finish_reason,
        res.completion_tokens,
        res.saw_done,
        res.error,
        res.malformed_events,
        [now - lag for now, lag in zip(res.token_event_ns, res.token_emit_lag_ns, strict=True)],
    )


EXPECTED = (9, 6, "stop", 6, True, None, 0, [100, 101, 102, 103, 104, 200])


@pytest.mark.parametrize(
    ("prefix", "end"), [(b"data: ", b"\n\n"), (b"data:", b"\n\n"), (b"data: ", b"\r\n\r\n")]
)
def test_split_at_every_offset_decodes_like_whole(prefix: bytes, end: bytes) -> None:
    body = chunked(stream_frames(prefix, end))
    whole = decode([body])
    assert summary(whole) == EXPECTED
    assert whole.token_event_ns == [1000] * 6
    for cut in range(1, len(body)):
        res = decode([body[:cut], body[cut:]])
        assert summary(res) == EXPECTED, cut
        # Each event gets the arrival time of the read that completed it.
        assert all(t in (1000, 2000) for t in res.token_event_ns)
    # byte by byte
    assert summary(decode([body[i : i + 1] for i in range(len(body))])) == EXPECTED


def test_one_event_per_read_stamps_each_event_and_role_is_no_token() -> None:
    frames = stream_frames()
    res = decode([chunked([f])[:-5] for f in frames] + [b"0\r\n\r\n"])
    assert summary(res) == EXPECTED
    assert res.t_first_event_ns == 1000  # the role chunk: the ack, not a token
    assert res.t_first_token_ns == 3000  # after the comment frame
    assert res.token_event_ns == [3000, 4000, 5000, 6000, 7000, 8000]


def test_fast_token_accepts_only_plain_token_chunks() -> None:
    plain = frame(base({"content": "x"}, relaygate_emit_ns=42))[6:-2]
    assert fast_token(plain) == 42
    assert fast_token(frame(base({"content": "x"}))[6:-2]) == 0
    rejected = [
        base({"role": "assistant", "content": ""}),
        base({"content": "x"}, "stop"),
        base({"content": "x"}, usage={"completion_tokens": 1}) | {"usage": {"a": 1}},
        base({"content": "x"}) | {"error": {"message": "boom"}},
        base({"tool_calls": [{"index": 0}], "content": "x"}),
        base({"reasoning_content": "x"}),
        {"choices": [{"delta": {"content": "a"}}, {"delta": {"content": "b"}}]},
    ]
    for obj in rejected:
        assert fast_token(json.dumps(obj, separators=(",", ":")).encode()) is None, obj
    spaced = json.dumps(base({"content": "x"}, "stop")).encode()  # ", " and ": " separators
    assert fast_token(spaced) is None
    assert fast_token(plain[:-1]) is None  # truncated JSON is never taken for a token
    # the words inside the content never count as keys (quotes in strings are escaped)
    tricky = frame(base({"content": 'say "error" and "finish_reason":"stop"'}))[6:-2]
    assert fast_token(tricky) == 0


def test_token_template_matches_same_structure_only() -> None:
    first = frame(base({"content": "a"}, relaygate_emit_ns=5))[6:-2]
    template = TokenTemplate.of(first)
    assert template is not None
    assert template.match(frame(base({"content": 'b\\"c'}, relaygate_emit_ns=77))[6:-2]) == 77
    assert template.match(frame(base({"content": ""}, relaygate_emit_ns=7))[6:-2]) is None
    assert template.match(frame(base({"content": "b"}, "stop", relaygate_emit_ns=7))[6:-2]) is None
    assert template.match(frame(base({"content": "b"}, relaygate_emit_ns="x"))[6:-2]) is None
    other = frame({"id": "chatcmpl-2", "choices": [{"delta": {"content": "b"}}]})[6:-2]
    assert template.match(other) is None


def test_record_ns_matches_record() -> None:
    values = [0, 5_000, 9_999, 10_000, 1_234_567, -3_000, 99_999_999, 100_000_000, 2_500_000_000]
    one, batch = Histogram(), Histogram()
    for value in values:
        one.record(abs(value) / 1e6)
    batch.record_ns(values, absolute=True)
    assert batch.to_dict() == one.to_dict()
    signed = Histogram()
    signed.record_ns([-1_000_000, 2_000_000])
    assert signed.negative == 1 and signed.count == 2


def _serve_once(script: bytes, hold_s: float = 0.0) -> tuple[str, object]:
    import socket
    import threading
    import time

    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(script)
                time.sleep(hold_s)
        except OSError:  # the client under test may close first; that is its right
            return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.getsockname()[1]}", server


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("kernel", [True, False])
def test_kernel_and_user_stamps(kernel: bool) -> None:
    url, server = _serve_once(HEAD + chunked(stream_frames()))
    try:
        with TimingClient(url, timeout_s=5, kernel_stamps=kernel) as client:
            res = client.post_json("/v1/chat/completions", {"stream": True})
    finally:
        server.close()  # type: ignore[attr-defined]
    assert res.outcome == outcomes.OK, res.error
    assert res.kernel_stamps == (kernel and kernel_stamps_supported())
    assert len(res.token_event_ns) == 6 and res.finish_reason == "stop"
    assert res.t_sent_ns is not None and res.t_first_token_ns is not None
    assert res.t_sent_ns <= res.t_first_token_ns <= (res.t_end_ns or 0)
    if res.kernel_stamps:
        assert len(res.recv_lag_ns) == 6 and all(0 <= lag < 1e9 for lag in res.recv_lag_ns)
    else:
        assert res.recv_lag_ns == []


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import json, sys, time, gevent
    from gevent.server import StreamServer
    from relaygate.load.client import TimingClient
    from relaygate.load.geventio import cooperative
    body, silent = (bytes.fromhex(arg) for arg in sys.argv[1:])
    def handle(sock, _addr):
        request = sock.recv(65536)
        if b"/silent" in request.split(b"\\r\\n")[0]:
            sock.sendall(silent); gevent.sleep(1.0)  # then nothing: must time out
            return
        if b"/open" in request.split(b"\\r\\n")[0]:
            sock.sendall(body[:-5]); gevent.sleep(3.0)  # [DONE] but the body stays open
            return
        for i in range(0, len(body), 97):  # many small writes: many reads and waits
            sock.sendall(body[i : i + 97]); gevent.sleep(0.002)
    server = StreamServer(("127.0.0.1", 0), handle); server.start()
    url = f"http://127.0.0.1:{server.server_port}"
    out = {}
    for name, timeout in (("ok", 5.0), ("silent", 0.3), ("open", 30.0)):
        client = TimingClient(url, timeout_s=timeout, cooperative=cooperative)
        began = time.monotonic()
        res = client.post_json("/" + name, {"stream": True})
        seconds = time.monotonic() - began
        out[name] = [res.outcome, len(res.token_event_ns), res.finish_reason, seconds]
        client.close()
    print(json.dumps(out))
    """
)


def test_gevent_cooperative_reader_and_idle_timeout() -> None:
    ok = HEAD + chunked(stream_frames())
    silent = HEAD + chunked([stream_frames()[0]])[:-5]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, ok.hex(), silent.hex()],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"][:3] == [outcomes.OK, 6, "stop"]
    assert out["silent"][0] == outcomes.TIMEOUT and out["silent"][3] < 1.0
    # after [DONE] the idle timeout drops to 2 s (the re-armed timer, not the 30 s one)
    assert out["open"][:3] == [outcomes.OK, 6, "stop"] and out["open"][3] < 5.0


GEVENT_DEADLINE_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import json, sys, time, gevent
    from gevent.server import StreamServer
    from relaygate.load.client import TimingClient
    from relaygate.load.geventio import cooperative
    head, role, tok = (bytes.fromhex(arg) for arg in sys.argv[1:])
    def handle(sock, _addr):
        request = sock.recv(65536)
        sock.sendall(head + role)
        if b"/silent" in request.split(b"\\r\\n")[0]:
            gevent.sleep(3.0)
            return
        for _ in range(300):  # a token every 100 ms: the idle timer never fires
            gevent.sleep(0.1); sock.sendall(tok)
    server = StreamServer(("127.0.0.1", 0), handle); server.start()
    url = f"http://127.0.0.1:{server.server_port}"
    out = {}
    client = TimingClient(url, timeout_s=5.0, request_timeout_s=0.6, cooperative=cooperative)
    for name in ("drip", "silent"):
        began = time.monotonic()
        res = client.post_json("/" + name, {"stream": True})
        out[name] = [res.outcome, time.monotonic() - began, client.in_flight()]
    # gevent's own Timeout and kill() still end a request in flight (end of a run)
    slow = TimingClient(url, timeout_s=5.0, cooperative=cooperative)
    began = time.monotonic()
    try:
        with gevent.Timeout(0.3):
            slow.post_json("/drip", {"stream": True})
        out["gevent_timeout"] = "not raised"
    except gevent.Timeout:
        out["gevent_timeout"] = [time.monotonic() - began, slow.in_flight()]
    glet = gevent.spawn(slow.post_json, "/drip", {"stream": True})
    gevent.sleep(0.3)
    assert slow.in_flight() == 1
    glet.kill(timeout=2)
    out["killed"] = [glet.dead, slow.in_flight()]
    print(json.dumps(out))
    """
)


@pytest.mark.serial  # judges timing (arrival gaps / a 0.4 s window): last and alone
def test_gevent_cooperative_reader_total_deadline_and_kill() -> None:
    head = HEAD
    role = chunked([stream_frames()[0]])[:-5]
    tok = chunked([stream_frames()[2]])[:-5]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_DEADLINE_SCRIPT, head.hex(), role.hex(), tok.hex()],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("drip", "silent"):
        outcome, took_s, in_flight = out[name]
        assert outcome == outcomes.REQUEST_TIMEOUT and 0.6 <= took_s < 1.0 and in_flight == 0
    assert out["gevent_timeout"] != "not raised" and out["gevent_timeout"][1] == 0
    assert out["killed"] == [True, 0]


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n"])
def test_one_huge_event_in_small_reads_costs_linear_work(end: bytes) -> None:
    """A 4 MB data line in 1 KB reads: each read searches only its new bytes (no timing:
    the sink and the decoder count the bytes they search or copy while an event is partial;
    re-scanning the whole buffer per read would be ~8 GB here)."""
    size = 4 * 1024 * 1024
    body = b'data: {"choices":[{"delta":{"content":"' + b"x" * size + b'"}}]}' + end
    res = RequestResult()
    sink = SSESink(res)
    for i in range(0, len(body), 1024):
        sink.feed(body[i : i + 1024], i)
    sink.close(len(body))
    assert res.events == 1 and len(res.token_event_ns) == 1
    work = sink.work_bytes + sink._decoder.work_bytes
    assert work <= 3 * len(body), work


def test_dechunker_coalesced_reads_decode_like_the_general_path() -> None:
    """Several whole chunks in one read (a busy client reading late) take the fast path;
    every grouping of whole and cut chunks gives the bytes the general decoder gives."""
    parts = [b"a" * n for n in (1, 15, 16, 17, 255, 4096)] + [b"data: x\n\n"]
    body = chunked(parts)
    general = Dechunker()
    expected = general._feed(body)
    assert general.done and expected == b"".join(parts)
    for cut in range(len(body) + 1):
        for step in (cut, cut + 7):
            dechunker = Dechunker()
            out = dechunker.feed(body[:cut]) + dechunker.feed(body[cut:step])
            out += dechunker.feed(body[step:])
            assert out == expected and dechunker.done, (cut, step)
    ext = b"5;name=v\r\nhello\r\n" + b"5\r\nworld\r\n" + b"0\r\nTrailer: x\r\n\r\n"
    dechunker = Dechunker()
    assert dechunker.feed(b"3\r\nabc\r\n" + ext) == b"abchelloworld" and dechunker.done


@pytest.mark.parametrize("data", [b"\r\n5\r\nhello\r\n", b"5\r\nhello\r\n\r\n5\r\nhello\r\n"])
def test_dechunker_empty_size_line_is_a_protocol_error(data: bytes) -> None:
    """An empty chunk-size line used to raise ValueError from the fast path (the client then
    called it client_exception instead of a framing error)."""
    with pytest.raises(ProtocolError, match="bad chunk size"):
        Dechunker().feed(data)
