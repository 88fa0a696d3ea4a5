"""shape: the answer objects are OpenAI's own: no fields OpenAI never sends, and JSON null where
OpenAI has null (never the string "None").

The allowed fields are those of OpenAI's API reference for ``chat.completion`` and
``chat.completion.chunk`` (2026), listed below per level of the object. Fields OpenAI documents
are allowed even where this suite never asks for them (``audio``, ``annotations``,
``service_tier``, the stream's ``obfuscation``); anything else is a vendor field. The case
judges what reaches the client: a relay that passes an upstream's vendor field on is reported
too (the client gets it either way).

The level comes from the profile (``[response] level``): SHOULD for the relay FAQ's dialect
(clients survive a vendor field), MUST for ``strict-openai`` (the API is OpenAI's or it is not).

Live (a URL and a key): the same requests as plain, bounded chats; nothing here needs ground
truth, so every instance runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from relaygate.directives import directive
from relaygate.suite.client import FORCE_WEATHER_TOOL as FORCE_TOOL
from relaygate.suite.client import WEATHER_TOOLS as TOOLS
from relaygate.suite.client import StreamExchange, chat_body
from relaygate.suite.failures import require
from relaygate.suite.ledger import live_chat

SPEC = "OpenAI API reference: the chat completion and chat completion chunk objects"

#: OpenAI's fields, per place in the object ("chunk" and "delta" are the stream's).
ALLOWED: Mapping[str, frozenset[str]] = {
    "completion": frozenset(
        {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
        | {"service_tier"}
    ),
    "chunk": frozenset(
        {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
        | {"service_tier", "obfuscation"}
    ),
    "choice": frozenset({"index", "message", "logprobs", "finish_reason"}),
    "chunk choice": frozenset({"index", "delta", "logprobs", "finish_reason"}),
    "message": frozenset(
        {"role", "content", "refusal", "annotations", "audio", "tool_calls", "function_call"}
    ),
    # annotations/audio: documented on the message; streamed search and audio answers carry
    # them in the delta as well.
    "delta": frozenset(
        {"role", "content", "refusal", "tool_calls", "function_call", "annotations", "audio"}
    ),
    "tool call": frozenset({"index", "id", "type", "function", "custom"}),
    "function": frozenset({"name", "arguments"}),
    "logprobs": frozenset({"content", "refusal"}),
    "usage": frozenset(
        {"prompt_tokens", "completion_tokens", "total_tokens"}
        | {"prompt_tokens_details", "completion_tokens_details"}
    ),
    "usage.prompt_tokens_details": frozenset({"cached_tokens", "audio_tokens"}),
    "usage.completion_tokens_details": frozenset(
        {"reasoning_tokens", "audio_tokens", "accepted_prediction_tokens"}
        | {"rejected_prediction_tokens"}
    ),
}

#: How a null written by a language without JSON's null reads (Python, JavaScript, Go, SQL).
NULL_STRINGS = frozenset({"None", "none", "null", "NULL", "Null", "undefined", "nil", "<nil>"})
#: Fields whose only text values are not free text: a "None" there is a stringified null.
NULLABLE: Mapping[str, tuple[str, ...]] = {
    "completion": ("system_fingerprint", "service_tier", "usage"),
    "chunk": ("system_fingerprint", "service_tier", "usage"),
    "choice": ("logprobs", "finish_reason"),
    "chunk choice": ("logprobs", "finish_reason"),
    "message": ("tool_calls", "function_call", "audio", "annotations"),
    "delta": ("tool_calls", "function_call", "role"),
}


#: instance -> (streamed, asks for a tool call)
KINDS = {"chat": (False, False), "stream": (True, False), "tool-call": (False, True)}


def _body(kind: str, tag: str, live: bool) -> dict[str, Any]:
    stream, tool = KINDS[kind]
    extra: dict[str, Any] = {"tools": TOOLS, "tool_choice": FORCE_TOOL} if tool else {}
    if stream:
        extra["stream"] = True
        extra["stream_options"] = {"include_usage": True}
    if live:
        text = "What is the weather in Paris?" if tool else "Say hi."
        return live_chat(text=text, max_tokens=32 if tool else 5, **extra)
    fields = {"finish_reason": "tool_calls"} if tool else {}
    return chat_body(directive=directive(tag=tag, **fields), **extra)


def _objects(ex: Any, kind: str, relay: Any) -> list[dict[str, Any]]:
    """Evidence first: the answer is a served chat completion (or stream of chunks)."""
    __tracebackhide__ = True
    if isinstance(ex, StreamExchange):
        objects = [c for c in ex.chunks() if "error" not in c]
    else:
        data = ex.json()
        objects = [data] if isinstance(data, dict) and "error" not in data else []
    require(
        ex.status == 200
        and bool(objects)
        and all(isinstance(o.get("choices"), list) for o in objects),
        "the request is served, so the answer's objects can be judged",
        "HTTP 200 with chat completion object(s) carrying choices",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    if KINDS[kind][1] and not any(
        isinstance(holder.get("tool_calls"), list)
        for o in objects
        for c in o["choices"]
        if isinstance(c, dict)
        for holder in (c.get("message"), c.get("delta"))
        if isinstance(holder, dict)
    ):
        pytest.skip("the model answers this request differently: no tool call to judge")
    return objects


def _places(obj: Mapping[str, Any], streamed: bool) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(kind of place, path, the object there) for every judged place in one answer object."""
    top = "chunk" if streamed else "completion"
    yield top, "", obj
    for i, choice in enumerate(obj.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        where = f"choices[{i}]"
        yield ("chunk choice" if streamed else "choice"), where, choice
        holder_kind = "delta" if streamed else "message"
        holder = choice.get(holder_kind)
        if isinstance(holder, dict):
            yield holder_kind, f"{where}.{holder_kind}", holder
            for j, call in enumerate(holder.get("tool_calls") or []):
                if isinstance(call, dict):
                    yield "tool call", f"{where}.{holder_kind}.tool_calls[{j}]", call
                    if isinstance(call.get("function"), dict):
                        path = f"{where}.{holder_kind}.tool_calls[{j}].function"
                        yield "function", path, call["function"]
        if isinstance(choice.get("logprobs"), dict):
            yield "logprobs", f"{where}.logprobs", choice["logprobs"]
    usage = obj.get("usage")
    if isinstance(usage, dict):
        yield "usage", "usage", usage
        for name in ("prompt_tokens_details", "completion_tokens_details"):
            if isinstance(usage.get(name), dict):
                yield f"usage.{name}", f"usage.{name}", usage[name]


def _extra_fields(objects: list[dict[str, Any]], streamed: bool) -> list[str]:
    found: list[str] = []
    for n, obj in enumerate(objects):
        prefix = f"chunk {n}: " if streamed else ""
        for place, path, value in _places(obj, streamed):
            for name in sorted(set(value) - ALLOWED[place]):
                found.append(f"{prefix}{path + '.' if path else ''}{name}")
    return found


def _null_strings(objects: list[dict[str, Any]], streamed: bool) -> list[str]:
    found: list[str] = []
    for n, obj in enumerate(objects):
        prefix = f"chunk {n}: " if streamed else ""
        for place, path, value in _places(obj, streamed):
            names = list(NULLABLE.get(place, ()))
            # Next to a tool call, content is null (OpenAI) or the model's text, never "None".
            if place in ("message", "delta") and value.get("tool_calls"):
                names.append("content")
            for name in names:
                if isinstance(value.get(name), str) and value[name] in NULL_STRINGS:
                    found.append(f"{prefix}{path + '.' if path else ''}{name} = {value[name]!r}")
    return found


def _answer(kind, client, tag, _journal):
    body = _body(kind, tag, live=_journal is None)
    return client.stream(body) if KINDS[kind][0] else client.chat(body)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.case(
    "shape.openai-fields-only",
    title="Answers carry only the fields OpenAI sends (top level, choice, message, usage)",
    area="shape",
    level="SHOULD",
    spec=SPEC,
)
def test_openai_fields_only(kind, client, profile, tag, relay, _journal, case_level):
    case_level(profile.response.level)
    ex = _answer(kind, client, tag, _journal)
    objects = _objects(ex, kind, relay)
    extra = _extra_fields(objects, KINDS[kind][0])
    require(
        not extra,
        "an OpenAI-compatible answer carries OpenAI's fields only (a strict client or a "
        "typed SDK model rejects or drops the rest)",
        "no field outside OpenAI's chat completion objects",
        f"{len(extra)} vendor field(s): {', '.join(extra[:8])}",
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.case(
    "shape.null-not-string",
    title='Null is JSON null, never the string "None" (finish_reason, logprobs, content)',
    area="shape",
    faq=("F4",),
    level="SHOULD",
    spec=SPEC,
)
def test_null_not_string(kind, client, profile, tag, relay, _journal, case_level):
    case_level(profile.response.level)
    ex = _answer(kind, client, tag, _journal)
    objects = _objects(ex, kind, relay)
    found = _null_strings(objects, KINDS[kind][0])
    require(
        not found,
        "F4: where OpenAI sends null the answer has JSON null (clients read finish_reason; a "
        'string "None" reads as a finish reason, a logprobs object or the model\'s text)',
        "null (or a real value) in finish_reason, logprobs, usage, tool-call content",
        "; ".join(found[:8]),
        ex.curl,
        relay.secrets,
    )
