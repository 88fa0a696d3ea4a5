"""models: routing by the exact, case-sensitive model name; no silent substitution; a model
list that tells the truth (F8, F17).

Live (no journal), what the key holder sees: the name the answer carries and the charge."""

from __future__ import annotations

import re

import pytest

from relaygate.directives import directive
from relaygate.provision import KeyState
from relaygate.suite.checks import (
    applicable,
    check_error,
    check_not_forwarded,
    is_chat_completion,
    key_in_state,
)
from relaygate.suite.client import chat_body
from relaygate.suite.failures import require
from relaygate.suite.ledger import live_chat

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-3.5-turbo")
CASE_VARIANTS = ("GPT-4o", "Gpt-4O", "GPT-4O", "gpt-4O", "GPT-3.5-TURBO")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.case(
    "models.exact-name-forwarded",
    title="The upstream receives exactly the model asked for",
    area="models",
    faq=("F8",),
)
def test_exact_name_forwarded(model, client, _journal, tag, relay, baseline):
    if _journal is None:
        _live_answer_names_model(model, client, relay)
        return
    upstream = _journal
    baseline.require_forwarding_seen()
    ex = client.chat(chat_body(model, directive=directive(tag=tag)))
    require(
        ex.status == 200, f"{model} is served", "HTTP 200", ex.describe(), ex.curl, relay.secrets
    )
    entries = upstream.wait_entries(tag)
    forwarded = [e.get("body", {}).get("model") for e in entries if isinstance(e.get("body"), dict)]
    require(
        forwarded == [model],
        "F8: the relay forwards the model name unchanged (no silent substitution)",
        f"one upstream request for {model!r}",
        f"upstream saw {forwarded!r}",
        ex.curl,
        relay.secrets,
    )
    answer = ex.json()
    answered = answer.get("model") if isinstance(answer, dict) else None
    actual = repr(answered)
    if isinstance(answer, dict) and "model" not in answer:
        # A missing field is not a wrong model: name the cause and what the answer holds.
        actual = f"no `model` field in the answer (its fields: {sorted(answer)!r})"
    require(
        answered == model,
        "the answer names the model that served it (the upstream received the exact name)",
        f"model {model!r}",
        actual,
        ex.curl,
        relay.secrets,
    )


def _live_answer_names_model(model, client, relay):
    """Live: the answer names the model asked for, or a dated snapshot of it (OpenAI answers
    ``gpt-4o`` with ``gpt-4o-2024-08-06``); never another model."""
    ex = client.chat(live_chat(model, max_tokens=8))
    require(
        is_chat_completion(ex), f"{model} is served", "HTTP 200", ex.describe(), ex.curl,
        relay.secrets,
    )  # fmt: skip
    answered = (ex.json() or {}).get("model")
    snapshot = re.compile(re.escape(model) + r"(-\d{4}(-\d{2}-\d{2})?)?")
    require(
        isinstance(answered, str) and snapshot.fullmatch(answered) is not None,
        "F8: the answer names the model asked for, or a dated snapshot of it (no silent "
        "substitution; what the upstream received shows only with --upstream-url)",
        f"{model!r} or {model + '-YYYY-MM-DD'!r}",
        repr(answered),
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("variant", CASE_VARIANTS)
@pytest.mark.case(
    "models.case-variant-refused",
    title="A case variant of a model name is refused, not remapped",
    area="models",
    faq=("F8", "F17"),
)
def test_case_variant_refused(variant, client, profile, tag, relay, _journal, baseline):
    expectation = applicable(profile.expect("no_channel"))
    # A relay that refuses every model shows nothing about case variants.
    baseline.require_served()
    ex = client.chat(chat_body(variant, directive=directive(tag=tag)))
    upstream_status = None
    if expectation.status_from_upstream:
        # A relay without a model table (its profile says the name is forwarded as given):
        # F8 then means the upstream gets exactly the variant, never the canonical name.
        if _journal is None:
            pytest.skip("needs the mock upstream's journal to see which name was forwarded")
        entries = _journal.wait_entries(tag, count=1, timeout_s=2.0)
        sent = [e["body"].get("model") for e in entries if isinstance(e.get("body"), dict)]
        require(
            sent == [variant],
            f"F8: {variant!r} is forwarded as given, never remapped (names are case-sensitive)",
            f"one upstream request for model {variant!r}",
            f"upstream requests for models {sent!r}",
            ex.curl,
            relay.secrets,
        )
        upstream_status = entries[0].get("status")
    elif _journal is not None:
        check_not_forwarded(
            _journal, tag, f"F8: {variant!r} is not routed upstream", ex.curl, baseline=baseline
        )
    error = check_error(
        ex,
        profile,
        "no_channel",
        f"F8: {variant!r} matches no channel (names are case-sensitive)",
        upstream_status=upstream_status,
        secrets=relay.secrets,
        values={"model": variant, "group": "default"},
    )
    if error is not None and profile.expect("no_channel").status == 503:
        message = str(error.get("message", ""))
        require(
            variant in message,
            "F17: the no-channel error names the model",
            f"a message containing {variant!r}",
            repr(message),
            ex.curl,
            relay.secrets,
        )


@pytest.mark.case(
    "models.case-variant-not-billed",
    title="A refused case variant is not billed",
    area="models",
    faq=("F8",),
)
def test_case_variant_not_billed(
    client, provision, profile, _journal, tag, relay, baseline, ledger
):
    if not profile.billing.applicable:
        pytest.skip(f"profile: {profile.billing.skip_reason}")
    ledger.require_billing_seen(baseline)
    key = key_in_state(lambda: provision.funded_key())
    if _journal is None:
        body = live_chat("GPT-4o")
    else:
        body = chat_body("GPT-4o", directive=directive(tag=tag, usage="100/100"))
    billed = ledger.bill(key, lambda: client.chat(body, key=key.key), expect_charge=False)
    ledger.require_free(
        billed, "F8: a case-variant model name is neither routed nor billed", relay.secrets
    )


#: At most this many listed ids are tried with a chat request (live: each costs a request).
LISTED_IDS_TRIED = 12
#: A model id is a name, not a pattern: a glob character or a blank names no model.
_NOT_A_NAME = re.compile(r"[*?\s]|^$")
#: Listed ids of models the chat endpoint does not serve by design (OpenAI's own list has
#: them): never tried with a chat request.
_NOT_CHAT = re.compile(r"embed|tts|whisper|dall-e|moderation|transcribe|image", re.IGNORECASE)
#: OpenAI's own refusal of a model its chat endpoint does not serve (a completions-only model
#: such as gpt-3.5-turbo-instruct, a Responses-only one such as o1-pro): the upstream's word,
#: passed through, that the id is a model but not a chat model. A name list cannot keep up
#: with new families; this answer can. A relay's own refusal (unknown model, no channel) is
#: not this, and still fails the case.
_NOT_CHAT_REFUSAL = re.compile(
    r"not a chat model|not supported in the v1/chat/completions endpoint"
    r"|only supported in v1/responses",
    re.IGNORECASE,
)


def _refused_as_not_chat(answer) -> bool:
    error = answer.error or {}
    message = error.get("message") if isinstance(error, dict) else None
    return (
        answer.status in (400, 404)
        and isinstance(message, str)
        and bool(_NOT_CHAT_REFUSAL.search(message))
    )


@pytest.mark.case(
    "models.list-usable",
    title="/v1/models lists models, and every listed id works",
    area="models",
    faq=("F8", "F17"),
    spec="RELAY_SPEC §10.10",
)
def test_models_list(client, profile, tag, relay, _journal):
    ex = client.request("GET", "/v1/models")
    require(
        ex.status == 200,
        "GET /v1/models answers",
        "HTTP 200",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    data = ex.json() or {}
    ids = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)]
    require(
        bool(ids),
        "the list names the usable models",
        "at least one model id",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    if profile.models.list_shape == "object_list":
        require(
            data.get("object") == "list",
            "the list is OpenAI-shaped",
            '"object": "list"',
            repr(data.get("object")),
            ex.curl,
            relay.secrets,
        )
    patterns = [m for m in ids if not isinstance(m, str) or _NOT_A_NAME.search(m)]
    require(
        not patterns,
        "F17: every id /v1/models lists is a model name a client can send (a pattern such as "
        "'gpt-4*' names no model: the chat endpoint refuses it)",
        "ids without '*', '?' or blanks",
        f"listed {patterns!r}",
        ex.curl,
        relay.secrets,
    )
    # Every listed id is tried once, up to a bound; live, with max_tokens 1 (priced).
    served = 0
    for model_id in [m for m in ids if not _NOT_CHAT.search(m)][:LISTED_IDS_TRIED]:
        if _journal is None:
            body = live_chat(model_id, max_tokens=1)
        else:
            body = chat_body(model_id, directive=directive(tag=tag))
        answer = client.chat(body)
        if not is_chat_completion(answer) and _refused_as_not_chat(answer):
            continue  # the upstream says: a model, not a chat model
        require(
            is_chat_completion(answer),
            "every model /v1/models lists can be used (no case or alias drift)",
            f"HTTP 200 with a chat completion for {model_id!r}",
            answer.describe(),
            answer.curl,
            relay.secrets,
        )
        served += 1
    if not served:
        # Nothing was tried with an answer to judge: no verdict (never a vacuous pass).
        pytest.skip(
            f"none of the listed ids {ids[:LISTED_IDS_TRIED]!r} is a chat model (by name, or "
            "by the upstream's own refusal): no listed id to try with a chat request"
        )
    if profile.models.list_shape != "object_list":
        pytest.xfail("deviation: " + (profile.deviation("models.list_shape") or "list shape"))


def _skip_without_allow_lists(profile):
    """A relay whose profile says it has no per-key model allow-list (with its reason) skips
    with that reason, not with "cannot provision the key"."""
    restricted = profile.expect("model_not_allowed")
    if not restricted.applicable:
        pytest.skip(f"profile: {restricted.skip_reason}")


@pytest.mark.case(
    "models.list-exact",
    title="/v1/models lists exactly the models the key can use",
    area="models",
    faq=("F17",),
)
def test_models_list_exact(client, provision, profile, relay):
    _skip_without_allow_lists(profile)
    allowed = ["gpt-4o-mini"]
    # A relay without model-restricted keys: skip with the profile's reason, before asking the
    # provisioner for a key that cannot exist.
    applicable(profile.expect("model_not_allowed"))
    key = key_in_state(lambda: provision.key_with(KeyState.MODEL_RESTRICTED, models=allowed))
    ex = client.request("GET", "/v1/models", key=key.key)
    ids = sorted(m.get("id") for m in (ex.json() or {}).get("data", []) if isinstance(m, dict))
    require(
        ids == allowed,
        "a key with a model allow-list sees exactly those models",
        allowed,
        ids,
        ex.curl,
        (*relay.secrets, key.key),
    )


@pytest.mark.case(
    "models.allow-list",
    title="A key's model allow-list is enforced (403), before the upstream",
    area="models",
    faq=("F8",),
    spec="RELAY_SPEC §10.8",
)
def test_allow_list(client, provision, profile, tag, relay, _journal, baseline):
    _skip_without_allow_lists(profile)
    allowed = ["gpt-4o-mini"]
    # A relay without model-restricted keys: skip with the profile's reason, before asking the
    # provisioner for a key that cannot exist.
    applicable(profile.expect("model_not_allowed"))
    key = key_in_state(lambda: provision.key_with(KeyState.MODEL_RESTRICTED, models=allowed))
    forbidden = next((m for m in MODELS if m not in allowed), None)
    if not allowed or forbidden is None:
        pytest.skip("the restricted key allows no model or every model")
    ok = client.chat(chat_body(allowed[0], directive=directive(tag=tag + ".ok")), key=key.key)
    require(
        is_chat_completion(ok),
        "an allowed model works",
        "HTTP 200 with a chat completion",
        ok.describe(),
        ok.curl,
        (*relay.secrets, key.key),
    )
    ex = client.chat(chat_body(forbidden, directive=directive(tag=tag)), key=key.key)
    if _journal is not None:
        check_not_forwarded(
            _journal,
            tag,
            "a model outside the allow-list is not sent upstream",
            ex.curl,
            baseline=baseline,
        )
    check_error(
        ex,
        profile,
        "model_not_allowed",
        f"a key limited to {allowed} may not use {forbidden}",
        secrets=(*relay.secrets, key.key),
    )


@pytest.mark.case(
    "models.unknown-id",
    title="GET /v1/models/{unknown} is a model_not_found error",
    area="models",
    faq=("F17", "F5"),
    spec="RELAY_SPEC §10.12",
)
def test_unknown_model_id(client, profile, relay, baseline):
    # A relay that answers 404 to everything shows nothing about unknown ids.
    baseline.require_served()
    ex = client.request("GET", "/v1/models/relaygate-no-such-model")
    check_error(
        ex,
        profile,
        "models_unknown_id",
        "an unknown model id is a model_not_found error",
        secrets=relay.secrets,
    )
