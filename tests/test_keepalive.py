"""The keep-alive probe (relaygate.suite.keepalive) and the suite's clients never retrying.

Against stand-in servers on 127.0.0.1 (tests/raw_http_server.py): a connection kept alive
answers both requests, one closed after ``Connection: close`` is legal and not probed again,
one closed silently is reported with how it failed; every exchange keeps its deadline. And a
request the server drops or refuses is sent exactly once by the suite's client and by the
OpenAI SDK as the suite configures it (``max_retries=0``): no silent retry.
"""

from __future__ import annotations

import time

import httpx
import pytest
from raw_http_server import RawHttpServer

from relaygate.suite.client import RelayClient, sdk_http_client
from relaygate.suite.keepalive import RawRequest, proxied, two_on_one_connection

KEY = "sk-relaygate-test-0123456789abcdef"
FIRST = RawRequest("POST", "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}, b"{}")
SECOND = RawRequest("GET", "/v1/models", {"Authorization": f"Bearer {KEY}"})


def _pair(url: str, timeout_s: float = 5.0):
    return two_on_one_connection(
        url, FIRST, SECOND, timeout_s=timeout_s, max_bytes=1 << 20, secrets=(KEY,)
    )


def test_a_kept_connection_answers_both_requests_on_one_connection() -> None:
    with RawHttpServer("keep") as server:
        pair = _pair(server.url)
    assert pair.first.status == 401 and pair.first.error is not None
    assert not pair.close_announced and pair.dropped is None
    assert pair.second is not None and pair.second.status == 401
    assert server.requests == 2
    assert " --next " in pair.curl and KEY not in pair.curl


def test_an_announced_close_is_legal_and_not_probed_again() -> None:
    with RawHttpServer("announce_close") as server:
        pair = _pair(server.url)
    assert pair.close_announced and pair.second is None and pair.dropped is None
    assert server.requests == 1


def test_a_silent_close_after_the_answer_is_reported() -> None:
    with RawHttpServer("drop") as server:
        pair = _pair(server.url)
    assert pair.first.status == 401 and not pair.close_announced
    assert pair.second is None
    assert pair.dropped is not None and ("closed" in pair.dropped or "reset" in pair.dropped)
    assert server.requests == 1


def test_a_silent_first_answer_keeps_the_deadline() -> None:
    # The server reads the request and never answers: the exchange ends at the deadline.
    with RawHttpServer("hang") as server:
        started = time.monotonic()
        pair = _pair(server.url, timeout_s=0.5)
        assert time.monotonic() - started < 3
    assert pair.first.status == 0 and pair.first.cut_reason is not None
    assert "0.5 s" in pair.first.cut_reason


def test_a_connection_closed_without_any_answer_is_a_connection_error() -> None:
    with RawHttpServer("no_answer") as server, pytest.raises(ConnectionError, match="EOF"):
        _pair(server.url)


def test_a_proxied_relay_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert proxied("https://relay.example")
    monkeypatch.setenv("NO_PROXY", "relay.example")
    assert not proxied("https://relay.example")


def test_the_suite_client_does_not_resend_a_request_that_got_no_answer() -> None:
    with RawHttpServer("no_answer") as server:
        client = RelayClient(server.url, KEY, timeout_s=2.0)
        with pytest.raises(httpx.HTTPError):
            client.chat({"model": "gpt-4o", "messages": []})
        client.close()
        time.sleep(0.1)
    assert server.requests == 1


def test_the_suite_client_does_not_retry_a_5xx() -> None:
    with RawHttpServer("keep", status=503, extra_headers="Retry-After: 0\r\n") as server:
        client = RelayClient(server.url, KEY, timeout_s=2.0)
        ex = client.chat({"model": "gpt-4o", "messages": []})
        client.close()
    assert ex.status == 503
    assert server.requests == 1


def test_the_sdk_as_the_suite_configures_it_does_not_retry() -> None:
    openai = pytest.importorskip("openai")
    with RawHttpServer("keep", status=500, extra_headers="Retry-After: 0\r\n") as server:
        sdk = openai.OpenAI(
            base_url=server.url + "/v1",
            api_key=KEY,
            max_retries=0,
            http_client=sdk_http_client(2.0),
        )
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        sdk.close()
    assert server.requests == 1
