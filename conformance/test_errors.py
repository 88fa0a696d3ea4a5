"""errors: every status in the FAQ's table with an OpenAI-shaped JSON body, never HTML; the
upstream's errors pass through; browsers can call the relay (F5, F7, F12, F18)."""

from __future__ import annotations

import orjson
import pytest

from relaygate.directives import directive
from relaygate.suite.checks import applicable, check_error, check_not_forwarded
from relaygate.suite.client import chat_body
from relaygate.suite.failures import require
from relaygate.suite.keepalive import RawRequest, proxied, two_on_one_connection
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


#: Paths no relay serves: inside the API prefix, then outside it (a wrong base URL, F12).
UNKNOWN_PATHS = [
    "/v1/chat/completion",
    "/v1/relaygate-nothing",
    "/v1/engines/x/y",
    "/relaygate-nothing",
    "/v2/chat/completions",
]
#: Every method but POST (errors.unknown-path) and OPTIONS (CORS: errors.cors-preflight), on an
#: unknown path inside and outside /v1.
UNKNOWN_PATH_METHODS = [
    (method, path)
    for path in ("/v1/relaygate-nothing", "/relaygate-nothing")
    for method in ("GET", "PUT", "PATCH", "DELETE", "HEAD")
]
#: Methods a known path does not serve (GET /v1/chat/completions is errors.wrong-method).
WRONG_METHODS = [
    ("PUT", "/v1/chat/completions"),
    ("PATCH", "/v1/chat/completions"),
    ("DELETE", "/v1/chat/completions"),
    ("HEAD", "/v1/chat/completions"),
    ("GET", "/v1/embeddings"),
    ("PUT", "/v1/models"),
    ("DELETE", "/v1/models"),
]


def _check_routing_error(ex, path, profile, condition, requirement, relay):
    """The answer to a request no route serves is the profile's JSON error.

    HEAD has no body (RFC 9110 §9.3.2): its answer is judged by status and Content-Type only,
    the headers a GET would carry. A path outside /v1 on a relay whose profile gives those
    paths to its web UI (``http.non_api_paths = "web-ui"``, one-api's SPA) only has to be
    answered, not by a server error: an accepted deviation, never a pass.
    """
    __tracebackhide__ = True
    method = ex.method
    if not path.startswith("/v1/") and profile.http.non_api_paths == "web-ui":
        require(
            0 < ex.status < 500,
            f"{method} {path} (outside /v1) gets the relay's web UI, not a server error",
            "an answer below 500 (one-api: its web UI, 200 text/html)",
            ex.describe(),
            ex.curl,
            relay.secrets,
        )
        pytest.xfail("deviation: " + (profile.deviation("http.non_api_paths") or "web UI"))
    if method != "HEAD":
        check_error(ex, profile, condition, requirement, secrets=relay.secrets)
        return
    want = applicable(profile.expect(condition)).status
    require(
        want is None or ex.status == want,
        requirement,
        f"HTTP {want}",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
    require(
        ex.content_type in ("", "application/json"),
        f"{requirement} (HEAD announces the JSON error a GET would get, never an HTML page)",
        "Content-Type application/json (or none)",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )


@pytest.mark.parametrize("path", UNKNOWN_PATHS)
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
    _check_routing_error(
        ex, path, profile, "unknown_path", f"F12/F18: POST {path} is a JSON 404", relay
    )


@pytest.mark.parametrize(("method", "path"), UNKNOWN_PATH_METHODS)
@pytest.mark.case(
    "errors.unknown-path-any-method",
    title="An unknown path is a 404 JSON error whatever the method",
    area="errors",
    faq=("F5", "F12", "F18"),
)
def test_unknown_path_any_method(method, path, client, profile, relay, baseline):
    baseline.require_served()
    body = chat_body() if method in ("PUT", "PATCH") else None
    ex = client.request(method, path, **({"json": body} if body is not None else {}))
    _check_routing_error(
        ex, path, profile, "unknown_path", f"F12/F18: {method} {path} is a JSON 404", relay
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


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
@pytest.mark.case(
    "errors.wrong-method-any",
    title="Every method a known path does not serve is a JSON error",
    area="errors",
    faq=("F5", "F18"),
)
def test_wrong_method_any(method, path, client, profile, relay, baseline):
    baseline.require_served()
    body = chat_body() if method in ("PUT", "PATCH") else None
    ex = client.request(method, path, **({"json": body} if body is not None else {}))
    _check_routing_error(
        ex, path, profile, "wrong_method", f"F18: {method} {path} is a JSON error", relay
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


#: The error answers after which the connection must still serve the next request.
CONNECTION_KINDS = ("401-bad-key", "404-unknown-path", "400-invalid-json", "500-upstream")


@pytest.mark.parametrize("kind", CONNECTION_KINDS)
@pytest.mark.case(
    "errors.connection-survives-error",
    title="After an error answer, the same connection serves the next request",
    area="errors",
    faq=("F5", "F16"),
)
def test_connection_survives_error(kind, client, relay, tag, _journal, baseline):
    # Two requests on one HTTP/1.1 connection (relaygate.suite.keepalive): the error, then
    # GET /v1/models. Closing after an answer that said "Connection: close" is legal; closing
    # after one that promised keep-alive makes the client's next request fail (RFC 9112 §9.6).
    if proxied(relay.base_url):
        pytest.skip(
            "the relay is reached through an HTTP proxy (HTTPS_PROXY/HTTP_PROXY): "
            "the keep-alive probe speaks to the relay directly"
        )
    baseline.require_served()
    headers = {**client.extra_headers, "Content-Type": "application/json"}
    auth = {"Authorization": f"Bearer {relay.key}"}
    body = orjson.dumps(chat_body())
    if kind == "401-bad-key":
        first = RawRequest(
            "POST",
            "/v1/chat/completions",
            {**headers, "Authorization": "Bearer sk-relaygate-no-such-key"},
            body,
        )
    elif kind == "404-unknown-path":
        first = RawRequest("POST", "/v1/relaygate-nothing", {**headers, **auth}, body)
    elif kind == "400-invalid-json":
        first = RawRequest(
            "POST",
            "/v1/chat/completions",
            {**headers, **auth},
            b'{"model": "gpt-4o", "messages": [',
        )
    else:
        if _journal is None:
            skip_outside_view("an upstream that answers 500 on demand (the mock's error directive)")
        baseline.require_forwarding_seen()
        upstream_500 = chat_body(directive=directive(tag=tag, error=500))
        first = RawRequest(
            "POST", "/v1/chat/completions", {**headers, **auth}, orjson.dumps(upstream_500)
        )
    second = RawRequest("GET", "/v1/models", {**client.extra_headers, **auth})
    if client.meter is not None:
        client.meter.before(first.method, first.path, first.body)
    pair = two_on_one_connection(
        relay.base_url,
        first,
        second,
        timeout_s=client.timeout_s,
        max_bytes=client.max_bytes,
        secrets=relay.secrets,
    )
    if client.meter is not None:
        client.meter.after(first.method, first.path, first.body, pair.first)
    if pair.first.cut_reason is not None or pair.first.status < 400:
        pytest.skip(
            f"no complete error answer to judge the connection after: "
            f"{pair.first.describe()} (errors.* judge the answer itself)"
        )
    if pair.close_announced:
        return  # the relay said it closes the connection: legal, and the rule held
    require(
        pair.dropped is None,
        f"after its HTTP {pair.first.status} answer ({kind}), which did not say "
        "'Connection: close', the relay keeps the connection: the client's next request on it "
        "is answered (a silent close or reset fails that request)",
        "an answer to GET /v1/models on the same connection",
        f"the next request failed: {pair.dropped}",
        pair.curl,
        relay.secrets,
    )
    assert pair.second is not None
    if pair.second.cut_reason is not None:
        pytest.skip(f"the follow-up answer was cut: {pair.second.describe()}")


# The upstream's error object, field by field, so what reaches the client can be compared
# with what the upstream sent (F5: a 500 is the upstream's; RELAY_SPEC §4: the error object is
# forwarded, one-api adding only a request-id suffix to its message).
UPSTREAM = {
    "5xx-json": (
        "upstream_5xx_json",
        {
            "error": 500,
            "error_type": "server_error",
            "error_code": "upstream_internal",
            "error_message": "The server had an error while processing your request (rg-500).",
        },
    ),
    "503-json": (
        "upstream_5xx_json",
        {
            "error": 503,
            "error_type": "server_error",
            "error_code": "engine_overloaded",
            "error_message": "The engine is currently overloaded, please try again (rg-503).",
        },
    ),
    "4xx-json": (
        "upstream_4xx",
        {
            "error": 400,
            "error_type": "invalid_request_error",
            "error_code": "invalid_value",
            "error_param": "messages",
            "error_message": "Invalid value for 'messages[0].content' (rg-400).",
        },
    ),
    "5xx-html": ("upstream_5xx_html", {"error": 500, "error_body": "html"}),
    "401-channel-key": ("upstream_auth", {"error": 401, "error_code": "invalid_api_key"}),
    "200-error-body": (
        "upstream_200_error",
        {"error": 200, "error_type": "server_error", "error_message": "upstream overloaded"},
    ),
}


def upstream_error_object(fields: dict[str, object]) -> dict[str, object] | None:
    """The error object the mock upstream sends for a directive's fields (None: not JSON, or
    left to the mock's defaults)."""
    if "error_message" not in fields or fields.get("error_body", "openai") != "openai":
        return None
    return {
        "message": fields["error_message"],
        "type": fields.get("error_type"),
        "code": fields.get("error_code"),
        "param": fields.get("error_param"),
    }


@pytest.mark.parametrize("kind", list(UPSTREAM))
@pytest.mark.case(
    "errors.upstream-error",
    title="Upstream errors reach the client with the right status and their own error, as JSON",
    area="errors",
    faq=("F5", "F7", "F18"),
    spec="RELAY_SPEC §4",
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
    # Where the profile passes the upstream's error through (F22 for 4xx), its type, code,
    # param and message are compared with what the mock sent.
    check_error(
        ex,
        profile,
        condition,
        f"F5/F18: an upstream {kind} answer is relayed as the profile says",
        upstream_status=status,
        upstream_error=upstream_error_object(fields),
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
