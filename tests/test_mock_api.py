"""The mock upstream's non-stream API: shapes, auth, limits, directed errors, bad input, journal."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
from mock_helpers import KEY, MockThread, RawResponse, chat, error_of, request

from relaygate.mock.config import MockConfig, ModelLimits
from relaygate.tokens import count_chat_prompt, count_text

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def mock() -> Iterator[MockThread]:
    with MockThread() as server:
        yield server


def post(
    mock: MockThread,
    body: object,
    path: str = CHAT,
    headers: dict[str, str] | None = None,
    raw_body: bytes | None = None,
) -> RawResponse:
    return request(mock.port, "POST", path, body, headers=headers, raw_body=raw_body)


def test_models_list_and_retrieve(mock: MockThread) -> None:
    listed = request(mock.port, "GET", "/v1/models")
    assert listed.status == 200
    body = listed.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids[:4] == ["gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-3.5-turbo"]
    assert all(m["object"] == "model" and "owned_by" in m and "created" in m for m in body["data"])
    one = request(mock.port, "GET", "/v1/models/gpt-4")
    assert one.status == 200 and one.json()["id"] == "gpt-4"
    missing = request(mock.port, "GET", "/v1/models/GPT-4")
    assert missing.status == 404
    assert error_of(missing)["code"] == "model_not_found"


def test_chat_non_stream_shape_and_exact_usage(mock: MockThread) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello [[relaygate chunks=5 tokens_per_chunk=3]]"},
    ]
    response = post(mock, {"model": "gpt-4o", "messages": messages})
    assert response.status == 200
    assert response.headers["x-request-id"].startswith("req_")
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o"
    assert body["system_fingerprint"]
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert text == " tok" * 15
    assert count_text(text, "gpt-4o") == 15 and count_text(text, "gpt-4") == 15
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_chat_prompt(messages, "gpt-4o")
    assert usage["completion_tokens"] == 15
    assert usage["total_tokens"] == usage["prompt_tokens"] + 15


def test_usage_directive_and_finish_reason(mock: MockThread) -> None:
    response = post(mock, chat("x [[relaygate usage=12/50 finish_reason=length]]"))
    body = response.json()
    assert body["usage"]["prompt_tokens"] == 12
    assert body["usage"]["completion_tokens"] == 50
    assert body["usage"]["total_tokens"] == 62
    assert body["choices"][0]["finish_reason"] == "length"


def test_chat_tool_call_non_stream(mock: MockThread) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    response = post(mock, chat("[[relaygate finish_reason=tool_calls chunks=3]]", tools=tools))
    message = response.json()["choices"][0]["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == '{"text":" tok tok tok"}'


def test_legacy_completions(mock: MockThread) -> None:
    prompt = "Say this is a test [[relaygate chunks=4]]"
    response = post(mock, {"model": "gpt-3.5-turbo", "prompt": prompt}, "/v1/completions")
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "gpt-3.5-turbo"
    (choice,) = body["choices"]
    assert choice == {"text": " tok" * 4, "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert body["usage"]["prompt_tokens"] == count_text(prompt, "gpt-3.5-turbo")
    assert body["usage"]["completion_tokens"] == 4


def test_embeddings(mock: MockThread) -> None:
    body = {"model": "text-embedding-3-small", "input": ["hello world", "bye"]}
    first = post(mock, body, "/v1/embeddings").json()
    again = post(mock, body, "/v1/embeddings").json()
    assert first["object"] == "list" and first["model"] == "text-embedding-3-small"
    assert [d["index"] for d in first["data"]] == [0, 1]
    vector = first["data"][0]["embedding"]
    assert len(vector) == 1536 and abs(sum(v * v for v in vector) - 1) < 1e-9
    assert first["data"] == again["data"]
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]
    tokens = count_text("hello world", "gpt-4") + count_text("bye", "gpt-4")
    assert first["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    small = post(
        mock, {**body, "dimensions": 8, "encoding_format": "base64"}, "/v1/embeddings"
    ).json()
    assert len(base64.b64decode(small["data"][0]["embedding"])) == 8 * 4


def test_auth(mock: MockThread) -> None:
    wrong = post(mock, chat("hi"), headers={"Authorization": "Bearer sk-abcdefghijklmnxyz"})
    assert wrong.status == 401
    error = error_of(wrong)
    assert error["message"].startswith("Incorrect API key provided: sk-abc…xyz.")
    assert "sk-abcdefghijklmnxyz" not in wrong.raw.decode()
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert error["param"] is None
    missing = post(mock, chat("hi"), headers={"Authorization": ""})
    assert missing.status == 401 and error_of(missing)["code"] == "invalid_api_key"
    models = request(mock.port, "GET", "/v1/models", headers={"Authorization": "Bearer nope"})
    assert models.status == 401
    control = request(mock.port, "GET", "/_relaygate/health", headers={"Authorization": "x"})
    assert control.status == 200 and control.json() == {"ok": True}


def test_configured_keys_and_models() -> None:
    config = MockConfig(keys=("sk-one-1234567890", "sk-two-1234567890"),
                        models={"my-model": ModelLimits(1000, 100)})  # fmt: skip
    with MockThread(config) as server:
        for key in config.keys:
            ok = request(
                server.port, "POST", CHAT,
                {"model": "my-model", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
            )  # fmt: skip
            assert ok.status == 200
        assert request(server.port, "POST", CHAT, chat("hi")).status == 401  # default key
        models = request(server.port, "GET", "/v1/models",
                         headers={"Authorization": "Bearer sk-one-1234567890"})  # fmt: skip
        assert [m["id"] for m in models.json()["data"]] == ["my-model"]


def test_unknown_model_is_case_sensitive(mock: MockThread) -> None:
    response = post(mock, {"model": "GPT-4o", "messages": [{"role": "user", "content": "x"}]})
    assert response.status == 404
    assert error_of(response) == {
        "message": "The model 'GPT-4o' does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_over_cap(mock: MockThread, field: str) -> None:
    response = post(mock, chat("hi", **{field: 20000}))
    assert response.status == 400
    assert error_of(response) == {
        "message": "max_tokens is too large: 20000. This model supports at most 16384 "
        "completion tokens, whereas you provided 20000.",
        "type": "invalid_request_error",
        "param": field,
        "code": "invalid_value",
    }


def test_context_window(mock: MockThread) -> None:
    body = {
        "model": "gpt-4",
        "max_tokens": 8000,
        "messages": [{"role": "user", "content": "[[relaygate prompt_tokens=1000]]"}],
    }
    response = post(mock, body)
    assert response.status == 400
    assert error_of(response) == {
        "message": "This model's maximum context length is 8192 tokens. However, you requested "
        "9000 tokens (1000 in the messages, 8000 in the completion). Please reduce the length "
        "of the messages or completion.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    fits = post(mock, {**body, "max_tokens": 7192})
    assert fits.status == 200
    huge = post(mock, {**body, "max_tokens": None, "messages": [
        {"role": "user", "content": "[[relaygate prompt_tokens=9000]]"}]})  # fmt: skip
    assert huge.status == 400 and error_of(huge)["code"] == "context_length_exceeded"


@pytest.mark.parametrize("value", [0, -5, "10", 1.5, True])
def test_max_tokens_invalid(mock: MockThread, value: object) -> None:
    response = post(mock, chat("hi", max_tokens=value))
    assert response.status == 400
    assert error_of(response)["param"] == "max_tokens"


def test_directed_429(mock: MockThread) -> None:
    directive = '[[relaygate error=429 retry_after=7 headers="x-a:1,x-b:two" tag=rl]]'
    response = post(mock, chat(directive))
    assert response.status == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-a"] == "1" and response.headers["x-b"] == "two"
    error = error_of(response)
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"


def test_directed_error_fields_and_500(mock: MockThread) -> None:
    default = error_of(post(mock, chat("[[relaygate error=500]]")))
    assert default["type"] == "server_error"
    directive = '[[relaygate error=400 error_type=t error_code=c error_param=p error_message="m"]]'
    custom = post(mock, chat(directive))
    assert custom.status == 400
    assert error_of(custom) == {"message": "m", "type": "t", "param": "p", "code": "c"}


@pytest.mark.parametrize(
    ("kind", "content_type"), [("html", "text/html"), ("text", "text/plain"), ("empty", None)]
)
def test_directed_error_bodies(mock: MockThread, kind: str, content_type: str | None) -> None:
    response = post(mock, chat(f"[[relaygate error=502 error_body={kind}]]"))
    assert response.status == 502
    if content_type is None:
        assert response.body == b""
    else:
        assert response.headers["content-type"].startswith(content_type)
        assert b"502" in response.body


def test_directed_error_200_and_stream(mock: MockThread) -> None:
    ok_status = post(mock, chat("[[relaygate error=200]]"))
    assert ok_status.status == 200
    assert error_of(ok_status)["type"] == "server_error"
    streamed = post(mock, chat("[[relaygate error=503]]", stream=True))
    assert streamed.status == 503
    assert streamed.headers["content-type"].startswith("application/json")
    assert error_of(streamed)["type"] == "server_error"


@pytest.mark.serial  # judges timing (an upper bound): under xdist last and alone (conftest.py)
def test_delay_and_non_stream_latency(mock: MockThread) -> None:
    started = time.monotonic()
    post(mock, chat("[[relaygate error=429 delay_ms=120]]"))
    assert 0.115 <= time.monotonic() - started < 0.5
    started = time.monotonic()
    post(mock, chat("[[relaygate ttft_ms=50 itl_ms=20 chunks=4 delay_ms=10]]"))
    assert 0.115 <= time.monotonic() - started < 0.5  # 50 + 3*20 + 10


def test_malformed_directive(mock: MockThread) -> None:
    response = post(mock, chat("[[relaygate chunks=many]]"))
    assert response.status == 400
    error = error_of(response)
    assert error["code"] == "invalid_directive" and error["param"] == "chunks"
    assert error["message"].startswith("invalid relaygate directive: ")
    assert error_of(post(mock, chat("[[relaygate error=100]]")))["code"] == "invalid_directive"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"not json", None),
        (b"\xff\xfe{}", None),
        (b"", None),
        (b"[1, 2]", "body"),
        (b'{"model": "gpt-4o"}', "messages"),
        (b'{"model": "gpt-4o", "messages": "hi"}', "messages"),
        (b'{"model": "gpt-4o", "messages": []}', "messages"),
        (b'{"model": "gpt-4o", "messages": ["hi"]}', "messages[0]"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": 4, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "gpt-4o", "stream": "yes", "messages": [{"role": "user"}]}', "stream"),
    ],
)
def test_bad_chat_input(mock: MockThread, raw: bytes, param: str | None) -> None:
    response = post(mock, None, raw_body=raw)
    assert response.status == 400, response.raw
    error = error_of(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_bad_input_other_endpoints(mock: MockThread) -> None:
    no_input = post(mock, {"model": "text-embedding-3-small"}, "/v1/embeddings")
    assert no_input.status == 400 and error_of(no_input)["param"] == "input"
    bad_prompt = post(mock, {"model": "gpt-4", "prompt": {"a": 1}}, "/v1/completions")
    assert bad_prompt.status == 400 and error_of(bad_prompt)["param"] == "prompt"


def test_body_too_large_is_413_json() -> None:
    with MockThread(MockConfig(max_body_bytes=2048)) as server:
        big = chat("x" * 5000)
        response = request(server.port, "POST", CHAT, big)
        assert response.status == 413
        assert error_of(response)["code"] == "request_too_large"
        (entry,) = request(server.port, "GET", "/_relaygate/journal").json()["data"]
        assert entry["status"] == 413 and entry["body_bytes"] > 2048


def test_unknown_path_and_wrong_method(mock: MockThread) -> None:
    unknown = post(mock, {}, "/v1/foo")
    assert unknown.status == 404
    assert error_of(unknown)["message"] == "Invalid URL (POST /v1/foo)"
    wrong = request(mock.port, "GET", CHAT)
    assert wrong.status == 405
    assert error_of(wrong)["message"] == "Invalid method for URL (GET /v1/chat/completions)"
    for response in (unknown, wrong):
        assert b"<html" not in response.raw


def test_journal(mock: MockThread) -> None:
    start = request(mock.port, "GET", "/_relaygate/journal").json()["next_seq"]
    post(mock, chat("one [[relaygate tag=j-1]]"))
    post(mock, chat("two [[relaygate tag=j-2]]"), headers={"Authorization": "Bearer bad"})
    post(mock, None, raw_body=b"\xff plain text")
    request(mock.port, "GET", "/_relaygate/health")  # control paths are not journaled
    page = request(mock.port, "GET", f"/_relaygate/journal?since_seq={start}").json()
    entries = page["data"]
    assert [e["seq"] for e in entries] == [start, start + 1, start + 2]
    assert page["next_seq"] == start + 3
    first, second, third = entries
    assert first["method"] == "POST" and first["path"] == CHAT
    assert first["body"]["messages"][0]["content"] == "one [[relaygate tag=j-1]]"
    assert first["tag"] == "j-1" and first["status"] == 200 and first["answer"] == "json"
    assert ["Authorization", f"Bearer {KEY}"] in first["headers"]
    assert isinstance(first["arrival_ns"], int) and first["arrival_wall"] > 1e9
    assert second["tag"] == "j-2" and second["status"] == 401  # journaled before auth
    assert third["body"] == "\ufffd plain text" and third["status"] == 400
    tagged = request(mock.port, "GET", "/_relaygate/journal?tag=j-2").json()["data"]
    assert [e["seq"] for e in tagged] == [start + 1]
    limited = request(mock.port, "GET", f"/_relaygate/journal?since_seq={start}&limit=1").json()
    assert len(limited["data"]) == 1 and limited["next_seq"] == start + 1
    bad = request(mock.port, "GET", "/_relaygate/journal?since_seq=x")
    assert bad.status == 400 and error_of(bad)["param"] == "since_seq"


def test_journal_reset_and_ring_bound() -> None:
    with MockThread(MockConfig(journal_size=3)) as server:
        for _ in range(5):
            request(server.port, "GET", "/v1/models")
        journal = request(server.port, "GET", "/_relaygate/journal").json()
        assert [e["seq"] for e in journal["data"]] == [3, 4, 5]
        reset = request(server.port, "DELETE", "/_relaygate/journal")
        assert reset.status == 200
        assert request(server.port, "GET", "/_relaygate/journal").json()["data"] == []


def test_journal_truncates_huge_bodies() -> None:
    with MockThread(MockConfig(journal_body_bytes=4096)) as server:
        request(server.port, "POST", CHAT, chat("y" * 20000))
        request(server.port, "POST", CHAT, None, raw_body=b"z" * 20000)
        json_entry, text_entry = request(server.port, "GET", "/_relaygate/journal").json()["data"]
        assert json_entry["body_truncated"] is True and json_entry["body_bytes"] > 20000
        content = json_entry["body"]["messages"][0]["content"]
        assert content.startswith("yyy") and content.endswith("chars truncated]")
        assert text_entry["body_truncated"] is True and len(text_entry["body"]) == 4096


def test_stats_endpoint(mock: MockThread) -> None:
    assert request(mock.port, "POST", "/_relaygate/stats/reset").json() == {"ok": True}
    post(mock, chat("[[relaygate chunks=3 itl_ms=5]]", stream=True))
    stats = request(mock.port, "GET", "/_relaygate/stats").json()
    assert stats["events"] == 3
    assert stats["streams"]["started"] == 1 and stats["streams"]["finished"] == 1
    assert stats["write_lateness_ms"]["count"] == 3
    assert stats["gap_error_ms"]["count"] == 2
    assert set(stats["gap_error_ms"]) == {
        "count", "mean", "min", "p50", "p90", "p99", "max", "under_range", "over_range"
    }  # fmt: skip


def test_health_for_benchmark_peers(mock: MockThread) -> None:
    """``GET /health`` answers 200 JSON without a key (guidellm's backend check probes it),
    and is not journaled: a peer's probes must not count as forwarded requests."""
    start = request(mock.port, "GET", "/_relaygate/journal").json()["next_seq"]
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        answer = request(mock.port, "GET", "/health", headers=headers)
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json() == {"status": "ok"}
    page = request(mock.port, "GET", f"/_relaygate/journal?since_seq={start}").json()
    assert page["data"] == [] and page["next_seq"] == start
