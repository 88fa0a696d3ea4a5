"""Token counts are OpenAI's, offline: reference ids, pinned vocab hashes, edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaygate import tokens


def test_reference_counts_cl100k() -> None:
    enc = tokens.get_encoding("cl100k_base")
    assert enc.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert tokens.count_text("hello world", "gpt-4") == 2


def test_reference_counts_o200k() -> None:
    assert tokens.get_encoding("o200k_base").encode("hello world") == [24912, 2375]


def test_model_to_encoding() -> None:
    assert tokens.encoding_name_for_model("gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_name_for_model("gpt-3.5-turbo") == "cl100k_base"
    assert tokens.encoding_name_for_model("gpt-4") == "cl100k_base"


def test_lone_surrogate_and_special_text_count_like_tiktoken() -> None:
    assert tokens.get_encoding("cl100k_base").encode_ordinary("\ud800 x") == [5809, 865]
    assert tokens.count_text("<|endoftext|>", "gpt-4") > 1


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_mock_token_word_is_one_token(model: str) -> None:
    assert tokens.count_text(" tok" * 37, model) == 37


def test_chat_prompt_rule() -> None:
    messages = [{"role": "user", "content": "hello world"}]
    # 3 per message + role (1) + content (2) + 3 reply priming
    assert tokens.count_chat_prompt(messages, "gpt-4") == 3 + 1 + 2 + 3
    named = [{"role": "user", "name": "bob", "content": "hello world"}]
    assert tokens.count_chat_prompt(named, "gpt-4") == 3 + 1 + 1 + 1 + 2 + 3


# The example conversation of OpenAI's cookbook "How to count tokens with tiktoken" (section 6)
# and the prompt_tokens it reports from the API: 129 for gpt-3.5-turbo / gpt-4, 124 for 4o.
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that "
     "translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user",
     "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant",
     "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more "
     "bandwidth to touch base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for "
     "the client deliverable."},
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_chat_prompt_matches_the_cookbook_counts(model: str, expected: int) -> None:
    assert tokens.count_chat_prompt(COOKBOOK_MESSAGES, model) == expected


def test_content_text_joins_text_parts() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"text": "b"}]
    assert tokens.content_text(parts) == "ab"
    assert tokens.content_text("plain") == "plain"
    assert tokens.content_text(None) == ""


def test_unknown_encoding_is_a_clear_error() -> None:
    with pytest.raises(tokens.TokenizerError, match="unknown encoding"):
        tokens.get_encoding("p50k_base")


def test_the_decoded_vocab_is_cached_sealed_and_never_trusted_blindly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    exact = tokens._bundled_ranks("cl100k_base")
    assert tokens._ranks("cl100k_base") == exact  # decoded, then stored
    path = tokens._cache_path("cl100k_base")
    assert path.is_file() and tokens._cached_ranks("cl100k_base") == exact
    # A cache edited behind our back (one rank changed) breaks the seal: rebuilt, never used.
    sealed = bytearray(path.read_bytes())
    sealed[-3] ^= 0x01
    path.write_bytes(bytes(sealed))
    assert tokens._cached_ranks("cl100k_base") is None
    assert tokens._ranks("cl100k_base") == exact
    assert tokens._cached_ranks("cl100k_base") == exact  # and written again
    # A cache that cannot be written costs time, never the count.
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert tokens._ranks("cl100k_base") == exact
