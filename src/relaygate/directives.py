"""Directives: per-request instructions to the mock upstream, carried inside message text.

Relays forward message content verbatim but drop unknown fields and headers, so a directive
lives in the text. Syntax (anywhere in any message's content, a completion ``prompt`` or an
embeddings ``input``)::

    [[relaygate ttft_ms=200 itl_ms=20 chunks=50 usage=12/50 tag=case-17]]
    [[relaygate {"error": 429, "retry_after": 2, "tag": "rl-1"}]]

``key=value`` pairs are separated by whitespace; a value may be quoted with double quotes
(JSON string escapes apply). The JSON form takes the same keys. When several directives
appear, later ones override earlier keys. Unknown keys or bad values are an error: the mock
answers 400 ``invalid_directive`` naming the key, so a typo never silently changes a test.

Keys (all optional):

=====================  ============================================================
``tag``                free text echoed into the journal (to find this request)
``prompt_tokens``      prompt tokens to report (and to check limits with);
                       default: counted exactly with tiktoken
``completion_tokens``  completion tokens to report; default chunks*tokens_per_chunk
``usage``              shorthand ``P/C`` for the two above
``ttft_ms``            arrival -> first content (or tool-call) event, ms (default 0)
``role_ms``            arrival -> role chunk, ms (default 0: right after the headers)
``itl_ms``             gap between content events, ms (default 0)
``chunks``             number of content events (default 8)
``tokens_per_chunk``   tokens of text per content event (default 1)
``finish_reason``      stop | length | tool_calls | content_filter (default stop)
``error``              answer with this HTTP status instead (e.g. 429, 500, 200)
``error_body``         openai (default) | html | text | empty
``error_type``         error.type in the OpenAI body
``error_code``         error.code in the OpenAI body
``error_param``        error.param in the OpenAI body
``error_message``      error.message in the OpenAI body
``retry_after``        Retry-After header value (seconds) on the error answer
``headers``            extra response headers (JSON form: object; kv form: ``Name:Value,...``)
``stream_error_after`` after k content events, send an in-stream ``data: {"error":...}``
``disconnect_after``   after k content events, drop the connection (no finish, no [DONE]);
                       on a non-stream request: drop it instead of answering
``framing``            comma list of: nospace (``data:{...}``), crlf (``\\r\\n`` line ends),
                       split (each event in two TCP writes), coalesce (all due events in one
                       write)
``split_gap_ms``       pause between the two halves of a split event (default 2)
``no_done``            1: omit ``data: [DONE]``
``usage_chunk``        auto (default: iff stream_options.include_usage) | always | never
``stamp``              none (default) | field: each event carries ``"relaygate_emit_ns"``,
                       the monotonic ns (CLOCK_MONOTONIC) just before it was written |
                       content: the same number is the text of each content event
``delay_ms``           extra delay before a non-stream answer or error answer, ms
=====================  ============================================================
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = [
    "DIRECTIVE_RE",
    "Directive",
    "DirectiveError",
    "directive",
    "find_directive",
]

_QUOTED = r'"(?:[^"\\]|\\.)*"'
DIRECTIVE_RE = re.compile(
    r"\[\[relaygate(?:\s+(?P<body>(?:" + _QUOTED + r"|[^\]\"]|\](?!\]))*?))?\s*\]\]", re.DOTALL
)
_KV_RE = re.compile(r"\s*(?P<key>[A-Za-z_]+)=(?P<value>" + _QUOTED + r"|[^\s\"]*)(?=\s|$)")

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")
ERROR_BODIES = ("openai", "html", "text", "empty")
FRAMINGS = ("nospace", "crlf", "split", "coalesce")
USAGE_CHUNK = ("auto", "always", "never")
STAMPS = ("none", "field", "content")


class DirectiveError(ValueError):
    """A directive could not be parsed; ``key`` names the offending key when known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclasses.dataclass(frozen=True, slots=True)
class Directive:
    """What the mock upstream does with one request. Defaults = a plain fast answer."""

    tag: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float = 0.0
    role_ms: float = 0.0
    itl_ms: float = 0.0
    chunks: int = 8
    tokens_per_chunk: int = 1
    finish_reason: str = "stop"
    error: int | None = None
    error_body: str = "openai"
    error_type: str | None = None
    error_code: str | None = None
    error_param: str | None = None
    error_message: str | None = None
    retry_after: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    stream_error_after: int | None = None
    disconnect_after: int | None = None
    framing: frozenset[str] = frozenset()
    split_gap_ms: float = 2.0
    no_done: bool = False
    usage_chunk: str = "auto"
    stamp: str = "none"
    delay_ms: float = 0.0

    def to_text(self) -> str:
        """The directive as text to embed in a message (only non-default keys)."""
        return directive(**_non_defaults(self))


_DEFAULTS = Directive()


def _non_defaults(d: Directive) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in dataclasses.fields(Directive):
        value = getattr(d, field.name)
        if value != getattr(_DEFAULTS, field.name):
            out[field.name] = value
    return out


_INT_KEYS = {
    "prompt_tokens": (0, 10_000_000),
    "completion_tokens": (0, 10_000_000),
    "chunks": (0, 100_000),
    "tokens_per_chunk": (1, 10_000),
    "error": (100, 599),
    "stream_error_after": (0, 100_000),
    "disconnect_after": (0, 100_000),
}
_MS_KEYS = ("ttft_ms", "role_ms", "itl_ms", "split_gap_ms", "delay_ms")
_MAX_MS = 600_000.0
_STR_KEYS = ("tag", "error_type", "error_code", "error_param", "error_message", "retry_after")
_CHOICE_KEYS = {
    "finish_reason": FINISH_REASONS,
    "error_body": ERROR_BODIES,
    "usage_chunk": USAGE_CHUNK,
    "stamp": STAMPS,
}


def _coerce(key: str, value: Any) -> dict[str, Any]:
    if key == "usage":
        text = str(value)
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise DirectiveError(f"usage must look like P/C (e.g. 12/50), got {text!r}", key)
        return {
            **_coerce("prompt_tokens", match.group(1)),
            **_coerce("completion_tokens", match.group(2)),
        }
    if key in _INT_KEYS:
        low, high = _INT_KEYS[key]
        if isinstance(value, bool):
            raise DirectiveError(f"{key} must be an integer, got {value!r}", key)
        try:
            number = int(str(value), 10)
        except ValueError:
            raise DirectiveError(f"{key} must be an integer, got {value!r}", key) from None
        if not low <= number <= high:
            raise DirectiveError(f"{key} must be within {low}..{high}, got {number}", key)
        return {key: number}
    if key in _MS_KEYS:
        if isinstance(value, bool):
            raise DirectiveError(f"{key} must be a number of ms, got {value!r}", key)
        try:
            ms = float(value)
        except (TypeError, ValueError):
            raise DirectiveError(f"{key} must be a number of ms, got {value!r}", key) from None
        if not 0.0 <= ms <= _MAX_MS or ms != ms:
            raise DirectiveError(f"{key} must be within 0..{_MAX_MS:.0f} ms, got {value!r}", key)
        return {key: ms}
    if key in _STR_KEYS:
        if isinstance(value, (dict, list)):
            raise DirectiveError(f"{key} must be a string, got {type(value).__name__}", key)
        return {key: str(value)}
    if key in _CHOICE_KEYS:
        text = str(value)
        if text not in _CHOICE_KEYS[key]:
            raise DirectiveError(f"{key} must be one of {', '.join(_CHOICE_KEYS[key])}", key)
        return {key: text}
    if key == "no_done":
        text = str(value).lower()
        if text not in ("1", "0", "true", "false"):
            raise DirectiveError("no_done must be 1/0/true/false", key)
        return {key: text in ("1", "true")}
    if key == "framing":
        items = value if isinstance(value, list) else str(value).split(",")
        names = frozenset(str(i).strip() for i in items if str(i).strip())
        unknown = names - set(FRAMINGS)
        if unknown:
            raise DirectiveError(
                f"framing {sorted(unknown)} unknown; known: {', '.join(FRAMINGS)}", key
            )
        return {key: names}
    if key == "headers":
        pairs: list[tuple[str, str]] = []
        if isinstance(value, Mapping):
            pairs = [(str(k), str(v)) for k, v in value.items()]
        else:
            for item in str(value).split(","):
                if not item.strip():
                    continue
                name, sep, val = item.partition(":")
                if not sep or not name.strip():
                    raise DirectiveError(f"headers item {item!r} is not Name:Value", key)
                pairs.append((name.strip(), val.strip()))
        for name, val in pairs:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or any(
                c in val for c in "\r\n\0"
            ):
                raise DirectiveError(f"header {name!r} is not a valid header", key)
        return {key: tuple(pairs)}
    raise DirectiveError(f"unknown directive key {key!r}", key)


def _parse_body(body: str) -> dict[str, Any]:
    body = body.strip()
    if not body:
        return {}
    if body.startswith("{"):
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise DirectiveError(f"directive JSON does not parse: {exc}") from None
        if not isinstance(raw, dict):
            raise DirectiveError("directive JSON must be an object")
        items = list(raw.items())
    else:
        items = []
        pos = 0
        while pos < len(body):
            match = _KV_RE.match(body, pos)
            if match is None:
                rest = body[pos:].split()[0]
                raise DirectiveError(f"directive item {rest!r} is not key=value")
            value: Any = match.group("value")
            if value.startswith('"'):
                try:
                    value = orjson.loads(value)
                except orjson.JSONDecodeError:
                    raise DirectiveError(
                        f"bad quoted value for {match.group('key')}", match.group("key")
                    ) from None
            items.append((match.group("key"), value))
            pos = match.end()
            while pos < len(body) and body[pos].isspace():
                pos += 1
    fields: dict[str, Any] = {}
    for key, value in items:
        fields.update(_coerce(str(key), value))
    return fields


def find_directive(texts: Iterable[str]) -> Directive | None:
    """The merged directive found in ``texts`` (None when there is none).

    Raises :class:`DirectiveError` for a malformed directive.
    """
    fields: dict[str, Any] = {}
    found = False
    for text in texts:
        if "[[relaygate" not in text:
            continue
        for match in DIRECTIVE_RE.finditer(text):
            found = True
            fields.update(_parse_body(match.group("body") or ""))
    if not found:
        return None
    return Directive(**fields)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (frozenset, set)):
        return ",".join(sorted(value))
    if isinstance(value, tuple):
        return ",".join(f"{k}:{v}" for k, v in value)
    text = str(value)
    if not text or any(c.isspace() or c in "\"'\\]=" for c in text):
        return orjson.dumps(text).decode()
    return text


def directive(**fields: Any) -> str:
    """Format a directive, validating it: ``directive(ttft_ms=200, tag="x")``."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        _coerce(
            key, value if not isinstance(value, (frozenset, set, tuple)) else _format_value(value)
        )
        parts.append(f"{key}={_format_value(value)}")
    return "[[relaygate " + " ".join(parts) + "]]" if parts else "[[relaygate]]"
