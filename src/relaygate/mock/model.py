"""What the mock upstream answers when a request carries no directive: it behaves like a model.

Live probes send plain requests, so the mock must honour what a real model honours, with
every count exact (tiktoken, ``relaygate.tokens``):

* ``max_tokens`` / ``max_completion_tokens`` = N: an answer longer than N tokens stops at
  exactly N tokens with ``finish_reason`` ``length``; otherwise it finishes ``stop``.
* ``stop`` (a string or up to 4 strings): the text is cut before the first stop string that
  is complete within the token budget, ``finish_reason`` ``stop``.
* ``n`` (1..128): n choices, indexes 0..n-1; generated answers differ between choices.
* usage: ``prompt_tokens`` is :func:`relaygate.tokens.count_chat_prompt` (chat framing) or the
  prompt's token count (legacy completions); ``completion_tokens`` is the exact token count of
  the returned texts, summed over choices. A stream's usage chunk equals the non-stream usage.
* Determinism: with ``temperature`` absent or 0 the same model and prompt give the same text,
  and another model name gives another text. With ``temperature`` > 0 the text varies per
  request, unless the request carries a ``seed``.

Instructions, recognised (case-insensitively) in the last user message (the ``prompt`` for
legacy completions); the first that matches wins:

``Repeat exactly: <text>``
    answers ``<text>`` exactly: everything after the colon to the end of the message, less
    one space (or newline) right after the colon.
``Reply with the codes you see``
    answers every canary code ``RG-XXXX-XXXX`` (X = ``A-Z`` or ``0-9``) found anywhere in the
    prompt (system and all messages, in order), separated by single spaces; or
    ``No codes found.`` when there is none.
``Answer briefly``
    answers one generated sentence (under 40 tokens).
``Answer at length`` (or no instruction)
    answers a long generated text of plain English-looking sentences, at least 300 tokens,
    so any ``max_tokens`` up to 256 is reached.

Generated text is built from words that are one token each in both ``cl100k_base`` and
``o200k_base`` (and ``.``/``,``), so a cut at N tokens is N tokens exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from relaygate import tokens
from relaygate.mock.validation import RequestError, check_type

__all__ = [
    "CODE_RE",
    "NO_CODES",
    "Choice",
    "Reply",
    "natural_pieces",
    "reply",
    "split_tokens",
]

CODE_RE = re.compile(r"RG-[A-Z0-9]{4}-[A-Z0-9]{4}")
NO_CODES = "No codes found."
MAX_N = 128
_LONG_MIN_TOKENS = 300

_REPEAT_RE = re.compile(r"repeat\s+exactly:[ \n]?", re.IGNORECASE)
_CODES_RE = re.compile(r"reply\s+with\s+the\s+codes\s+you\s+see", re.IGNORECASE)
_BRIEF_RE = re.compile(r"answer\s+briefly", re.IGNORECASE)

# Every word below, with a leading space, is one token in cl100k_base and o200k_base
# (tests/test_mock_model.py checks the generated text, not this list).
# fmt: off
_STARTERS = ("The", "This", "Each", "Every", "One", "That")
_DETERMINERS = ("the", "this", "each", "every", "one", "that", "some")
_ADJECTIVES = (
    "clear", "simple", "short", "long", "small", "large", "high", "low", "fast", "slow", "good",
    "new", "old", "first", "last", "next", "same", "different", "common", "useful", "exact",
    "reliable", "stable", "open", "public", "private", "local", "remote", "complete", "full",
    "main", "central", "basic", "general", "specific", "real",
)
_NOUNS = (
    "system", "request", "answer", "relay", "model", "token", "stream", "server", "client",
    "response", "time", "data", "value", "result", "process", "method", "rule", "check", "test",
    "limit", "rate", "key", "price", "cost", "error", "status", "header", "body", "field",
    "text", "message", "user", "channel", "provider", "network", "service", "report", "window",
    "context", "length", "number", "size", "order", "part", "point", "line", "level", "state",
    "change", "set", "list", "table", "group", "area", "example", "reason", "way", "form",
    "kind", "type", "team",
)
_VERBS = (
    "keeps", "sends", "reads", "writes", "counts", "shows", "makes", "takes", "gives", "finds",
    "uses", "helps", "needs", "means", "holds", "moves", "turns", "starts", "stops", "runs",
    "returns", "measures",
)
_PREPOSITIONS = (
    "of", "to", "in", "for", "on", "with", "by", "from", "at", "into", "over", "under", "about",
    "after", "before", "between", "through", "during",
)
_CONJUNCTIONS = ("and", "while", "because", "when", "so")
# fmt: on


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """One answer: its text, the text as token-sized stream pieces, finish reason, tokens."""

    text: str
    pieces: tuple[str, ...]
    finish_reason: str
    completion_tokens: int


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """The choices of one answer, in index order."""

    choices: tuple[Choice, ...]

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)

    @property
    def events(self) -> int:
        """Content events a stream of this reply sends (one token-sized piece per choice)."""
        return max((len(choice.pieces) for choice in self.choices), default=0)


def _sentence(rng: random.Random, first: bool) -> list[str]:
    def phrase(determiner: str) -> list[str]:
        words = [determiner]
        if rng.random() < 0.5:
            words.append(" " + rng.choice(_ADJECTIVES))
        words.append(" " + rng.choice(_NOUNS))
        return words

    starter = rng.choice(_STARTERS)
    words = phrase(starter if first else " " + starter)
    words.append(" " + rng.choice(_VERBS))
    words += phrase(" " + rng.choice(_DETERMINERS))
    if rng.random() < 0.6:
        words.append(" " + rng.choice(_PREPOSITIONS))
        words += phrase(" " + rng.choice(_DETERMINERS))
    if rng.random() < 0.4:
        words += [",", " " + rng.choice(_CONJUNCTIONS)]
        words += phrase(" " + rng.choice(_DETERMINERS))
        words.append(" " + rng.choice(_VERBS))
        words += phrase(" " + rng.choice(_DETERMINERS))
    words.append(".")
    return words


def natural_pieces(seed: bytes, long: bool) -> list[str]:
    """Generated English-looking text as one-token pieces: one sentence, or >= 300 tokens."""
    rng = random.Random(seed)
    pieces = _sentence(rng, first=True)
    while long and len(pieces) < _LONG_MIN_TOKENS:
        pieces += _sentence(rng, first=False)
    return pieces


def split_tokens(text: str, model: str) -> list[tuple[str, int]]:
    """``text`` as ``(piece, tokens)`` in the model's tokenizer: one token per piece, except
    that a character split across tokens is kept whole in one piece."""
    encoding = tokens.encoding_for_model(model)
    pieces: list[tuple[str, int]] = []
    pending = b""
    count = 0
    for raw in encoding.decode_tokens_bytes(encoding.encode_ordinary(text)):
        pending += raw
        count += 1
        try:
            piece = pending.decode()
        except UnicodeDecodeError:
            continue
        pieces.append((piece, count))
        pending, count = b"", 0
    if pending:
        pieces.append((pending.decode(errors="replace"), count))
    return pieces


def _last_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return tokens.content_text(message.get("content"))
        return ""
    return "".join(_prompt_texts(body.get("prompt")))


def _prompt_texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _all_prompt_texts(body: Mapping[str, Any]) -> list[str]:
    messages = body.get("messages")
    if isinstance(messages, list):
        return [
            tokens.content_text(message.get("content"))
            for message in messages
            if isinstance(message, Mapping)
        ]
    return _prompt_texts(body.get("prompt"))


def _check_n(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int):
        check_type("n", n, "integer")
    if not 1 <= n <= MAX_N:
        raise RequestError(
            400,
            f"Invalid 'n': expected a value within 1..{MAX_N}, but got {n} instead.",
            code="invalid_value",
            param="n",
        )
    return int(n)


def _check_stop(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    check_type("stop", stop, "string", "array")
    if len(stop) > 4 or not all(isinstance(item, str) for item in stop):
        raise RequestError(
            400,
            "Invalid 'stop': expected a string or an array of up to 4 strings.",
            code="invalid_value",
            param="stop",
        )
    return [item for item in stop if item]


def _nonce(body: Mapping[str, Any]) -> int | str | None:
    """What varies the text besides model and prompt: nothing at temperature 0 (or absent),
    else the request's ``seed``, else a random value (``str``)."""
    temperature = body.get("temperature")
    if (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and temperature > 0
    ):
        seed = body.get("seed")
        return (
            seed if isinstance(seed, int) and not isinstance(seed, bool) else secrets.token_hex(16)
        )
    return None


def _finish(text: str, model: str, max_tokens: int | None, stops: Sequence[str]) -> tuple[str, str]:
    """The returned text and finish reason: the first stop complete within the budget wins,
    else the budget (``length``), else the whole text (``stop``)."""
    pieces = split_tokens(text, model)
    budget_chars = len(text)
    cut_by_length = False
    if max_tokens is not None and sum(count for _, count in pieces) > max_tokens:
        used = 0
        budget_chars = 0
        for piece, count in pieces:
            if used + count > max_tokens:
                break
            used += count
            budget_chars += len(piece)
        cut_by_length = True
    first_stop: int | None = None
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and at + len(stop) <= budget_chars and (first_stop is None or at < first_stop):
            first_stop = at
    if first_stop is not None:
        return text[:first_stop], "stop"
    if cut_by_length:
        return text[:budget_chars], "length"
    return text, "stop"


def _texts(key: bytes, body: Mapping[str, Any], n: int) -> list[str]:
    """The full (uncut) answer of each choice; ``key`` seeds generated text."""
    instruction = _last_user_text(body)
    repeat = _REPEAT_RE.search(instruction)
    if repeat is not None:
        return [instruction[repeat.end() :]] * n
    if _CODES_RE.search(instruction):
        codes = [code for text in _all_prompt_texts(body) for code in CODE_RE.findall(text)]
        return [" ".join(codes) if codes else NO_CODES] * n
    long = _BRIEF_RE.search(instruction) is None
    base = hashlib.sha256(key).digest()
    return ["".join(natural_pieces(base + bytes([index]), long)) for index in range(n)]


def reply(body: Mapping[str, Any], model: str, max_tokens: int | None) -> Reply:
    """The answer to a plain (directive-free) chat or legacy completions request.

    Raises :class:`RequestError` for a bad ``n`` or ``stop``.
    """
    n = _check_n(body)
    stops = tuple(_check_stop(body))
    nonce = _nonce(body)
    prompt_field = "messages" if "messages" in body else "prompt"
    key = orjson.dumps(
        [model, {prompt_field: body.get(prompt_field)}, nonce], option=orjson.OPT_SORT_KEYS
    )
    if isinstance(nonce, str):
        return _reply(key, model, max_tokens, n, stops)
    return _cached_reply(key, model, max_tokens, n, stops)


def _reply(key: bytes, model: str, max_tokens: int | None, n: int, stops: tuple[str, ...]) -> Reply:
    """The reply to the request ``key`` (``[model, {field: prompt}, nonce]`` as JSON)."""
    body = orjson.loads(key)[1]
    choices = []
    for full in _texts(key, body, n):
        text, finish_reason = _finish(full, model, max_tokens, stops)
        pieces = tuple(piece for piece, _ in split_tokens(text, model))
        choices.append(Choice(text, pieces, finish_reason, tokens.count_text(text, model)))
    return Reply(tuple(choices))


# Deterministic requests repeat (load runs, retries): their replies are immutable, so the
# ~3 ms of generating and tokenising is spent once.
_cached_reply = functools.lru_cache(maxsize=256)(_reply)
