"""The mock upstream behaves like a model when a request carries no directive (issue #12).

max_tokens, exact usage, determinism per model, stop sequences, ``n`` choices and the small
instruction repertoire live probes use; streams and non-stream answers agree.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mock_helpers import MockThread, RawResponse, request

from relaygate.cli import mock_upstream
from relaygate.mock import model as mock_model
from relaygate.mock.config import MockConfig
from relaygate.tokens import count_chat_prompt, count_text

CHAT = "/v1/chat/completions"
LEGACY = "/v1/completions"


@pytest.fixture(scope="module")
def mock() -> Iterator[MockThread]:
    with MockThread() as server:
        yield server


def ask(content: str, model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def post(mock: MockThread, body: dict[str, Any], path: str = CHAT) -> RawResponse:
    return request(mock.port, "POST", path, body)


def answer(mock: MockThread, body: dict[str, Any], path: str = CHAT) -> dict[str, Any]:
    response = post(mock, body, path)
    assert response.status == 200, response.body
    result: dict[str, Any] = response.json()
    return result


def streamed(mock: MockThread, body: dict[str, Any], path: str = CHAT) -> dict[str, Any]:
    """A stream folded into the non-stream shape: texts and finish per index, usage."""
    response = post(mock, {**body, "stream": True, "stream_options": {"include_usage": True}}, path)
    assert response.status == 200, response.body
    assert response.events()[-1] == "[DONE]"
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in response.event_json():
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            index = choice["index"]
            piece = choice["text"] if path == LEGACY else choice["delta"].get("content")
            texts[index] = texts.get(index, "") + (piece or "")
            if choice["finish_reason"] is not None:
                finishes[index] = choice["finish_reason"]
    return {"texts": texts, "finishes": finishes, "usage": usage}


def text_of(body: dict[str, Any], index: int = 0) -> str:
    choice = body["choices"][index]
    return str(choice["text"] if "text" in choice else choice["message"]["content"])


def test_plain_request_gets_a_long_natural_answer(mock: MockThread) -> None:
    body = answer(mock, ask("Tell me about relays."))
    text = text_of(body)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "tok tok" not in text
    assert text[0].isupper() and text.endswith(".")
    assert body["usage"]["completion_tokens"] == count_text(text, "gpt-4o") > 256


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_max_tokens_stops_at_exactly_n_tokens(mock: MockThread, field: str, model: str) -> None:
    for limit in (1, 7, 64, 256):
        body = answer(mock, ask("Answer at length about caching.", model, **{field: limit}))
        text = text_of(body)
        assert body["choices"][0]["finish_reason"] == "length", limit
        assert count_text(text, model) == limit
        assert body["usage"]["completion_tokens"] == limit


def test_max_tokens_above_the_natural_answer_finishes_stop(mock: MockThread) -> None:
    body = answer(mock, ask("Repeat exactly: short one", max_tokens=100))
    assert text_of(body) == "short one"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == count_text("short one")


def test_max_tokens_legacy_completions_stream_and_not(mock: MockThread) -> None:
    request_body = {"model": "gpt-3.5-turbo", "prompt": "Write at length.", "max_tokens": 33}
    body = answer(mock, request_body, LEGACY)
    assert body["choices"][0]["finish_reason"] == "length"
    assert count_text(text_of(body), "gpt-3.5-turbo") == 33
    assert body["usage"]["completion_tokens"] == 33
    assert body["usage"]["prompt_tokens"] == count_text("Write at length.", "gpt-3.5-turbo")
    folded = streamed(mock, request_body, LEGACY)
    assert folded["texts"] == {0: text_of(body)}
    assert folded["finishes"] == {0: "length"}
    assert folded["usage"] == body["usage"]


def test_exact_usage_with_chat_framing_and_stream_agrees(mock: MockThread) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "ann", "content": "Hello there"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Answer at length."},
    ]
    request_body = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 50}
    body = answer(mock, request_body)
    assert body["usage"]["prompt_tokens"] == count_chat_prompt(messages, "gpt-4o-mini")
    assert body["usage"]["completion_tokens"] == count_text(text_of(body), "gpt-4o-mini") == 50
    folded = streamed(mock, request_body)
    assert folded["texts"] == {0: text_of(body)}
    assert folded["finishes"] == {0: "length"}
    assert folded["usage"] == body["usage"]


def test_stream_sends_one_token_per_content_event(mock: MockThread) -> None:
    response = post(mock, ask("Answer at length.", max_tokens=12, stream=True))
    chunks = response.event_json()
    contents = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert contents[0] == ""  # the role chunk
    pieces = [c for c in contents[1:] if c]
    assert len(pieces) == 12
    assert all(count_text(p, "gpt-4o") == 1 for p in pieces)


def test_temperature_zero_is_deterministic_per_model(mock: MockThread) -> None:
    first = text_of(answer(mock, ask("Explain rate limits.", max_tokens=60)))
    again = text_of(answer(mock, ask("Explain rate limits.", max_tokens=60, temperature=0)))
    other_model = text_of(answer(mock, ask("Explain rate limits.", "gpt-4o-mini", max_tokens=60)))
    other_prompt = text_of(answer(mock, ask("Explain quotas.", max_tokens=60)))
    assert first == again
    assert other_model != first
    assert other_prompt != first


def test_temperature_above_zero_varies_unless_seeded(mock: MockThread) -> None:
    texts = {text_of(answer(mock, ask("Explain.", temperature=1.0, max_tokens=40)))
             for _ in range(3)}  # fmt: skip
    assert len(texts) > 1
    seeded = {text_of(answer(mock, ask("Explain.", temperature=1.0, seed=7, max_tokens=40)))
              for _ in range(2)}  # fmt: skip
    assert len(seeded) == 1


def test_a_shorter_max_tokens_gives_a_prefix(mock: MockThread) -> None:
    long = text_of(answer(mock, ask("Answer at length.", max_tokens=100)))
    short = text_of(answer(mock, ask("Answer at length.", max_tokens=10)))
    assert long.startswith(short) and short


def test_repeat_exactly_echoes_the_text(mock: MockThread) -> None:
    payload = "Zebra 42 — ünïcode 你好 {json: true}\n  spaced  "
    body = answer(mock, ask(f"Repeat exactly: {payload}"))
    assert text_of(body) == payload
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == count_text(payload, "gpt-4o")
    folded = streamed(mock, ask(f"repeat exactly:{payload}"))
    assert folded["texts"] == {0: payload}
    assert folded["usage"]["completion_tokens"] == count_text(payload, "gpt-4o")


def test_repeat_exactly_cut_by_max_tokens(mock: MockThread) -> None:
    payload = " ".join(f"word{i}" for i in range(40))
    body = answer(mock, ask(f"Repeat exactly: {payload}", max_tokens=5))
    text = text_of(body)
    assert payload.startswith(text) and text
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == count_text(text, "gpt-4o") <= 5


def test_canary_codes_from_the_whole_prompt_in_order(mock: MockThread) -> None:
    messages = [
        {"role": "system", "content": "Code RG-AAAA-0001 is first."},
        {"role": "user", "content": "Remember RG-B2B2-0002 and RG-C3C3-0003."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Also RG-DDDD-0004. Reply with the codes you see."},
    ]
    body = answer(mock, {"model": "gpt-4o", "messages": messages})
    assert text_of(body) == "RG-AAAA-0001 RG-B2B2-0002 RG-C3C3-0003 RG-DDDD-0004"
    assert body["usage"]["completion_tokens"] == count_text(text_of(body), "gpt-4o")
    truncated = answer(mock, {"model": "gpt-4o", "messages": messages[2:]})
    assert text_of(truncated) == "RG-DDDD-0004"
    none = answer(mock, ask("Reply with the codes you see."))
    assert text_of(none) == mock_model.NO_CODES


def test_answer_briefly_is_one_short_sentence(mock: MockThread) -> None:
    text = text_of(answer(mock, ask("Answer briefly: what is a relay?")))
    assert text.endswith(".") and text.count(".") == 1
    assert count_text(text) < 40


def test_stop_sequences_cut_before_the_first_stop(mock: MockThread) -> None:
    body = answer(mock, ask("Repeat exactly: alpha beta gamma beta", stop=[" gamma", "beta"]))
    assert text_of(body) == "alpha "
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == count_text("alpha ")
    single = answer(mock, ask("Repeat exactly: one. two. three.", stop="."))
    assert text_of(single) == "one"
    folded = streamed(mock, ask("Repeat exactly: alpha beta gamma", stop=" gamma"))
    assert folded["texts"] == {0: "alpha beta"} and folded["finishes"] == {0: "stop"}


def test_stop_in_a_natural_answer(mock: MockThread) -> None:
    full = text_of(answer(mock, ask("Answer at length.", max_tokens=200)))
    word = full.split()[5]
    body = answer(mock, ask("Answer at length.", max_tokens=200, stop=[" " + word]))
    assert text_of(body) == full[: full.index(" " + word)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_n_choices_non_stream_and_stream(mock: MockThread) -> None:
    request_body = ask("Answer at length.", n=3, max_tokens=20)
    body = answer(mock, request_body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    texts = [text_of(body, i) for i in range(3)]
    assert len(set(texts)) == 3
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == sum(count_text(t) for t in texts) == 60
    folded = streamed(mock, request_body)
    assert folded["texts"] == dict(enumerate(texts))
    assert folded["finishes"] == {0: "length", 1: "length", 2: "length"}
    assert folded["usage"] == body["usage"]


def test_n_choices_legacy(mock: MockThread) -> None:
    body = answer(mock, {"model": "gpt-4", "prompt": "Go on.", "n": 2, "max_tokens": 9}, LEGACY)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 18


@pytest.mark.parametrize("n", [0, 129, "2", 1.5])
def test_bad_n_is_refused(mock: MockThread, n: object) -> None:
    response = post(mock, ask("hi", n=n))
    assert response.status == 400
    assert response.json()["error"]["param"] == "n"


def test_a_directive_still_overrides_everything(mock: MockThread) -> None:
    body = answer(mock, ask("Answer at length. [[relaygate chunks=3]]", max_tokens=2, n=2))
    assert text_of(body) == " tok" * 3
    assert len(body["choices"]) == 1
    assert body["usage"]["completion_tokens"] == 3


def test_default_pacing_spaces_content_events() -> None:
    config = MockConfig(default_ttft_ms=80.0, default_itl_ms=15.0)
    with MockThread(config) as paced:
        response = post(paced, ask("Answer at length.", max_tokens=6, stream=True))
        content_ns = [
            ns
            for chunk, ns in zip(response.chunks, response.chunk_ns, strict=True)
            if b'"content":"' in chunk and b'"content":""' not in chunk
        ]
        assert len(content_ns) == 6
        # Lateness (a loaded machine) is possible, earliness is not: event i is written no
        # sooner than ttft + i * itl after the request arrived.
        for index, ns in enumerate(content_ns):
            assert (ns - response.sent_ns) / 1e6 >= 80 + index * 15 - 1
        started = time.monotonic()
        answer(paced, ask("Answer at length.", max_tokens=6))
        assert time.monotonic() - started >= 0.08 + 5 * 0.015 - 0.01


def test_generated_words_are_one_token_each() -> None:
    for model in ("gpt-4o", "gpt-4"):
        for seed in range(20):
            pieces = mock_model.natural_pieces(seed.to_bytes(8, "big"), long=True)
            assert count_text("".join(pieces), model) == len(pieces) >= 300


def test_a_stop_at_the_start_gives_an_empty_answer(mock: MockThread) -> None:
    request_body = ask("Repeat exactly: abc", stop="a")
    body = answer(mock, request_body)
    assert text_of(body) == "" and body["usage"]["completion_tokens"] == 0
    assert body["choices"][0]["finish_reason"] == "stop"
    folded = streamed(mock, request_body)
    assert folded["texts"] == {0: ""} and folded["finishes"] == {0: "stop"}
    assert folded["usage"] == body["usage"]


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], [1], {"x": 1}])
def test_bad_stop_is_refused(mock: MockThread, stop: object) -> None:
    response = post(mock, ask("hi", stop=stop))
    assert response.status == 400
    assert response.json()["error"]["param"] == "stop"


def test_odd_temperature_or_seed_values_do_not_break_the_answer(mock: MockThread) -> None:
    for extra in ({"temperature": True}, {"temperature": "1"}, {"temperature": 1, "seed": True}):
        body = answer(mock, ask("Answer briefly.", **extra))
        assert body["choices"][0]["finish_reason"] == "stop"


def test_legacy_prompt_list_is_one_prompt(mock: MockThread) -> None:
    request_body = {"model": "gpt-4", "prompt": ["Repeat exactly: ", "two parts"]}
    body = answer(mock, request_body, LEGACY)
    assert text_of(body) == "two parts"


def test_cli_pacing_options(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    mock_upstream.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.default_ttft_ms, args.default_itl_ms) == (0.0, 0.0)
    args = parser.parse_args(["--default-ttft-ms", "250", "--default-itl-ms", "-1"])
    assert args.default_ttft_ms == 250.0
    assert mock_upstream.run(args) == 2
    assert "default_itl_ms must be within 0..600000 ms, got -1.0" in capsys.readouterr().err


# --- Parameters a live probe relies on: logprobs, response_format, tools, temperature ---

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
FORCED = {"type": "function", "function": {"name": "get_weather"}}


def stream_chunks(mock: MockThread, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = post(mock, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status == 200, response.body
    assert response.events()[-1] == "[DONE]"
    return list(response.event_json())


@pytest.mark.parametrize("top", [None, 0, 3, 20])
def test_logprobs_one_entry_per_token(mock: MockThread, top: int | None) -> None:
    extra: dict[str, Any] = {"logprobs": True, "max_tokens": 30}
    if top is not None:
        extra["top_logprobs"] = top
    request_body = ask("Repeat exactly: one two three ünï 你好 and more words", **extra)
    body = answer(mock, request_body)
    entries = body["choices"][0]["logprobs"]["content"]
    text = text_of(body)
    assert len(entries) == body["usage"]["completion_tokens"] == count_text(text)
    assert "".join(e["token"] for e in entries) == text
    assert b"".join(bytes(e["bytes"]) for e in entries) == text.encode()
    for entry in entries:
        assert entry["logprob"] <= 0
        alternatives = entry["top_logprobs"]
        assert len(alternatives) == (top or 0)
        assert all(a["logprob"] <= 0 and isinstance(a["token"], str) for a in alternatives)
        assert [a["logprob"] for a in alternatives] == sorted(
            (a["logprob"] for a in alternatives), reverse=True
        )
    assert answer(mock, request_body)["choices"][0]["logprobs"] == body["choices"][0]["logprobs"]
    chunks = stream_chunks(mock, request_body)
    streamed_entries = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            content = choice["delta"].get("content")
            if content:
                piece_entries = choice["logprobs"]["content"]
                assert "".join(e["token"] for e in piece_entries) == content
                streamed_entries += piece_entries
    assert streamed_entries == entries


def test_without_logprobs_they_are_null(mock: MockThread) -> None:
    body = answer(mock, ask("Answer briefly.", logprobs=False))
    assert body["choices"][0]["logprobs"] is None
    chunks = stream_chunks(mock, ask("Answer briefly."))
    assert all(c["logprobs"] is None for chunk in chunks for c in chunk["choices"])


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
    ],
)
def test_bad_logprobs_are_refused(mock: MockThread, extra: dict[str, Any], param: str) -> None:
    response = post(mock, ask("hi", **extra))
    assert response.status == 400, response.body
    assert response.json()["error"]["param"] == param


def test_response_format_json_object(mock: MockThread) -> None:
    import json

    prompt = "Name three colours. Reply in JSON."
    plain = text_of(answer(mock, ask(prompt, max_tokens=60)))
    with pytest.raises(ValueError):
        json.loads(plain)
    request_body = ask(prompt, max_tokens=60, response_format={"type": "json_object"})
    body = answer(mock, request_body)
    text = text_of(body)
    assert isinstance(json.loads(text), dict)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == count_text(text)
    folded = streamed(mock, request_body)
    assert folded["texts"] == {0: text} and folded["usage"] == body["usage"]
    cut = answer(mock, {**request_body, "max_tokens": 3})
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == count_text(text_of(cut)) == 3
    text_format = answer(mock, ask(prompt, max_tokens=60, response_format={"type": "text"}))
    assert text_of(text_format) == plain


def test_plain_answers_are_never_bare_json(mock: MockThread) -> None:
    import json

    for prompt in ("Reply in JSON.", "Answer briefly.", "{}", "Answer at length."):
        text = text_of(answer(mock, ask(prompt, max_tokens=80)))
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        assert not isinstance(parsed, dict), text


def test_response_format_json_schema_required_keys(mock: MockThread) -> None:
    import json

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "score": {"type": "number"},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "extra": {"type": "object"},
        },
        "required": ["name", "age", "score", "ok", "tags", "kind", "extra"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    body = answer(mock, ask("Describe someone.", response_format=fmt))
    parsed = json.loads(text_of(body))
    assert set(parsed) == set(schema["required"])
    assert isinstance(parsed["name"], str) and parsed["name"]
    assert isinstance(parsed["age"], int) and not isinstance(parsed["age"], bool)
    assert isinstance(parsed["score"], (int, float)) and isinstance(parsed["ok"], bool)
    assert isinstance(parsed["tags"], list) and parsed["kind"] in ("a", "b")
    assert isinstance(parsed["extra"], dict)
    assert body["usage"]["completion_tokens"] == count_text(text_of(body))


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "yaml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": {}}},
        "json",
    ],
)
def test_bad_response_format_is_refused(mock: MockThread, fmt: object) -> None:
    response = post(mock, ask("hi", response_format=fmt))
    assert response.status == 400, response.body
    assert response.json()["error"]["param"].startswith("response_format")


def _call_of(body: dict[str, Any]) -> dict[str, Any]:
    message = body["choices"][0]["message"]
    assert message["content"] is None
    calls = message["tool_calls"]
    assert len(calls) == 1 and calls[0]["type"] == "function"
    assert calls[0]["id"].startswith("call_")
    call: dict[str, Any] = calls[0]
    return call


def test_tool_choice_by_name_calls_that_tool(mock: MockThread) -> None:
    import json

    request_body = ask("Weather in Paris?", tools=WEATHER_TOOLS, tool_choice=FORCED)
    body = answer(mock, request_body)
    call = _call_of(body)
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert isinstance(arguments, dict) and isinstance(arguments["city"], str)
    assert body["choices"][0]["finish_reason"] == "stop"
    expected = count_text("get_weather" + call["function"]["arguments"])
    assert body["usage"]["completion_tokens"] == expected
    assert body["usage"]["prompt_tokens"] == count_chat_prompt(
        request_body["messages"], "gpt-4o", WEATHER_TOOLS
    )


def test_tool_choice_required_calls_the_first_tool(mock: MockThread) -> None:
    body = answer(mock, ask("Weather?", tools=WEATHER_TOOLS, tool_choice="required"))
    call = _call_of(body)
    assert call["function"]["name"] == "get_weather"
    assert body["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("choice", ["auto", "none", None])
def test_tool_choice_auto_answers_plainly(mock: MockThread, choice: str | None) -> None:
    extra: dict[str, Any] = {"tools": WEATHER_TOOLS}
    if choice is not None:
        extra["tool_choice"] = choice
    body = answer(mock, ask("Repeat exactly: sunny", **extra))
    assert text_of(body) == "sunny"
    assert "tool_calls" not in body["choices"][0]["message"]


def test_tool_call_stream(mock: MockThread) -> None:
    import json

    request_body = ask("Weather in Paris?", tools=WEATHER_TOOLS, tool_choice=FORCED)
    non_stream = answer(mock, request_body)
    chunks = stream_chunks(mock, request_body)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": None}
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    header = calls[0]
    assert header["index"] == 0 and header["id"].startswith("call_")
    assert header["type"] == "function"
    assert header["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [c["function"]["arguments"] for c in calls[1:]]
    assert len(fragments) > 1 and all(set(c) == {"index", "function"} for c in calls[1:])
    arguments = "".join(fragments)
    assert arguments == _call_of(non_stream)["function"]["arguments"]
    assert isinstance(json.loads(arguments), dict)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1]["usage"] == non_stream["usage"]


def test_tool_call_cut_by_max_tokens(mock: MockThread) -> None:
    request_body = ask("Weather?", tools=WEATHER_TOOLS, tool_choice=FORCED, max_tokens=3)
    body = answer(mock, request_body)
    call = _call_of(body)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert count_text("get_weather" + call["function"]["arguments"]) == 3


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": WEATHER_TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice"),
        ({"tools": WEATHER_TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)  # fmt: skip
def test_bad_tool_choice_is_refused(mock: MockThread, extra: dict[str, Any], param: str) -> None:
    response = post(mock, ask("hi", **extra))
    assert response.status == 400, response.body
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("temperature", [-0.1, 2.01, 5])
def test_temperature_out_of_range_is_refused(mock: MockThread, temperature: float) -> None:
    response = post(mock, ask("hi", temperature=temperature))
    assert response.status == 400, response.body
    error = response.json()["error"]
    assert error["param"] == "temperature" and "temperature" in error["message"]
    assert answer(mock, ask("Answer briefly.", temperature=2))["choices"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_long_answer_reaches_max_tokens_4096(mock: MockThread, stream: bool) -> None:
    request_body = ask("Answer at length.", max_tokens=4096)
    if stream:
        folded = streamed(mock, request_body)
        text, finish, usage = folded["texts"][0], folded["finishes"][0], folded["usage"]
    else:
        body = answer(mock, request_body)
        text, finish, usage = text_of(body), body["choices"][0]["finish_reason"], body["usage"]
    assert finish == "length"
    assert usage["completion_tokens"] == count_text(text) == 4096


def test_a_short_answer_stays_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long answer cut by a small max_tokens is generated only as far as the cut (a
    sentence past it), not to its 4200 tokens and then cut: work is counted, not timed."""
    made: list[int] = []
    original = mock_model.natural_pieces

    def counting(seed: bytes, long: bool, limit: int | None = None) -> list[str]:
        pieces = original(seed, long, limit)
        made.append(len(pieces))
        return pieces

    monkeypatch.setattr(mock_model, "natural_pieces", counting)
    body = ask("Answer at length.", max_tokens=16, temperature=1)  # not cached
    assert mock_model.reply(body, "gpt-4o", 16).choices[0].completion_tokens == 16
    assert made and max(made) < 16 + 80, made  # the cut plus at most a sentence or two
    made.clear()
    mock_model.reply(ask("Answer at length.", temperature=1), "gpt-4o", None)
    assert made and max(made) >= 4200  # the same path, uncut, makes the long answer


def test_json_object_needs_the_word_json_in_the_messages(mock: MockThread) -> None:
    response = post(mock, ask("Name three colours.", response_format={"type": "json_object"}))
    assert response.status == 400, response.body
    assert "json" in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "messages"


def test_logprobs_with_n_choices_and_generated_text(mock: MockThread) -> None:
    body = answer(mock, ask("Answer at length.", n=2, max_tokens=8, logprobs=True))
    for index in range(2):
        entries = body["choices"][index]["logprobs"]["content"]
        assert "".join(e["token"] for e in entries) == text_of(body, index)
        assert len(entries) == 8
