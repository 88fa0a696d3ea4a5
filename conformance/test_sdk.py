"""sdk: the official OpenAI Python SDK works against the relay, and raises the error class
each status stands for."""

from __future__ import annotations

import json

import pytest

from relaygate.directives import directive
from relaygate.provision import KeyState
from relaygate.suite.checks import key_in_state
from relaygate.suite.client import curl_command, sdk_http_client
from relaygate.suite.failures import fail, require
from relaygate.suite.live import repeat
from relaygate.suite.usage_probes import is_snapshot_of

openai = pytest.importorskip(
    "openai", reason="the openai SDK is not installed (pip install openai)"
)


@pytest.fixture
def sdk(relay, profile, client):
    """``sdk(key)``: an OpenAI SDK client for the relay, with the profile's and the run's extra
    headers (a relay that routes by header, e.g. Portkey, needs them on every request). Its
    requests go through the suite client's meter (live mode: counted, priced, budgeted)."""
    headers = {**profile.http.extra_headers, **relay.extra_headers}

    made = []

    def make(key):
        made.append(
            openai.OpenAI(
                base_url=relay.base_url + "/v1",
                api_key=key or "sk-none",
                max_retries=0,
                timeout=relay.timeout_s,
                # a total deadline and a byte cap (the SDK's timeout is per read)
                http_client=sdk_http_client(relay.timeout_s, relay.max_bytes, meter=client.meter),
                default_headers=headers,
            )
        )
        return made[-1]

    yield make
    for sdk_client in made:
        sdk_client.close()


def _msg(tag, relay, **fields):
    """The prompt: tagged for the mock upstream's journal; live (a model obeys no directive), a
    short prompt with one right answer, which a model ends on its own (finish "stop")."""
    if relay.upstream_url is None:
        return [{"role": "user", "content": repeat("hello")}]
    return [{"role": "user", "content": "hello " + directive(tag=tag, **fields)}]


def _curl(relay, profile, key, path="/v1/chat/completions", body=None, method="POST"):
    """The request an SDK call sends, as a curl (the failure's "Reproduce" line)."""
    headers = {**profile.http.extra_headers, **relay.extra_headers}
    headers["Authorization"] = f"Bearer {key or 'sk-none'}"
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    return curl_command(method, relay.base_url + path, headers, data)


@pytest.mark.case("sdk.chat", title="SDK: chat.completions.create works", area="sdk", faq=("F15",))
def test_chat(relay, profile, funded_key, tag, sdk):
    body = {"model": "gpt-4o", "messages": _msg(tag, relay)}
    curl = _curl(relay, profile, funded_key, body=body)
    answer = _call(lambda: sdk(funded_key).chat.completions.create(**body), curl, relay)
    # OpenAI names a dated snapshot for an alias (gpt-4o-2024-08-06): the profile says if
    # that counts as the model asked for (as in usage.answer-model).
    snapshot_ok = profile.models.answer_model_snapshot_ok
    require(
        bool(answer.choices)
        and answer.choices[0].message.content is not None
        and (
            answer.model == "gpt-4o"
            or (snapshot_ok and is_snapshot_of(answer.model or "", "gpt-4o"))
        )
        and answer.usage is not None,
        "the SDK parses the relay's answer: a message, the model asked for, the usage",
        "choices[0].message, model 'gpt-4o'"
        + (" (or a dated snapshot)" if snapshot_ok else "")
        + ", usage",
        f"model {answer.model!r}, usage {answer.usage!r}, choices {answer.choices!r}"[:500],
        curl,
        relay.secrets,
    )


@pytest.mark.case("sdk.stream", title="SDK: a stream iterates to the end", area="sdk", faq=("F4",))
def test_stream(relay, profile, funded_key, tag, sdk):
    body = {
        "model": "gpt-4o",
        "messages": _msg(tag, relay, chunks=4),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if relay.upstream_url is None:
        body["max_tokens"] = 50  # bounds the cost; a repeated word ends well before it
    curl = _curl(relay, profile, funded_key, body=body)

    def read():
        text, usage, finish = "", None, None
        for chunk in sdk(funded_key).chat.completions.create(**body):
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        return text, usage, finish

    text, usage, finish = _call(read, curl, relay)
    require(
        bool(text) and finish == "stop" and usage is not None,
        "the SDK streams text, a finish_reason and the usage",
        "text, stop, usage",
        f"{text!r}, {finish!r}, {usage!r}",
        curl,
        relay.secrets,
    )


def _call(call, curl, relay):
    """Run an SDK call that must succeed; an SDK error is a failure with the request's curl."""
    try:
        return call()
    except openai.APIError as exc:
        status = getattr(exc, "status_code", None)
        fail(
            "the official SDK completes the call",
            "an answer",
            f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "") + f": {exc}",
            curl,
            relay.secrets,
        )


def _raw_status(ex, status, condition, relay):
    """The relay answers ``condition`` with ``status`` over plain HTTP: the SDK case then checks
    the SDK's class for what the relay really sent, not the SDK's own status mapping."""
    __tracebackhide__ = True
    require(
        ex.status == status,
        f"{condition} is answered with HTTP {status} (checked over plain HTTP first)",
        f"HTTP {status}",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )


def _raises(cls, call, requirement, relay, curl):
    try:
        call()
    except openai.APIStatusError as exc:
        require(
            isinstance(exc, cls),
            requirement,
            cls.__name__,
            f"{type(exc).__name__} (HTTP {exc.status_code})",
            curl,
            relay.secrets,
        )
        return
    except openai.APIError as exc:
        fail(requirement, cls.__name__, f"{type(exc).__name__}: {exc}", curl, relay.secrets)
    fail(requirement, cls.__name__, "no error", curl, relay.secrets)


@pytest.mark.case(
    "sdk.authentication-error",
    title="SDK: a bad key raises AuthenticationError",
    area="sdk",
    faq=("F15",),
)
def test_authentication_error(relay, profile, tag, sdk, client, baseline):
    # The SDK's class for the status the profile documents for an unknown key (401 by default;
    # a relay documented to answer 403 must then raise PermissionDeniedError).
    status = profile.expect("invalid_key").status
    error_class = {401: openai.AuthenticationError, 403: openai.PermissionDeniedError}.get(status)
    if error_class is None:
        pytest.skip(f"profile: an unknown key is answered with {status}, not 401/403")
    bad_key = "sk-relaygateUnknownKey000000000000000000000000000000"
    body = {"model": "gpt-4o", "messages": _msg(tag, relay)}
    # A relay that refuses every key raises AuthenticationError for every key: the funded key
    # must be served before an unknown key's refusal means anything.
    baseline.require_served()
    _raw_status(client.chat(body, key=bad_key), status, "an unknown key", relay)
    _raises(
        error_class,
        lambda: sdk(bad_key).chat.completions.create(**body),
        f"a {status} for an unknown key surfaces as openai.{error_class.__name__}",
        relay,
        _curl(relay, profile, bad_key, body=body),
    )


@pytest.mark.case(
    "sdk.permission-denied-error",
    title="SDK: an exhausted token raises PermissionDeniedError",
    area="sdk",
    faq=("F20",),
)
def test_permission_denied(relay, provision, profile, tag, sdk, client, baseline):
    exhausted = profile.expect("token_quota_exhausted")
    if not exhausted.applicable:
        pytest.skip(f"profile: {exhausted.skip_reason}")
    if exhausted.status != 403:
        pytest.skip("profile: exhausted tokens are not refused with 403 by this relay")
    key = key_in_state(lambda: provision.key_with(KeyState.TOKEN_EXHAUSTED))
    body = {"model": "gpt-4o", "messages": _msg(tag, relay)}
    baseline.require_served()
    _raw_status(client.chat(body, key=key.key), 403, "an exhausted token", relay)
    _raises(
        openai.PermissionDeniedError,
        lambda: sdk(key.key).chat.completions.create(**body),
        "a 403 surfaces as openai.PermissionDeniedError",
        relay,
        _curl(relay, profile, key.key, body=body),
    )


@pytest.mark.case(
    "sdk.not-found-error",
    title="SDK: an unknown model id raises NotFoundError",
    area="sdk",
    faq=("F17",),
)
def test_not_found(relay, funded_key, profile, sdk, client, baseline):
    if profile.expect("models_unknown_id").status != 404:
        pytest.skip("profile: unknown model ids are not answered with 404 by this relay")
    # A relay (or a plain web server) that answers 404 to everything proves nothing here.
    baseline.require_served()
    _raw_status(
        client.request("GET", "/v1/models/relaygate-no-such-model"),
        404,
        "an unknown model id",
        relay,
    )
    _raises(
        openai.NotFoundError,
        lambda: sdk(funded_key).models.retrieve("relaygate-no-such-model"),
        "a 404 surfaces as openai.NotFoundError",
        relay,
        _curl(relay, profile, funded_key, "/v1/models/relaygate-no-such-model", method="GET"),
    )


@pytest.mark.case(
    "sdk.rate-limit-error", title="SDK: a 429 raises RateLimitError", area="sdk", faq=("F5",)
)
def test_rate_limit(relay, profile, provision, funded_key, _journal, tag, sdk, client, baseline):
    if _journal is None:
        _live_rate_limit(relay, profile, provision, sdk, client, baseline)
        return
    body = {"model": "gpt-4o", "messages": _msg(tag, relay, error=429, retry_after="1")}
    baseline.require_served()
    raw = {**body, "messages": _msg(tag + ".raw", relay, error=429, retry_after="1")}
    _raw_status(client.chat(raw), 429, "an upstream 429", relay)
    _raises(
        openai.RateLimitError,
        lambda: sdk(funded_key).chat.completions.create(**body),
        "a 429 surfaces as openai.RateLimitError",
        relay,
        _curl(relay, profile, funded_key, body=body),
    )


#: Requests a rate-limited key gets before the live case gives up waiting for its 429.
LIVE_429_ATTEMPTS = 30


def _live_rate_limit(relay, profile, provision, sdk, client, baseline):
    """Live: no upstream answers 429 on demand, but a rate-limited key (the relay's own
    limiter) does once it is over its limit: then the SDK must raise RateLimitError."""
    if not profile.rate_limit.relay_limiter:
        pytest.skip("profile: this relay has no relay-side rate limiter, and live mode cannot "
                    "make the upstream answer 429")  # fmt: skip
    key = key_in_state(lambda: provision.key_with(KeyState.RATE_LIMITED, rate_limit="2/1s"))
    baseline.require_served()
    # One token each: the requests come as fast as the relay answers them.
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello."}]}
    body["max_tokens"] = 1
    statuses = []
    for _ in range(LIVE_429_ATTEMPTS):
        ex = client.chat(body, key=key.key)
        statuses.append(ex.status)
        if ex.status == 429:
            break
    if statuses[-1] != 429:
        # Whether the limit holds is rate_limits.429-shape's rule; this case maps a 429.
        pytest.skip(f"the rate-limited key got no 429 in {len(statuses)} requests (statuses "
                    f"{sorted(set(statuses))}): no 429 to see the SDK raise")  # fmt: skip
    _raises(
        openai.RateLimitError,
        lambda: sdk(key.key).chat.completions.create(**body),
        "a 429 surfaces as openai.RateLimitError",
        relay,
        _curl(relay, profile, key.key, body=body),
    )


#: A max_tokens over gpt-4o's output cap (16384), small enough for a key's balance to cover
#: the relay's pre-charge estimate.
LIVE_OVER_CAP_TOKENS = 100_000


@pytest.mark.case(
    "sdk.bad-request-error",
    title="SDK: an over-cap max_tokens raises BadRequestError",
    area="sdk",
    faq=("F22",),
)
def test_bad_request(relay, profile, funded_key, _journal, tag, sdk, client, baseline):
    if _journal is None:
        # Live: no journal shows the upstream's cap, but gpt-4o writes at most 16384 tokens.
        messages = [{"role": "user", "content": "Say hello."}]
        body = {"model": "gpt-4o", "messages": messages, "max_tokens": LIVE_OVER_CAP_TOKENS}
        raw = body
    else:
        body = {"model": "gpt-4", "messages": _msg(tag, relay), "max_tokens": 9000}
        raw = {**body, "messages": _msg(tag + ".raw", relay)}
    baseline.require_served()
    raw_answer = client.chat(raw)
    if _journal is None and raw_answer.status == 403:
        pytest.skip(f"the key's balance does not cover max_tokens {LIVE_OVER_CAP_TOKENS}: the "
                    "relay refused it with 403 before the cap could be judged")  # fmt: skip
    _raw_status(raw_answer, 400, "an over-cap max_tokens", relay)
    _raises(
        openai.BadRequestError,
        lambda: sdk(funded_key).chat.completions.create(**body),
        "a 400 surfaces as openai.BadRequestError",
        relay,
        _curl(relay, profile, funded_key, body=body),
    )
