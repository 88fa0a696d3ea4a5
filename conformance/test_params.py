"""params: the request parameters a client relies on are honoured (stop, n, temperature 0,
response_format, logprobs, tools).

With the mock upstream (``--upstream-url``) each case checks the parameter reached the
upstream unchanged (the journal: ground truth). In live mode it checks the answer shows the
parameter took effect, after showing the same request without it answers differently (a
model that never writes the stop word shows nothing about ``stop``). SHOULD: no profile
promises these, and a relay may document that it drops one.
"""

from __future__ import annotations

import json

import pytest

from relaygate.directives import directive
from relaygate.suite.checks import is_chat_completion
from relaygate.suite.client import FORCE_WEATHER_TOOL as FORCE_TOOL
from relaygate.suite.client import WEATHER_TOOLS as TOOLS
from relaygate.suite.client import chat_body
from relaygate.suite.failures import require
from relaygate.suite.live import answer_text, finish_reasons, live_body, repeat

SPEC = "OpenAI API reference: chat/create request body"


def _json_object(text):
    """``text`` parsed, when it is a JSON object; else None."""
    try:
        parsed = json.loads(text or "")
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _served(ex, relay, what):
    """Evidence first: the request was served, before judging what the answer shows."""
    __tracebackhide__ = True
    require(
        is_chat_completion(ex),
        f"the request with {what} is served",
        "HTTP 200 with a chat completion",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    return ex.json()


def _forwarded(upstream, tag, ex, relay, fields):
    """Mock mode: every field in ``fields`` reached the upstream exactly as sent."""
    __tracebackhide__ = True
    _served(ex, relay, ", ".join(fields))
    entries = upstream.wait_entries(tag)
    require(
        bool(entries) and isinstance(entries[0].get("body"), dict),
        "the request reaches the upstream (so what it received can be checked)",
        "the request in the mock upstream's journal",
        f"{len(entries)} journal entries",
        ex.curl,
        relay.secrets,
    )
    sent = entries[0]["body"]
    for field, value in fields.items():
        require(
            sent.get(field) == value,
            f"the client's '{field}' reaches the upstream unchanged",
            f"{field} = {value!r}",
            f"{field} = {sent.get(field)!r}" if field in sent else f"no '{field}' forwarded",
            ex.curl,
            relay.secrets,
        )


@pytest.mark.case(
    "params.stop",
    title="A stop sequence ends the answer before it",
    area="params",
    level="SHOULD",
    spec=SPEC,
)
def test_stop(client, _journal, tag, relay):
    if _journal is not None:
        ex = client.chat(chat_body(directive=directive(tag=tag), stop=["gamma"]))
        _forwarded(_journal, tag, ex, relay, {"stop": ["gamma"]})
        return
    words = "alpha beta gamma delta epsilon"
    plain = client.chat(live_body(repeat(words), temperature=0, max_tokens=40))
    text = answer_text(plain) or ""
    _served(plain, relay, "no stop")
    if "gamma" not in text:
        pytest.skip(f"the model did not repeat {words!r} (answered {text[:80]!r}): a stop "
                    "sequence in it would show nothing")  # fmt: skip
    ex = client.chat(live_body(repeat(words), temperature=0, max_tokens=40, stop=["gamma"]))
    _served(ex, relay, "stop")
    text = answer_text(ex) or ""
    require(
        "gamma" not in text and finish_reasons(ex).get(0) == "stop",
        "the answer ends before the stop sequence, with finish_reason 'stop'",
        "no 'gamma' in the answer; finish_reason stop",
        f"{text[:120]!r}; finish_reason {finish_reasons(ex).get(0)!r}",
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "params.n",
    title="n asks for that many choices",
    area="params",
    level="SHOULD",
    spec=SPEC,
)
def test_n(client, _journal, tag, relay):
    if _journal is not None:
        ex = client.chat(chat_body(directive=directive(tag=tag), n=2))
        _forwarded(_journal, tag, ex, relay, {"n": 2})
        return
    ex = client.chat(live_body(repeat("one two three"), max_tokens=20, n=2))
    data = _served(ex, relay, "n=2")
    indexes = sorted(c.get("index") for c in data["choices"] if isinstance(c, dict))
    require(
        indexes == [0, 1] and all(answer_text(ex, i) is not None for i in (0, 1)),
        "n=2 gives two choices, indexes 0 and 1, each with a message",
        "choices 0 and 1",
        f"choice indexes {indexes}",
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "params.temperature-zero",
    title="temperature 0 gives the same answer to the same request",
    area="params",
    level="SHOULD",
    spec=SPEC,
)
def test_temperature_zero(client, _journal, tag, relay):
    if _journal is not None:
        ex = client.chat(chat_body(directive=directive(tag=tag), temperature=0))
        _forwarded(_journal, tag, ex, relay, {"temperature": 0})
        return
    prompt = "Tell me a short story about a lighthouse."
    # Evidence first: the model's answers vary at temperature 1; otherwise two equal answers at
    # 0 show nothing about temperature reaching the model.
    warm = [client.chat(live_body(prompt, temperature=1, max_tokens=24)) for _ in range(2)]
    for ex in warm:
        _served(ex, relay, "temperature 1")
    if answer_text(warm[0]) == answer_text(warm[1]):
        pytest.skip("the model answered the same twice at temperature 1: equal answers at 0 "
                    "would show nothing")  # fmt: skip
    cold = [client.chat(live_body(prompt, temperature=0, max_tokens=24)) for _ in range(2)]
    for ex in cold:
        _served(ex, relay, "temperature 0")
    texts = [answer_text(ex) for ex in cold]
    require(
        texts[0] == texts[1],
        "at temperature 0 the same request gets the same answer (it varies at 1, so the "
        "relay passes temperature on)",
        "two equal answers",
        f"{texts[0]!r} / {texts[1]!r}"[:300],
        cold[1].curl,
        relay.secrets,
    )


@pytest.mark.case(
    "params.response-format-json",
    title="response_format json_object gives an answer that parses as JSON",
    area="params",
    level="SHOULD",
    spec=SPEC,
)
def test_response_format_json(client, _journal, tag, relay):
    fmt = {"type": "json_object"}
    if _journal is not None:
        ex = client.chat(chat_body(directive=directive(tag=tag), response_format=fmt))
        _forwarded(_journal, tag, ex, relay, {"response_format": fmt})
        return
    prompt = "Name three colours. Reply in JSON."
    # Evidence first: asked for JSON in words only, the model does not already answer a bare
    # JSON object (then a dropped response_format would go unseen).
    plain = client.chat(live_body(prompt, temperature=0, max_tokens=60))
    _served(plain, relay, "no response_format")
    if _json_object(answer_text(plain)) is not None:
        pytest.skip("the model answers a bare JSON object even without response_format: its "
                    "answer with it shows nothing")  # fmt: skip
    ex = client.chat(live_body(prompt, temperature=0, max_tokens=60, response_format=fmt))
    _served(ex, relay, "response_format json_object")
    text = answer_text(ex) or ""
    require(
        _json_object(text) is not None,
        "with response_format json_object the message content is a JSON object",
        "content that parses as a JSON object",
        repr(text[:200]),
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "params.logprobs",
    title="logprobs asks for each token's log probability",
    area="params",
    level="SHOULD",
    spec=SPEC,
)
def test_logprobs(client, _journal, tag, relay):
    if _journal is not None:
        ex = client.chat(chat_body(directive=directive(tag=tag), logprobs=True, top_logprobs=2))
        _forwarded(_journal, tag, ex, relay, {"logprobs": True, "top_logprobs": 2})
        return
    ex = client.chat(
        live_body(repeat("one two three"), max_tokens=10, logprobs=True, top_logprobs=2)
    )
    data = _served(ex, relay, "logprobs")
    logprobs = data["choices"][0].get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    ok = (
        isinstance(content, list)
        and bool(content)
        and all(
            isinstance(t, dict)
            and isinstance(t.get("token"), str)
            and isinstance(t.get("logprob"), (int, float))
            and isinstance(t.get("top_logprobs"), list)
            for t in content
        )
    )
    require(
        ok,
        "with logprobs, choices[0].logprobs.content lists each token with its logprob and "
        "top_logprobs",
        "logprobs.content: [{token, logprob, top_logprobs}, …]",
        repr(logprobs)[:200],
        ex.curl,
        relay.secrets,
    )


@pytest.mark.case(
    "params.tool-choice",
    title="A forced tool_choice gets a call of that tool",
    area="params",
    level="SHOULD",
    spec=SPEC,
)
def test_tool_choice(client, _journal, tag, relay):
    if _journal is not None:
        ex = client.chat(
            chat_body(directive=directive(tag=tag), tools=TOOLS, tool_choice=FORCE_TOOL)
        )
        _forwarded(_journal, tag, ex, relay, {"tools": TOOLS, "tool_choice": FORCE_TOOL})
        return
    ex = client.chat(
        live_body("What is the weather in Paris?", tools=TOOLS, tool_choice=FORCE_TOOL)
    )
    data = _served(ex, relay, "tools")
    calls = data["choices"][0]["message"].get("tool_calls") or []
    function = calls[0].get("function") or {} if calls and isinstance(calls[0], dict) else {}
    try:
        arguments = json.loads(function.get("arguments") or "")
    except (TypeError, ValueError):
        arguments = None
    require(
        function.get("name") == "get_weather" and isinstance(arguments, dict),
        "tool_choice naming a function gets message.tool_calls calling it with JSON arguments",
        "tool_calls[0].function: get_weather with JSON object arguments",
        repr(calls)[:200] if calls else "no tool_calls",
        ex.curl,
        relay.secrets,
    )
