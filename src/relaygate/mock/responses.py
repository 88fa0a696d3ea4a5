"""OpenAI response shapes: ids, non-stream bodies, pre-serialised stream chunks, error bodies.

Directed text is ``" tok"`` repeated: one token in both cl100k and o200k, so ``n`` repetitions
are exactly ``n`` tokens for any relay that counts the streamed text itself. A plain request's
answer (:mod:`relaygate.mock.model`) is shaped by the ``*_reply`` functions.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import orjson

from relaygate.directives import Directive
from relaygate.mock.model import Reply

__all__ = [
    "SYSTEM_FINGERPRINT",
    "TOKEN_TEXT",
    "StreamPayloads",
    "chat_completion",
    "chat_reply",
    "chat_reply_payloads",
    "chat_stream_payloads",
    "completion_reply_payloads",
    "completion_stream_payloads",
    "directed_error",
    "error_page",
    "new_id",
    "request_id",
    "text_completion",
    "text_reply",
    "tool_arguments",
    "usage",
]

TOKEN_TEXT = " tok"
SYSTEM_FINGERPRINT = "fp_relaygate"
_PLACEHOLDER = "\u2063relaygate-content\u2063"


def new_id(prefix: str) -> str:
    """An OpenAI-looking id such as ``chatcmpl-…`` (29 random url-safe characters)."""
    return prefix + secrets.token_urlsafe(22)[:29]


def request_id() -> str:
    """Value of the ``x-request-id`` header."""
    return "req_" + secrets.token_hex(16)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The ``usage`` object with OpenAI's detail sub-objects."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def tool_arguments(chunks: int, tokens_per_chunk: int) -> list[str]:
    """Argument fragments whose concatenation is valid JSON: ``{"text":" tok tok…"}``."""
    if chunks == 0:
        return []
    body = TOKEN_TEXT * tokens_per_chunk
    fragments = [body] * chunks
    fragments[0] = '{"text":"' + fragments[0]
    fragments[-1] = fragments[-1] + '"}'
    return fragments


@dataclasses.dataclass(frozen=True, slots=True)
class ToolCall:
    """The single tool call the mock makes when directed to finish with ``tool_calls``."""

    id: str
    name: str
    fragments: Sequence[str]

    @property
    def arguments(self) -> str:
        return "".join(self.fragments) or "{}"


def _tool_call(name: str, chunks: int, tokens_per_chunk: int) -> ToolCall:
    return ToolCall(_call_id(), name, tool_arguments(chunks, tokens_per_chunk))


def chat_completion(
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    tool_name: str | None = None,
    chunks: int = 0,
    tokens_per_chunk: int = 1,
) -> dict[str, Any]:
    """A non-stream ``chat.completion`` body."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_name is not None:
        call = _tool_call(tool_name, chunks, tokens_per_chunk)
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
        ]
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def text_completion(
    model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A non-stream legacy ``text_completion`` body."""
    return {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class StreamPayloads:
    """The JSON payloads of one stream, serialised once (``data:`` framing is added later).

    ``content(i)`` is content event ``i``; ``stamped(text)`` builds a content event whose text
    is ``text`` (``stamp=content``). ``header`` is the tool-call header chunk sent just before
    content event 0; ``usage`` is the final ``choices: []`` chunk, or None when not sent.

    A plain request's answer (one or more choices, varied text) uses ``groups`` instead:
    content event ``i`` is the payloads ``groups[i]`` written together (one per choice that
    still has text), and ``roles`` / ``finishes`` replace ``role`` / ``finish``. Groups are
    never stamped (stamps come from directives).
    """

    role: bytes | None
    header: bytes | None
    first: bytes
    middle: bytes
    last: bytes
    stamp_prefix: bytes
    stamp_suffix: bytes
    finish: bytes
    usage: bytes | None
    count: int
    groups: tuple[tuple[bytes, ...], ...] = ()
    roles: tuple[bytes, ...] = ()
    finishes: tuple[bytes, ...] = ()

    def content(self, index: int) -> bytes:
        """Payload of content event ``index`` (0-based)."""
        if index == 0:
            return self.first
        if index == self.count - 1:
            return self.last
        return self.middle

    def stamped(self, text: str) -> bytes:
        """A content event carrying ``text`` (used for ``stamp=content``)."""
        return self.stamp_prefix + orjson.dumps(text) + self.stamp_suffix


def _dumps_split(chunk: dict[str, Any]) -> tuple[bytes, bytes]:
    raw = orjson.dumps(chunk)
    prefix, _, suffix = raw.partition(orjson.dumps(_PLACEHOLDER))
    return prefix, suffix


def _stream_base(id_prefix: str, object_name: str, model: str) -> dict[str, Any]:
    """The fields every chunk of one stream repeats."""
    return {
        "id": new_id(id_prefix),
        "object": object_name,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _usage_payload(base: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> bytes:
    """The final ``choices: []`` chunk that carries the usage (``include_usage``)."""
    return orjson.dumps({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


def chat_stream_payloads(
    model: str,
    chunks: int,
    tokens_per_chunk: int,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    with_usage: bool,
    tool_name: str | None = None,
) -> StreamPayloads:
    """Payloads of a ``chat.completion.chunk`` stream."""
    base = _stream_base("chatcmpl-", "chat.completion.chunk", model)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            out["usage"] = None
        return out

    usage_payload = _usage_payload(base, prompt_tokens, completion_tokens) if with_usage else None
    stamp_prefix, stamp_suffix = _dumps_split(chunk({"content": _PLACEHOLDER}))
    finish = orjson.dumps(chunk({}, finish_reason))
    if tool_name is None:
        role = orjson.dumps(chunk({"role": "assistant", "content": ""}))
        content = orjson.dumps(chunk({"content": TOKEN_TEXT * tokens_per_chunk}))
        return StreamPayloads(
            role,
            None,
            content,
            content,
            content,
            stamp_prefix,
            stamp_suffix,
            finish,
            usage_payload,
            chunks,
        )
    call = _tool_call(tool_name, chunks, tokens_per_chunk)
    role = orjson.dumps(chunk({"role": "assistant", "content": None}))
    header = orjson.dumps(
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
        )
    )

    def fragment(text: str) -> bytes:
        return orjson.dumps(chunk({"tool_calls": [{"index": 0, "function": {"arguments": text}}]}))

    fragments = call.fragments
    middle = fragment(fragments[1]) if len(fragments) > 2 else b""
    first = fragment(fragments[0]) if fragments else b""
    last = fragment(fragments[-1]) if fragments else b""
    return StreamPayloads(
        role,
        header,
        first,
        middle,
        last,
        stamp_prefix,
        stamp_suffix,
        finish,
        usage_payload,
        chunks,
    )


def _reply_payloads(
    base: dict[str, Any],
    reply: Reply,
    events: Sequence[Sequence[bytes]],
    finishes: Sequence[bytes],
    prompt_tokens: int,
    with_usage: bool,
    roles: Sequence[bytes] = (),
) -> StreamPayloads:
    """Stream payloads of a plain answer from each choice's content event payloads."""
    groups = tuple(
        tuple(choice_events[step] for choice_events in events if step < len(choice_events))
        for step in range(reply.events)
    )
    usage_payload = (
        _usage_payload(base, prompt_tokens, reply.completion_tokens) if with_usage else None
    )
    return StreamPayloads(
        roles[0] if roles else None,
        None,
        b"",
        b"",
        b"",
        b"",
        b"",
        finishes[0],
        usage_payload,
        len(groups),
        groups,
        tuple(roles),
        tuple(finishes),
    )


def _logprobs_object(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"content": list(entries), "refusal": None}


def _call_header(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }


def chat_reply_payloads(
    model: str, reply: Reply, prompt_tokens: int, with_usage: bool
) -> StreamPayloads:
    """Payloads of a ``chat.completion.chunk`` stream of a plain answer (any ``n``): content
    pieces (with their logprobs when asked for), or a tool call's header and argument
    fragments."""
    base = _stream_base("chatcmpl-", "chat.completion.chunk", model)

    def chunk(index: int, delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> bytes:
        out = {
            **base,
            "choices": [
                {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        if with_usage:
            out["usage"] = None
        return orjson.dumps(out)

    events: list[list[bytes]] = []
    roles = []
    for index, choice in enumerate(reply.choices):
        if choice.tool_name is not None:
            roles.append(chunk(index, {"role": "assistant", "content": None}, None))
            header = {"tool_calls": [_call_header(0, _call_id(), choice.tool_name)]}
            events.append(
                [chunk(index, header, None)]
                + [
                    chunk(index, {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}, None)
                    for p in choice.pieces
                ]
            )
            continue
        roles.append(chunk(index, {"role": "assistant", "content": ""}, None))
        logprobs = choice.logprobs
        if logprobs is None:
            # Thousands of pieces: serialise the chunk once, the pieces alone.
            prefix, _, suffix = chunk(index, {"content": _PLACEHOLDER}, None).partition(
                orjson.dumps(_PLACEHOLDER)
            )
            events.append([prefix + orjson.dumps(piece) + suffix for piece in choice.pieces])
            continue
        events.append(
            [
                chunk(index, {"content": piece}, None, _logprobs_object(logprobs[step]))
                for step, piece in enumerate(choice.pieces)
            ]
        )
    finishes = [chunk(i, {}, c.finish_reason) for i, c in enumerate(reply.choices)]
    return _reply_payloads(base, reply, events, finishes, prompt_tokens, with_usage, roles)


def completion_reply_payloads(
    model: str, reply: Reply, prompt_tokens: int, with_usage: bool
) -> StreamPayloads:
    """Payloads of a legacy ``text_completion`` stream of a plain answer (no role chunk)."""
    base = _stream_base("cmpl-", "text_completion", model)

    def chunk(index: int, text: str | None, finish: str | None) -> bytes:
        out = {
            **base,
            "choices": [
                {"text": text or "", "index": index, "logprobs": None, "finish_reason": finish}
            ],
        }
        if with_usage:
            out["usage"] = None
        return orjson.dumps(out)

    events = [[chunk(i, piece, None) for piece in c.pieces] for i, c in enumerate(reply.choices)]
    finishes = [chunk(i, None, c.finish_reason) for i, c in enumerate(reply.choices)]
    return _reply_payloads(base, reply, events, finishes, prompt_tokens, with_usage)


def _call_id() -> str:
    return new_id("call_")[:29]


def chat_reply(model: str, reply: Reply, prompt_tokens: int) -> dict[str, Any]:
    """A non-stream ``chat.completion`` body of a plain answer (any ``n``)."""
    body = chat_completion(model, "", "stop", prompt_tokens, reply.completion_tokens)
    choices = []
    for index, choice in enumerate(reply.choices):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
        if choice.tool_name is not None:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": _call_id(),
                    "type": "function",
                    "function": {"name": choice.tool_name, "arguments": choice.text},
                }
            ]
        logprobs = None
        if choice.logprobs is not None:
            logprobs = _logprobs_object([e for piece in choice.logprobs for e in piece])
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": choice.finish_reason,
            }
        )
    body["choices"] = choices
    return body


def text_reply(model: str, reply: Reply, prompt_tokens: int) -> dict[str, Any]:
    """A non-stream legacy ``text_completion`` body of a plain answer (any ``n``)."""
    body = text_completion(model, "", "stop", prompt_tokens, reply.completion_tokens)
    body["choices"] = [
        {
            "text": choice.text,
            "index": index,
            "logprobs": None,
            "finish_reason": choice.finish_reason,
        }
        for index, choice in enumerate(reply.choices)
    ]
    return body


def completion_stream_payloads(
    model: str,
    chunks: int,
    tokens_per_chunk: int,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    with_usage: bool,
) -> StreamPayloads:
    """Payloads of a legacy ``text_completion`` stream (no role chunk)."""
    base = _stream_base("cmpl-", "text_completion", model)

    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        out = {
            **base,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            out["usage"] = None
        return out

    usage_payload = _usage_payload(base, prompt_tokens, completion_tokens) if with_usage else None
    stamp_prefix, stamp_suffix = _dumps_split(chunk(_PLACEHOLDER))
    content = orjson.dumps(chunk(TOKEN_TEXT * tokens_per_chunk))
    return StreamPayloads(
        None,
        None,
        content,
        content,
        content,
        stamp_prefix,
        stamp_suffix,
        orjson.dumps(chunk("", finish_reason)),
        usage_payload,
        chunks,
    )


_DIRECTED_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to access this resource."),
    404: ("invalid_request_error", None, "The requested resource was not found."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


def directed_error(status: int, d: Directive) -> dict[str, Any]:
    """The OpenAI error object a directive asks for, with per-status defaults."""
    if status in _DIRECTED_DEFAULTS:
        type_, code, message = _DIRECTED_DEFAULTS[status]
    elif 400 <= status < 500:
        type_, code, message = "invalid_request_error", None, f"Request failed ({status})."
    else:
        type_, code, message = "server_error", None, f"The server had an error ({status})."
    return {
        "error": {
            "message": d.error_message if d.error_message is not None else message,
            "type": d.error_type if d.error_type is not None else type_,
            "param": d.error_param,
            "code": d.error_code if d.error_code is not None else code,
        }
    }


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_page(status: int, kind: str) -> tuple[bytes, str | None]:
    """Body and content type of a non-JSON error answer (``html``, ``text`` or ``empty``)."""
    title = f"{status} {_reason(status)}"
    if kind == "html":
        page = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
            "</body>\r\n</html>\r\n"
        )
        return page.encode(), "text/html"
    if kind == "text":
        return f"error code: {status} ({_reason(status)})\n".encode(), "text/plain"
    return b"", None
