"""Issue #13 item 2: upstream errors compared field by field (profile key
``errors.<condition>.upstream_message``), the ``shape`` area's judges on legal and faulty
answer objects, and the optional ``[response]`` table that sets the area's level."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import httpx
import orjson
import pytest

from relaygate.mock import responses
from relaygate.profiles import Profile, load_profile
from relaygate.suite.checks import check_error
from relaygate.suite.client import Exchange
from relaygate.suite.failures import CaseFailure

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
SENT = {
    "message": "Rate limit reached for gpt-4o on tokens per min (TPM)",
    "type": "tokens",
    "code": "rate_limit_exceeded",
    "param": None,
}


def _exchange(status: int, error: dict[str, Any]) -> Exchange:
    return Exchange(
        method="POST",
        url="http://127.0.0.1:1/v1/chat/completions",
        status=status,
        headers=httpx.Headers({"Content-Type": "application/json"}),
        body=json.dumps({"error": error}).encode(),
        elapsed_s=0.01,
        curl="curl …",
    )


def _check(profile: str | Profile, condition: str, error: dict[str, Any]) -> None:
    check_error(
        _exchange(429, error),
        load_profile(profile) if isinstance(profile, str) else profile,
        condition,
        "an upstream 429 is relayed",
        upstream_status=429,
        upstream_error=SENT,
    )


def _wrapping(condition: str) -> Profile:
    """The faq profile, except that ``condition`` lets the upstream's message be wrapped."""
    faq = load_profile("faq")
    wrapped = dataclasses.replace(faq.errors[condition], upstream_message="contains")
    return dataclasses.replace(faq, errors=MappingProxyType({**faq.errors, condition: wrapped}))


def test_upstream_error_passes_through_exactly_under_faq() -> None:
    _check("faq", "upstream_429", dict(SENT))


def test_prefixed_upstream_message_fails_under_faq() -> None:
    """Only status, type, code and param were compared: a rewritten message passed."""
    prefixed = {**SENT, "message": "upstream: " + SENT["message"]}
    with pytest.raises(CaseFailure, match="error message is not rewritten"):
        _check("faq", "upstream_429", prefixed)


def test_the_relay_limiters_own_429_is_not_the_upstreams() -> None:
    own = {"message": "rate limit exceeded", "type": "relay_error", "code": "rate_limit_exceeded"}
    with pytest.raises(CaseFailure, match=r"error\.type 'tokens'"):
        _check("faq", "upstream_429", own)


def test_a_wrapping_profile_accepts_a_suffix_only() -> None:
    """``upstream_message = "contains"``: one-api's request-id suffix, where a profile's
    documentation promises it; a replaced message still fails."""
    suffixed = {**SENT, "message": SENT["message"] + " (request id: 2026120420)"}
    _check(_wrapping("upstream_4xx"), "upstream_4xx", suffixed)
    with pytest.raises(CaseFailure, match="the upstream's, wrapped at most"):
        _check(_wrapping("upstream_4xx"), "upstream_4xx", {**SENT, "message": "上游错误"})


def test_response_level_per_profile_and_optional_table() -> None:
    assert load_profile("faq").response.level == "SHOULD"
    assert load_profile("strict-openai").response.level == "MUST"
    # one-api.toml has no [response] table: the defaults apply.
    assert "[response]" not in (ROOT / "fixtures/profiles/one-api.toml").read_text()
    assert load_profile("one-api").response.level == "SHOULD"


def _shape() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shape_cases", ROOT / "conformance/test_shape.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stream(with_usage: bool, tool: str | None = None) -> list[dict[str, Any]]:
    payloads = responses.chat_stream_payloads("gpt-4o", 3, 1, "stop", 5, 3, with_usage, tool)
    out = []
    for field in dataclasses.fields(payloads):
        value = getattr(payloads, field.name)
        if isinstance(value, bytes) and value.startswith(b"{") and value.endswith(b"}"):
            out.append(orjson.loads(value))
    return out


def test_openai_objects_are_judged_clean() -> None:
    """No false failures: the mock's objects are OpenAI's, with every documented field."""
    shape = _shape()
    answer = responses.chat_completion("gpt-4o", "None", "stop", 5, 3)
    answer["service_tier"] = "default"
    answer["choices"][0]["message"]["annotations"] = []
    call = responses.chat_completion("gpt-4o", "", "tool_calls", 5, 3, tool_name="get_weather")
    chunks = [{**c, "obfuscation": "ab12"} for c in _stream(True)] + _stream(False, "get_weather")
    for objects, streamed in (([answer, call], False), (chunks, True)):
        assert shape._extra_fields(objects, streamed) == []
        # "None" as the model's text is text (the answer above says it).
        assert shape._null_strings(objects, streamed) == []


def test_vendor_fields_and_none_strings_are_found() -> None:
    shape = _shape()
    answer = responses.chat_completion("gpt-4o", "hi", "stop", 5, 3)
    answer["x_trace"] = 1
    answer["choices"][0]["message"]["reasoning_content"] = ""
    answer["usage"]["cost"] = 0
    answer["choices"][0]["logprobs"] = "None"
    assert shape._extra_fields([answer], False) == [
        "x_trace",
        "choices[0].message.reasoning_content",
        "usage.cost",
    ]
    assert shape._null_strings([answer], False) == ["choices[0].logprobs = 'None'"]
    call = responses.chat_completion("gpt-4o", "", "tool_calls", 5, 3, tool_name="get_weather")
    call["choices"][0]["message"]["content"] = "null"
    chunk = _stream(False)[1]
    chunk["choices"][0]["finish_reason"] = "None"
    assert shape._null_strings([call], False) == ["choices[0].message.content = 'null'"]
    assert shape._null_strings([chunk], True) == ["chunk 0: choices[0].finish_reason = 'None'"]


LEVEL_CASES = """
import pytest

@pytest.mark.parametrize("level", ["MUST", "SHOULD"])
@pytest.mark.case("demo.level", title="level from the profile", area="shape", level="SHOULD")
def test_level(level, case_level):
    case_level(level)
"""


def test_case_level_sets_the_reported_level(pytester: pytest.Pytester) -> None:
    """The marker's level is a default; a case may set its own from its profile."""
    pytester.makepyfile(test_cases=LEVEL_CASES)
    result = pytester.runpytest(
        "--relay-url", "http://relay.invalid:3000/v1", "--report-dir", "out"
    )
    result.assert_outcomes(passed=2)
    doc = json.loads((pytester.path / "out" / "conformance.json").read_text())
    assert {c["id"]: c["level"] for c in doc["cases"]} == {
        "demo.level[MUST]": "MUST",
        "demo.level[SHOULD]": "SHOULD",
    }
