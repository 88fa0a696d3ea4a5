"""usage: the usage a relay reports is the exact count of what was sent and returned, and the
model named is the model that served (F8, F9, F10).

Every case here runs on evidence a relay's customer has: the request it sent, the answer it
read and the exact offline token counts of :mod:`relaygate.tokens` (OpenAI's encodings and chat
framing). No directive, journal or admin API is used, so each case runs the same way against
the mock upstream and in live mode (``--relay-url`` and ``--relay-key`` only). Requests are
small and capped (``max_tokens``) so a live run costs little.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from relaygate import tokens
from relaygate.suite.checks import is_chat_completion
from relaygate.suite.client import Exchange, StreamExchange
from relaygate.suite.failures import require
from relaygate.suite.usage_probes import (
    FAMILY_PROBE,
    LENGTHY_PHRASE,
    canary_codes,
    canary_conversation,
    codes_in,
    conversation_probe,
    family_counts,
    family_name,
    is_snapshot_of,
    usage_numbers,
    visible_completion_tokens,
)

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-3.5-turbo")
#: Model pairs a relay could serve from one backend: same vendor, one cheaper.
TWINS = {
    "gpt-4o-vs-gpt-4o-mini": ("gpt-4o", "gpt-4o-mini"),
    "gpt-4-vs-gpt-3.5-turbo": ("gpt-4", "gpt-3.5-turbo"),
}
#: Completion cap of every request here (cost bound; long enough to tell answers apart).
MAX_TOKENS = 32
LADDER_MODEL = "gpt-4o"
SHORT_RUNG_TOKENS = 300
LENGTHY = f"{LENGTHY_PHRASE}: how does the gear system of a bicycle work?"


def _body(
    model: str, messages: list[dict[str, str]], max_tokens: int = MAX_TOKENS
) -> dict[str, Any]:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}


def _served(ex: Exchange, model: str, relay: Any) -> dict[str, Any]:
    """The answer's JSON once ``model`` was served. Live mode: a key without that model skips
    (the customer's key decides which models it has); mock mode: every model is served."""
    __tracebackhide__ = True
    if not is_chat_completion(ex) and relay.mode == "live":
        pytest.skip(f"the key is not served {model} here: {ex.describe()[:200]}")
    require(
        is_chat_completion(ex),
        f"{model} is served",
        "HTTP 200 application/json with choices[0].message",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    data: dict[str, Any] = ex.json()
    return data


def _usage(data: dict[str, Any], ex: Exchange, relay: Any) -> tuple[int, int, dict[str, Any]]:
    __tracebackhide__ = True
    usage = data.get("usage")
    numbers = usage_numbers(usage)
    require(
        numbers is not None,
        "F9: a non-stream answer carries its usage (prompt_tokens, completion_tokens)",
        "a usage object with integer prompt_tokens and completion_tokens",
        repr(usage),
        ex.curl,
        relay.secrets,
    )
    assert numbers is not None and isinstance(usage, dict)
    return numbers[0], numbers[1], usage


def _content(data: dict[str, Any]) -> str:
    content = data["choices"][0]["message"].get("content")
    return content if isinstance(content, str) else ""


def _prompt_gap(reported: int, messages: list[dict[str, str]], model: str) -> str:
    """What a reported prompt count that is off means, in the relay operator's words."""
    counts = family_counts(messages)
    claimed = tokens.encoding_name_for_model(model)
    for encoding, count in counts.items():
        # Only a clear difference between the families tells them apart.
        if encoding != claimed and reported == count and abs(count - counts[claimed]) > 3:
            return (
                f"{reported} = the exact count in {family_name(encoding)}: a model of another "
                f"family served this {model} request"
            )
    gap = reported - counts[claimed]
    if gap > 0:
        return (
            f"{reported}: {gap} tokens more than was sent (an injected system prompt or extra "
            "instructions reached the model, or the usage was inflated)"
        )
    return (
        f"{reported}: {-gap} tokens fewer than was sent (part of the prompt did not reach the "
        "model: dropped history or a cut head?)"
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.case(
    "usage.prompt-tokens-exact",
    title="prompt_tokens is the exact count of the conversation sent",
    area="usage",
    faq=("F9", "F10"),
)
def test_prompt_tokens_exact(model, client, profile, relay, baseline):
    baseline.require_served()
    messages = conversation_probe()
    ex = client.chat(_body(model, messages, max_tokens=8))
    prompt, _, _ = _usage(_served(ex, model, relay), ex, relay)
    expected = tokens.count_chat_prompt(messages, model)
    tolerance = profile.models.usage_tolerance_tokens
    require(
        abs(prompt - expected) <= tolerance,
        f"F10: prompt_tokens is the exact count of the {len(messages)} messages sent, in "
        f"{model}'s tokenizer with OpenAI's chat framing (nothing injected, dropped or padded)",
        f"{expected} prompt tokens" + (f" (± {tolerance}, profile)" if tolerance else ""),
        _prompt_gap(prompt, messages, model),
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.case(
    "usage.completion-tokens-exact",
    title="completion_tokens is the exact count of the text returned",
    area="usage",
    faq=("F9",),
)
def test_completion_tokens_exact(model, client, profile, relay, baseline):
    baseline.require_served()
    ex = client.chat(_body(model, [{"role": "user", "content": LENGTHY}]))
    data = _served(ex, model, relay)
    _, _, usage = _usage(data, ex, relay)
    text = _content(data)
    if not text:
        pytest.skip(f"{model} returned no text to count (a refusal or a tool call)")
    expected = tokens.count_text(text, model)
    visible = visible_completion_tokens(usage)
    tolerance = profile.models.usage_tolerance_tokens
    require(
        abs(visible - expected) <= tolerance,
        f"F9: completion_tokens (reasoning tokens apart) is the exact count of the text "
        f"returned, in {model}'s tokenizer",
        f"{expected} completion tokens for the {len(text)} characters returned"
        + (f" (± {tolerance}, profile)" if tolerance else ""),
        f"{visible} ({visible - expected:+d}; usage {usage!r})",
        ex.curl,
        relay.secrets,
    )


def _stream_parts(ex: StreamExchange) -> tuple[str, list[dict[str, Any]]]:
    """The streamed text of choice 0 and every usage object the stream carried."""
    text: list[str] = []
    usages: list[dict[str, Any]] = []
    for chunk in ex.chunks():
        if isinstance(chunk.get("usage"), dict):
            usages.append(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and choice.get("index", 0) == 0:
                text.append(content)
    return "".join(text), usages


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.case(
    "usage.stream-matches-non-stream",
    title="Streamed usage (include_usage) counts the same prompt and the text streamed",
    area="usage",
    faq=("F9", "F4"),
)
def test_stream_usage_matches(model, client, profile, relay, baseline):
    baseline.require_served()
    body = _body(model, [{"role": "user", "content": LENGTHY}])
    plain = client.chat(body)
    plain_data = _served(plain, model, relay)
    plain_prompt, plain_completion, _ = _usage(plain_data, plain, relay)
    ex = client.stream({**body, "stream_options": {"include_usage": True}})
    require(
        ex.status == 200 and ex.cut_reason is None and ex.transport_error is None,
        f"{model} is streamed to its end",
        "HTTP 200 text/event-stream, read to the end",
        ex.describe() + (f"; {ex.transport_error}" if ex.transport_error else ""),
        ex.curl,
        relay.secrets,
    )
    text, usages = _stream_parts(ex)
    require(
        len(usages) == 1 and usage_numbers(usages[0]) is not None,
        "F9: a stream asked for its usage (stream_options.include_usage) carries it once",
        "one usage object with integer prompt_tokens and completion_tokens",
        f"{len(usages)} usage objects: {usages[:2]!r}",
        ex.curl,
        relay.secrets,
    )
    numbers = usage_numbers(usages[0])
    assert numbers is not None
    tolerance = profile.models.usage_tolerance_tokens
    require(
        numbers[0] == plain_prompt,
        "F9: the same request counts the same prompt tokens streamed or not",
        f"{plain_prompt} prompt tokens (the non-stream answer's)",
        f"{numbers[0]} in the stream's usage",
        ex.curl,
        relay.secrets,
    )
    expected = tokens.count_text(text, model)
    visible = visible_completion_tokens(usages[0])
    require(
        abs(visible - expected) <= tolerance,
        f"F9: the stream's completion_tokens is the exact count of the text streamed, in "
        f"{model}'s tokenizer",
        f"{expected} completion tokens" + (f" (± {tolerance}, profile)" if tolerance else ""),
        f"{visible} ({visible - expected:+d})",
        ex.curl,
        relay.secrets,
    )
    if text == _content(plain_data):
        require(
            numbers[1] == plain_completion,
            "F9: the same answer counts the same completion tokens streamed or not",
            f"{plain_completion} completion tokens (the non-stream answer's)",
            f"{numbers[1]} in the stream's usage",
            ex.curl,
            relay.secrets,
        )


@pytest.mark.parametrize("rung", ["short", "long"])
@pytest.mark.case(
    "usage.canary-ladder",
    title="Codes at the head, middle and tail of a conversation all reach the model",
    area="usage",
    faq=("F10",),
)
def test_canary_ladder(rung, client, profile, relay, baseline, tag):
    baseline.require_served()
    size = SHORT_RUNG_TOKENS
    if rung == "long":
        size = profile.models.usage_ladder_max_tokens
        if size <= SHORT_RUNG_TOKENS:
            pytest.skip(f"profile: models.usage_ladder_max_tokens = {size}, no longer rung")
    codes = canary_codes(3, random.Random(tag))
    messages = canary_conversation(codes, size, LADDER_MODEL)
    ex = client.chat(_body(LADDER_MODEL, messages, max_tokens=64))
    text = _content(_served(ex, LADDER_MODEL, relay))
    seen = codes_in(text)
    places = ("system message", "middle of the history", "last message")
    missing = [
        f"{where} ({code})" for where, code in zip(places, codes, strict=True) if code not in seen
    ]
    require(
        not missing,
        f"F10: the whole conversation reaches the model (a "
        f"{tokens.count_chat_prompt(messages, LADDER_MODEL)}-token prompt asking for the codes "
        "it carries); nothing is dropped, cut or replaced",
        f"all of {codes} in the answer",
        f"missing the code from the {', '.join(missing)}; answer {text[:300]!r}",
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.case(
    "usage.tokenizer-family",
    title="The prompt is counted in the claimed model's tokenizer family",
    area="usage",
    faq=("F8",),
)
def test_tokenizer_family(model, client, profile, relay, baseline):
    baseline.require_served()
    messages = [{"role": "user", "content": FAMILY_PROBE}]
    counts = family_counts(messages)
    claimed = tokens.encoding_name_for_model(model)
    tolerance = profile.models.usage_tolerance_tokens
    spread = max(counts.values()) - min(counts.values())
    if spread <= 2 * tolerance:
        pytest.skip(f"profile tolerance ±{tolerance} cannot tell families {counts} apart")
    ex = client.chat(_body(model, messages, max_tokens=8))
    prompt, _, _ = _usage(_served(ex, model, relay), ex, relay)
    matches = [enc for enc, count in counts.items() if abs(prompt - count) <= tolerance]
    require(
        claimed in matches,
        f"F8: a probe counted differently by each tokenizer family is counted as "
        f"{family_name(claimed)} counts it (the model named is the model served)",
        f"{counts[claimed]} prompt tokens ({claimed}; all: {counts})",
        f"{prompt}: "
        + (
            f"the {family_name(matches[0])} count: another family's model served it"
            if matches
            else "neither family's count (extra or missing prompt text)"
        ),
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.case(
    "usage.answer-model",
    title="The answer names the model asked for",
    area="usage",
    faq=("F8",),
)
def test_answer_model(model, client, profile, relay, baseline):
    baseline.require_served()
    ex = client.chat(_body(model, [{"role": "user", "content": "Say hello."}], max_tokens=8))
    answered = _served(ex, model, relay).get("model")
    snapshot_ok = profile.models.answer_model_snapshot_ok
    require(
        answered == model
        or (snapshot_ok and isinstance(answered, str) and is_snapshot_of(answered, model)),
        "F8: the answer's model is the model asked for"
        + (" or a dated snapshot of it" if snapshot_ok else ""),
        repr(model) + (f" or {model}-YYYY-MM-DD" if snapshot_ok else ""),
        repr(answered),
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("pair", list(TWINS))
@pytest.mark.case(
    "usage.models-differ",
    title="Two model names do not give the identical temperature-0 answer",
    area="usage",
    faq=("F8",),
    level="SHOULD",
)
def test_models_differ(pair, client, relay, baseline):
    baseline.require_served()
    first, second = TWINS[pair]
    body = _body(first, [{"role": "user", "content": LENGTHY}])
    answers = []
    for _ in range(2):
        ex = client.chat(body)
        answers.append(_content(_served(ex, first, relay)))
    if answers[0] != answers[1]:
        pytest.skip(
            f"{first} is not deterministic at temperature 0 here: the probe is inconclusive"
        )
    if tokens.count_text(answers[0], first) < 12:
        pytest.skip(f"{first}'s answer is too short to tell models apart: {answers[0]!r}")
    other = client.chat({**body, "model": second})
    text = _content(_served(other, second, relay))
    require(
        text != answers[0],
        f"F8: {first} and {second} are different models, so their temperature-0 answers to the "
        "same prompt differ (identical answers: one backend serves both names)",
        f"a {second} answer different from {first}'s",
        f"both answered {text[:300]!r}",
        other.curl,
        relay.secrets,
    )
