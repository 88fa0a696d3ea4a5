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
    answers a long generated text of plain English-looking sentences, at least 4200 tokens,
    so any ``max_tokens`` up to 4096 is reached; only the part a ``max_tokens`` keeps (plus
    a sentence) is generated.

Chat requests also honour ``logprobs`` / ``top_logprobs``, ``response_format`` and
``tools`` + ``tool_choice`` (:mod:`relaygate.mock.params`, docs/mock.md).

Generated text is built from words that are one token each in both ``cl100k_base`` and
``o200k_base`` (and ``.``/``,``), so a cut at N tokens is N tokens exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from relaygate import tokens
from relaygate.mock import params
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
_LONG_MIN_TOKENS = 4200

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
    """One answer: its text, the text as token-sized stream pieces, finish reason, tokens.

    ``logprobs`` (when asked for) holds the logprob entries of each piece's tokens. With
    ``tool_name`` the choice is a call of that function and ``text`` its arguments.
    """

    text: str
    pieces: tuple[str, ...]
    finish_reason: str
    completion_tokens: int
    logprobs: tuple[tuple[dict[str, Any], ...], ...] | None = None
    tool_name: str | None = None

    @property
    def events(self) -> int:
        """Content events of this choice in a stream (a tool call's header is one)."""
        return len(self.pieces) + (self.tool_name is not None)


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
        return max((choice.events for choice in self.choices), default=0)


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


def natural_pieces(seed: bytes, long: bool, limit: int | None = None) -> list[str]:
    """Generated English-looking text as one-token pieces: one sentence, or >= 4200 tokens.

    With ``limit``, generation stops once the text is longer than ``limit`` tokens: the
    same text's prefix, all a ``max_tokens`` = ``limit`` keeps of it."""
    rng = random.Random(seed)
    pieces = _sentence(rng, first=True)
    while long and len(pieces) < _LONG_MIN_TOKENS and (limit is None or len(pieces) <= limit):
        pieces += _sentence(rng, first=False)
    return pieces


def _token_groups(text: str, model: str) -> list[tuple[str, list[bytes]]]:
    """``text`` as ``(piece, token bytes)``: one token per piece, except that a character
    split across tokens is kept whole in one piece."""
    encoding = tokens.encoding_for_model(model)
    groups: list[tuple[str, list[bytes]]] = []
    pending: list[bytes] = []
    for raw in encoding.decode_tokens_bytes(encoding.encode_ordinary(text)):
        pending.append(raw)
        try:
            piece = b"".join(pending).decode()
        except UnicodeDecodeError:
            continue
        groups.append((piece, pending))
        pending = []
    if pending:
        groups.append((b"".join(pending).decode(errors="replace"), pending))
    return groups


def split_tokens(text: str, model: str) -> list[tuple[str, int]]:
    """``text`` as ``(piece, tokens)`` in the model's tokenizer: one token per piece, except
    that a character split across tokens is kept whole in one piece."""
    return [(piece, len(raws)) for piece, raws in _token_groups(text, model)]


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


def _finish(
    text: str,
    model: str,
    max_tokens: int | None,
    stops: Sequence[str],
    pieces: Sequence[tuple[str, int]] | None = None,
) -> tuple[str, str]:
    """The returned text and finish reason: the first stop complete within the budget wins,
    else the budget (``length``), else the whole text (``stop``). ``pieces``: the text's
    tokens when known (generated text), else they are counted."""
    if pieces is None:
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


def _texts(
    key: bytes, body: Mapping[str, Any], n: int, options: Mapping[str, Any], limit: int | None
) -> list[tuple[str, list[str] | None]]:
    """The full answer of each choice (a generated one only as far as ``limit`` tokens and a
    sentence) and, for generated text, its one-token pieces; ``key`` seeds generated text.
    With a tool call: its arguments; with a JSON ``format``: the JSON text."""
    seeds = [
        hashlib.sha256(key).digest() + bytes([index % 256, index // 256]) for index in range(n)
    ]
    words = _NOUNS + _ADJECTIVES
    tool = options.get("tool")
    if tool is not None:
        return [
            (_dumps(params.instance(tool["parameters"], random.Random(seed), words)), None)
            for seed in seeds
        ]
    json_format = options.get("format")
    if json_format is not None and "schema" in json_format:
        return [
            (_dumps(params.instance(json_format["schema"], random.Random(seed), words)), None)
            for seed in seeds
        ]
    instruction = _last_user_text(body)
    repeat = _REPEAT_RE.search(instruction)
    if repeat is not None:
        return _plain([instruction[repeat.end() :]] * n, json_format)
    if _CODES_RE.search(instruction):
        codes = [code for text in _all_prompt_texts(body) for code in CODE_RE.findall(text)]
        return _plain([" ".join(codes) if codes else NO_CODES] * n, json_format)
    # A JSON answer is a short one: a long text would rarely close within max_tokens.
    long = _BRIEF_RE.search(instruction) is None and json_format is None
    generated = [natural_pieces(seed, long, limit) for seed in seeds]
    if json_format is not None:
        return _plain(["".join(pieces) for pieces in generated], json_format)
    return [("".join(pieces), pieces) for pieces in generated]


def _plain(texts: list[str], json_format: Any) -> list[tuple[str, list[str] | None]]:
    """Texts whose tokens are not known yet, as JSON ``{"answer": …}`` in JSON mode."""
    if json_format is not None:
        texts = [_dumps({"answer": text}) for text in texts]
    return [(text, None) for text in texts]


def _dumps(value: Any) -> str:
    """JSON as a model writes it: spaced separators, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False)


def reply(body: Mapping[str, Any], model: str, max_tokens: int | None) -> Reply:
    """The answer to a plain (directive-free) chat or legacy completions request.

    Raises :class:`RequestError` for a bad ``n``, ``stop``, ``temperature`` or (chat)
    ``logprobs``, ``response_format``, ``tool_choice``.
    """
    n = _check_n(body)
    stops = tuple(_check_stop(body))
    params.check_temperature(body)
    nonce = _nonce(body)
    prompt_field = "messages" if "messages" in body else "prompt"
    options = params.chat_options(body) if prompt_field == "messages" else {}
    key = orjson.dumps(
        [model, {prompt_field: body.get(prompt_field)}, nonce, options],
        option=orjson.OPT_SORT_KEYS,
    )
    # Logprob entries are large (k + 1 dicts per token): keep them out of the cache.
    if isinstance(nonce, str) or options.get("top_logprobs") is not None:
        return _reply(key, model, max_tokens, n, stops)
    return _cached_reply(key, model, max_tokens, n, stops)


def _reply(key: bytes, model: str, max_tokens: int | None, n: int, stops: tuple[str, ...]) -> Reply:
    """The reply to the request ``key`` (``[model, {field: prompt}, nonce, options]`` as
    JSON)."""
    _, body, _, options = orjson.loads(key)
    tool = options.get("tool")
    top = options.get("top_logprobs")
    choices = []
    for index, (full, known) in enumerate(_texts(key, body, n, options, max_tokens)):
        if tool is not None:
            choices.append(_tool_choice(tool, full, model, max_tokens))
            continue
        ones = None if known is None else [(piece, 1) for piece in known]
        text, finish_reason = _finish(full, model, max_tokens, stops, ones)
        groups = _known_groups(known, text) or _token_groups(text, model)
        pieces = tuple(piece for piece, _ in groups)
        logprobs = None
        if top is not None:
            logprobs = _logprobs(groups, top, random.Random(key + bytes([index % 256])))
        count = sum(len(raws) for _, raws in groups)
        choices.append(Choice(text, pieces, finish_reason, count, logprobs))
    return Reply(tuple(choices))


def _known_groups(known: list[str] | None, text: str) -> list[tuple[str, list[bytes]]] | None:
    """The token groups of ``text`` when it is whole one-token ``known`` pieces (a generated
    answer cut at a token), without tokenising it again; else None."""
    if known is None:
        return None
    groups: list[tuple[str, list[bytes]]] = []
    length = 0
    for piece in known:
        if length == len(text):
            return groups
        length += len(piece)
        groups.append((piece, [piece.encode()]))
    return groups if length == len(text) else None


def _tool_choice(
    tool: Mapping[str, Any], arguments: str, model: str, max_tokens: int | None
) -> Choice:
    """A call of ``tool``: its tokens are the name's and the arguments' as one text (the rule
    :func:`relaygate.tokens.count_chat_prompt` counts a call in the prompt by); a
    ``max_tokens`` that leaves no room for all of them cuts the arguments (``length``)."""
    name = str(tool["name"])
    whole, finish_reason = _finish(name + arguments, model, max_tokens, ())
    kept = whole[len(name) :]
    if finish_reason != "length":
        finish_reason = str(tool["finish"])
    pieces = tuple(piece for piece, _ in split_tokens(kept, model))
    count = tokens.count_text(name + kept, model)
    return Choice(kept, pieces, finish_reason, count, None, name)


_ALTERNATIVES = tuple(" " + word for word in _NOUNS + _VERBS + _ADJECTIVES)


def _logprobs(
    groups: Sequence[tuple[str, list[bytes]]], top: int, rng: random.Random
) -> tuple[tuple[dict[str, Any], ...], ...]:
    """Logprob entries per piece; a character split across tokens is shown on its last
    token (the others show ``""``) so the tokens still join into the text."""
    per_piece = []
    for piece, raws in groups:
        texts = [""] * (len(raws) - 1) + [piece]
        per_piece.append(tuple(params.token_logprobs(raws, texts, top, rng, _ALTERNATIVES)))
    return tuple(per_piece)


# Deterministic requests repeat (load runs, retries): their replies are immutable, so the
# generating and tokenising (tens of ms for a 4096-token answer) is spent once.
_cached_reply = functools.lru_cache(maxsize=256)(_reply)
