"""Probes for the usage area: prompts whose exact token counts we know offline, canary codes, and
the arithmetic that compares a relay's reported usage and model with them.

Everything here works on evidence a relay's customer has (the request sent, the answer read,
:mod:`relaygate.tokens`' exact counts); no directive, journal or admin API is involved, so the
same probe runs against the mock upstream and against a live provider.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeGuard

from relaygate import tokens

__all__ = [
    "CANARY_RE",
    "CODES_PHRASE",
    "ENCODINGS",
    "FAMILY_PROBE",
    "LENGTHY_PHRASE",
    "canary_codes",
    "canary_conversation",
    "codes_in",
    "conversation_probe",
    "family_counts",
    "family_name",
    "is_snapshot_of",
    "usage_numbers",
    "visible_completion_tokens",
]

#: Both OpenAI chat encodings; a model's family is the one it counts with.
ENCODINGS: Final[Mapping[str, str]] = {
    "o200k_base": "gpt-4o",
    "cl100k_base": "gpt-4",
}
_FAMILY_NAMES: Final[Mapping[str, str]] = {
    "o200k_base": "o200k_base (gpt-4o / gpt-4.1 / o-series)",
    "cl100k_base": "cl100k_base (gpt-4 / gpt-3.5-turbo)",
}

#: A canary code: what "Reply with the codes you see" asks a model to repeat.
CANARY_RE: Final = re.compile(r"RG-[0-9A-Z]{4}-[0-9A-Z]{4}")
#: Letters and digits a model cannot confuse (no 0/O, 1/I/L, 5/S, 8/B).
_CODE_ALPHABET = "2346779ACDEFGHJKMNPQRTUVWXYZ"
CODES_PHRASE: Final = "Reply with the codes you see"
LENGTHY_PHRASE: Final = "Answer at length"

#: Text whose o200k and cl100k counts differ by far more than any framing: Chinese, Hindi and
#: Russian cost cl100k two to three times the tokens (``tests/test_usage_probes.py`` pins it).
FAMILY_PROBE: Final = (
    "Please repeat nothing; just read these lines. "
    "你好，世界。今天天气很好，我们去公园散步吧，然后一起吃午饭。"
    "नमस्ते दुनिया, आज मौसम बहुत अच्छा है और हम बाहर घूमने जाएंगे। "
    "Привет, мир! Сегодня хорошая погода, и мы пойдём гулять в парк. "
    "こんにちは、世界。今日はとても良い天気ですね。"
)

# Plain English sentences for padding a conversation to a rung's size; no codes, no phrases the
# mock upstream reacts to.
_FILLER = (
    "The harbour was quiet in the early morning, and the fishing boats rocked gently.",
    "A baker on the corner opened her shutters and set out trays of warm bread.",
    "Two cyclists argued politely about the fastest route over the old stone bridge.",
    "The library clock struck seven while a student copied notes from a heavy atlas.",
    "Gulls circled above the market, waiting for the fishmongers to look away.",
    "A tram rattled past the square, its bell ringing twice at the crossing.",
    "In the park a gardener raked leaves into neat piles beside the fountain.",
    "The ferry captain checked the weather board and nodded at the calm forecast.",
)


def family_name(encoding: str) -> str:
    """``encoding`` with the models that count with it, for failure messages."""
    return _FAMILY_NAMES.get(encoding, encoding)


def family_counts(messages: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The chat prompt's exact token count in each encoding (OpenAI's chat framing included)."""
    return {enc: tokens.count_chat_prompt(messages, model) for enc, model in ENCODINGS.items()}


def usage_numbers(usage: Any) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` of a usage object, or None when it lacks them."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if _is_count(prompt) and _is_count(completion):
        return prompt, completion
    return None


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def visible_completion_tokens(usage: Mapping[str, Any]) -> int:
    """Completion tokens that produced the returned text: reasoning tokens are reported apart
    (``completion_tokens_details.reasoning_tokens``) and never appear in the text."""
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    if isinstance(reasoning, int) and not isinstance(reasoning, bool):
        completion -= reasoning
    return completion


_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})")


def is_snapshot_of(answered: str, requested: str) -> bool:
    """True when ``answered`` is a dated snapshot of ``requested`` (``gpt-4o-2024-08-06``,
    ``gpt-3.5-turbo-0125``): what OpenAI names in the answer for an alias."""
    if not answered.startswith(requested):
        return False
    return _SNAPSHOT.fullmatch(answered[len(requested) :]) is not None


def conversation_probe() -> list[dict[str, str]]:
    """A short multi-turn conversation (system, user, assistant, user; about 120 tokens): a
    relay that injects, drops or cuts a message changes its prompt count."""
    return [
        {
            "role": "system",
            "content": "You are a concise assistant for a harbour town's visitor office.",
        },
        {"role": "user", "content": " ".join(_FILLER[:2]) + " Where could I buy bread?"},
        {"role": "assistant", "content": "The baker on the corner sells warm bread early."},
        {
            "role": "user",
            # The Chinese question makes the two tokenizer families' counts differ clearly.
            "content": " ".join(_FILLER[2:4])
            + " Which way is the old stone bridge? 请问，去老石桥怎么走？",
        },
    ]


def canary_codes(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct fresh codes ``RG-XXXX-XXXX`` (fresh: a relay cannot have cached the
    answer)."""
    codes: list[str] = []
    while len(codes) < count:
        code = "RG-" + "-".join(
            "".join(rng.choice(_CODE_ALPHABET) for _ in range(4)) for _ in range(2)
        )
        if code not in codes:
            codes.append(code)
    return codes


def _padding(n_tokens: int, model: str, offset: int) -> str:
    """Filler sentences totalling at most ``n_tokens`` tokens (one sentence at least)."""
    parts: list[str] = []
    total = 0
    i = offset
    while True:
        sentence = _FILLER[i % len(_FILLER)]
        cost = tokens.count_text(sentence + " ", model)
        if parts and total + cost > n_tokens:
            return " ".join(parts)
        parts.append(sentence)
        total += cost
        i += 1


#: Tokens of a canary conversation that are not padding: framing, codes and the last message.
_CANARY_OVERHEAD_TOKENS = 110


def canary_conversation(
    codes: Sequence[str], prompt_tokens: int, model: str
) -> list[dict[str, str]]:
    """A conversation of at most (and about) ``prompt_tokens`` tokens carrying ``codes`` (three:
    head, middle, tail) in the system message, a middle user turn and the last user turn,
    which asks for every code back.

    A relay that drops early history, cuts the prompt's head or replaces the system message
    loses a code, whatever usage it reports.
    """
    head, middle, tail = codes
    turns = 4  # user/assistant pairs of padding around the middle code
    share = max((prompt_tokens - _CANARY_OVERHEAD_TOKENS) // (turns * 2 + 1), 8)
    messages: list[dict[str, str]] = [
        {
            "role": "system",
            "content": f"Keep this code in mind: {head}. " + _padding(share, model, 0),
        }
    ]
    for turn in range(turns):
        user = _padding(share, model, turn * 3 + 1)
        if turn == turns // 2:
            user = f"Another code to remember: {middle}. " + user
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": _padding(share, model, turn * 3 + 2)})
    messages.append(
        {
            "role": "user",
            "content": (
                f"{CODES_PHRASE}: the last code is {tail}. List every code that starts with "
                "RG- and appears anywhere in this conversation, the system message included, "
                "in order of appearance, one per line, and nothing else."
            ),
        }
    )
    return messages


def codes_in(text: str) -> list[str]:
    """The canary codes in ``text``, in order."""
    return CANARY_RE.findall(text)
