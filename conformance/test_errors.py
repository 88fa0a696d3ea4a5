"""errors: every status in the FAQ's table with an OpenAI-shaped JSON body, never HTML; the
upstream's errors pass through; browsers can call the relay (F5, F7, F12, F18)."""

from __future__ import annotations

import pytest

from relaygate.directives import directive
from relaygate.suite.checks import applicable, check_error, check_not_forwarded
from relaygate.suite.client import chat_body
from relaygate.suite.failures import require
from relaygate.suite.live import skip_outside_view


@pytest.mark.case(
    "errors.invalid-json",
    title="Malformed JSON is a 400 JSON error, not forwarded",
    area="errors",
    faq=("F5",),
)
def test_invalid_json(client, profile, tag, relay, baseline):
    # The 400 must be the malformed body's doing: a well-formed request is served.
    baseline.require_served()
    ex = client.request(
        "POST",
        "/v1/chat/completions",
        content=b'{"model": "gpt-4o", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    check_error(
        ex,
        profile,
        "invalid_json",
        "F5: a body that is not JSON is a 400 bad request",
        secrets=relay.secrets,
    )


@pytest.mark.case(
    "errors.missing-model", title="A request without a model is refused", area="errors", faq=("F5",)
)
def test_missing_model(client, profile, tag, relay, _journal, baseline):
    baseline.require_served()
    expectation = applicable(profile.expect("model_missing"))
    body = {"messages": [{"role": "user", "content": "hi " + directive(tag=tag)}]}
    ex = client.request("POST", "/v1/chat/completions", json=body)
    upstream_status = None
    if expectation.status_from_upstream:
        # A pass-through relay (per its profile): the upstream refuses, its answer comes back.
        if _journal is None:
            pytest.skip("needs the mock upstream's journal for the upstream's answer")
        entries = _journal.wait_entries(tag, count=1, timeout_s=2.0)
        upstream_status = entries[0].get("status") if entries else None
    elif _journal is not None:
        check_not_forwarded(
            _journal,
            tag,
            "a request without a model is not sent upstream",
            ex.curl,
            baseline=baseline,
        )
    check_error(
        ex,
        profile,
        "model_missing",
        "F5: a request without 'model' is a bad request",
        upstream_status=upstream_status,
        secrets=relay.secrets,
    )


@pytest.mark.parametrize(
    "path", ["/v1/chat/completion", "/v1/relaygate-nothing", "/v1/engines/x/y"]
)
@pytest.mark.case(
    "errors.unknown-path",
    title="An unknown path is a 404 JSON error (never HTML)",
    area="errors",
    faq=("F5", "F12", "F18"),
)
def test_unknown_path(path, client, profile, relay, baseline):
    # A relay that answers 404 to everything shows nothing about unknown paths.
    baseline.require_served()
    ex = client.request("POST", path, json=chat_body())
    check_error(
        ex, profile, "unknown_path", f"F12/F18: POST {path} is a JSON 404", secrets=relay.secrets
    )


@pytest.mark.case(
    "errors.wrong-method",
    title="A wrong method is a JSON error (never HTML)",
    area="errors",
    faq=("F5", "F18"),
)
def test_wrong_method(client, profile, relay, baseline):
    baseline.require_served()
    ex = client.request("GET", "/v1/chat/completions")
    check_error(
        ex,
        profile,
        "wrong_method",
        "F18: GET /v1/chat/completions is a JSON error",
        secrets=relay.secrets,
    )


@pytest.mark.case(
    "errors.body-too-large",
    title="An oversized body is a 413 JSON error",
    area="errors",
    faq=("F5",),
)
def test_body_too_large(client, profile, relay, baseline):
    baseline.require_served()
    limit = profile.http.body_limit_bytes
    if profile.http.body_limit_status is None or limit is None:
        pytest.skip("profile: this relay documents no request body limit")
    text = "x" * (limit + 1024)
    ex = client.request("POST", "/v1/chat/completions", json=chat_body(text=text))
    check_error(
        ex,
        profile,
        "body_too_large",
        f"F5: a body over {limit} bytes is refused with 413",
        secrets=relay.secrets,
    )


UPSTREAM = {
    "5xx-json": ("upstream_5xx_json", {"error": 500}),
    "503-json": ("upstream_5xx_json", {"error": 503}),
    "5xx-html": ("upstream_5xx_html", {"error": 500, "error_body": "html"}),
    "401-channel-key": ("upstream_auth", {"error": 401, "error_code": "invalid_api_key"}),
    "200-error-body": (
        "upstream_200_error",
        {"error": 200, "error_type": "server_error", "error_message": "upstream overloaded"},
    ),
}


@pytest.mark.parametrize("kind", list(UPSTREAM))
@pytest.mark.case(
    "errors.upstream-error",
    title="Upstream errors reach the client with the right status, as JSON",
    area="errors",
    faq=("F5", "F7", "F18"),
)
def test_upstream_error(kind, client, profile, _journal, tag, relay, baseline):
    if _journal is None:
        skip_outside_view(f"an upstream that answers {kind} on demand (the mock's error "
                          "directive)")  # fmt: skip
    upstream = _journal
    baseline.require_forwarding_seen()
    condition, fields = UPSTREAM[kind]
    ex = client.chat(chat_body(directive=directive(tag=tag, **fields)))
    status = int(fields["error"])
    # The status to compare is the upstream's only if the request got there.
    require(
        bool(upstream.wait_entries(tag)),
        "the request reaches the upstream, whose error is then relayed",
        "the request in the mock upstream's journal",
        f"nothing reached the upstream; the relay answered {ex.describe()}",
        ex.curl,
        relay.secrets,
    )
    check_error(
        ex,
        profile,
        condition,
        f"F5/F18: an upstream {kind} answer is relayed as the profile says",
        upstream_status=status,
        secrets=relay.secrets,
    )


@pytest.mark.case(
    "errors.cors-preflight",
    title="A CORS preflight is answered for browser clients",
    area="errors",
    faq=("F12",),
)
def test_cors(client, profile, relay):
    if not profile.http.cors:
        pytest.skip("profile: this relay documents no CORS support")
    ex = client.request(
        "OPTIONS",
        "/v1/chat/completions",
        key=None,
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    allow = ex.headers.get("access-control-allow-origin")
    headers = ex.headers.get("access-control-allow-headers", "").lower()
    require(
        200 <= ex.status < 300
        and allow in ("*", "http://localhost:3000")
        and ("authorization" in headers or headers == "*"),
        "F12: browser clients (ChatGPT Next Web) get a CORS preflight answer",
        "2xx with Access-Control-Allow-Origin and Authorization among the allowed headers",
        f"HTTP {ex.status}, allow-origin {allow!r}, allow-headers {headers!r}",
        ex.curl,
        relay.secrets,
    )
