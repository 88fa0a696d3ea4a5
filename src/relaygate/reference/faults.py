"""Fault switches: each one makes the reference relay break exactly one rule.

The registry is data: the suite's self-tests read it to prove that every conformance case
fails against at least one faulty relay. Switch faults on with ``--fault NAME`` (repeatable)
or ``PUT /api/admin/settings {"faults": [...]}``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["FAULTS", "UnknownFaultError", "validate_faults"]

#: fault name -> the rule it breaks (one line).
FAULTS: dict[str, str] = {
    "buffer_streams": "streams are collected whole before anything is sent (no pass-through)",
    "bill_failed": "upstream errors and transport failures are charged the estimate, not refunded",
    "fold_model_case": "model names are lowercased for routing, forwarding and billing (F8)",
    "drop_done": "streams never end with data: [DONE]",
    "html_404": "unknown paths answer text/html instead of a JSON error (F18)",
    "wrong_quota_status": "exhausted token/user quota answers 429 instead of 403 (F5, F20, F21)",
    "forward_client_key": "the client's own key is also sent upstream (X-Api-Key header)",
    "ignore_rate_limit": "the per-key rate limit is never enforced",
    "racy_billing": "balances are read-modified-written across an await: lost updates, overdraw",
    "fake_finish_reason": "a broken stream gets an invented finish_reason 'stop' and [DONE]",
    "drop_retry_after": "429 answers lose their Retry-After / retry-after-ms headers",
    "rewrite_429": "an upstream 429 reaches the client as a 500",
    "unknown_key_403": "an unknown key is refused with 403 instead of 401 (F15)",
    "same_auth_message": "every 401 carries one generic message and code (F15)",
    "ignore_expiry": "expired keys are accepted (F15)",
    "forward_before_auth": (
        "requests are sent upstream before the key is checked: a refused key still costs the "
        "channel (the client still gets the right 401)"
    ),
    "leak_channel_key": "upstream error messages include the channel's API key",
    "no_usage_chunk": "the usage chunk is never forwarded, even when the client asked for it",
    "always_usage_chunk": "the usage chunk is forwarded even when the client did not ask for it",
    "substitute_model": "gpt-4o requests are forwarded upstream as gpt-4o-mini",
    "downgrade_models": (
        "gpt-4, gpt-4o-mini and gpt-3.5-turbo requests are forwarded upstream as a cheaper model"
    ),
    "clamp_max_tokens": "max_tokens is capped at 1024 before forwarding",
    "no_cors": "no CORS headers and no OPTIONS preflight answer (F12)",
    "no_body_limit": "request bodies of any size are accepted (no 413)",
    "accept_query_key": "API keys are accepted from the ?key= query parameter",
    "retry_4xx": "upstream 4xx answers are retried (on another channel or the same one)",
    "round_billing": "charges are rounded half-to-even instead of rounded up (F9)",
    "ignore_completion_ratio": "completion tokens are priced like prompt tokens (F9)",
    "ignore_group_ratio": "the user's group ratio is left out of the charge (F9)",
    "bearer_case_sensitive": "the Bearer scheme is matched case-sensitively, against RFC 7235",
    "same_quota_message": "token- and user-quota exhaustion share one message and code",
    "list_all_models": "/v1/models ignores the allow-list and lists a model no channel serves",
    "ignore_allow_list": "a key's model allow-list is not enforced",
    "unknown_model_200": "/v1/models/{unknown} answers HTTP 200 with an error object, not 404",
    "crash_on_bad_json": "a body that is not JSON gets a 500 instead of a 400",
    "missing_model_503": "a request without a model gets the 503 no-channel error, not a 400",
    "html_405": "a wrong method on a known path answers text/html instead of a JSON error",
    "html_404_outside_v1": "unknown paths outside /v1 answer text/html instead of a JSON 404",
    "html_404_non_post": "unknown paths answer text/html to every method but POST",
    "html_405_non_get": "a wrong method other than GET on a known path answers text/html",
    "reset_after_error": (
        "the connection is closed right after every error answer to a request received whole, "
        "which still promises keep-alive (no Connection: close)"
    ),
    "list_model_patterns": "/v1/models also lists the pattern 'gpt-4*', which no request can use",
    "passthrough_html_errors": "upstream error answers with an HTML body are relayed as HTML",
    "pass_200_error": "an upstream 200 carrying an error object is relayed as a 200, not a 502",
    # Response objects and upstream errors as the client receives them (issue #13).
    "extra_response_fields": (
        "answers carry vendor fields OpenAI never sends: at the top level, in each choice, in "
        "its message or delta, and in usage"
    ),
    "none_strings": (
        "JSON nulls in answers become the string 'None' (finish_reason mid-stream, logprobs, "
        "a tool-call message's content)"
    ),
    "prefix_upstream_errors": "upstream error messages reach the client prefixed 'upstream: '",
    "limiter_429_for_upstream": (
        "an upstream 429 is answered with the relay's own rate-limit error (its limiter's "
        "message, type and code; the upstream's Retry-After kept)"
    ),
    "normalize_finish_reason": "every non-null finish_reason is rewritten to 'stop'",
    "drop_finish_reason": "every finish_reason is forwarded as null, 'stop' included",
    "mask_upstream_5xx": "an upstream 5xx becomes a generic 502: its status and error are lost",
    "passthrough_upstream_auth": (
        "an upstream 401/403 (the channel key refused) reaches the client as its own key's 401"
    ),
    "drop_tool_calls": "tool_calls deltas are removed from streamed chunks",
    "sse_keepalive_comments": (
        "every streamed event is preceded by a ': keep-alive' comment (legal SSE, not OpenAI's "
        "framing: only the SHOULD case on canonical frames may fail)"
    ),
    "strict_data_prefix": "upstream SSE lines 'data:' without the space are dropped",
    "bill_estimate_on_disconnect": "a client that leaves mid-stream is charged the full estimate",
    "billing_usage_in_usd": "/dashboard/billing/usage total_usage is in USD, not US cents",
    "html_content_type": "successful non-stream answers are sent as Content-Type text/html",
    "public_log_stream": (
        "GET /log/stream is an open SSE feed of every /v1 request, Authorization header included"
    ),
    # Fraud a customer holding only a key can see (issue #12): each one is caught live.
    "inflate_usage": (
        "usage shown to the client is inflated (each count + 10% + 7) and billed as shown"
    ),
    "inject_system_prompt": (
        "a hidden system prompt is prepended before forwarding: the client pays for its tokens"
    ),
    "truncate_history": (
        "conversations of more than 2 messages are forwarded as their last user message only"
    ),
    "swap_model_family": (
        "gpt-4o and gpt-4o-mini are served by gpt-3.5-turbo; the answer's model field and the "
        "bill still name the model asked for"
    ),
    "double_bill": "every request that reached the upstream is charged twice",
    "hidden_fee": "every request that reaches billing is charged a fixed 500 quota on top",
    "bill_refused": (
        "requests refused as invalid (no channel for the model name, or an upstream 4xx such as "
        "max_tokens over the model's limit) are charged their prompt"
    ),
    "drop_stop": "the stop parameter is not forwarded",
    "drop_n": "the n parameter is not forwarded (one choice comes back)",
    "drop_temperature": (
        "the client's temperature is not forwarded: the channel's default 1.0 is sent instead"
    ),
    "drop_response_format": "the response_format parameter is not forwarded",
    "drop_logprobs": "the logprobs and top_logprobs parameters are not forwarded",
    "drop_tools": "tools and tool_choice are not forwarded",
    "rewrite_model_field": "the answer's model field names another model than the one asked for",
}


class UnknownFaultError(ValueError):
    """A fault name that is not in :data:`FAULTS`."""


def validate_faults(names: Iterable[str]) -> frozenset[str]:
    """The given fault names as a set; an unknown name raises :class:`UnknownFaultError`."""
    chosen = frozenset(names)
    unknown = sorted(chosen - FAULTS.keys())
    if unknown:
        raise UnknownFaultError(
            f"unknown fault(s) {', '.join(unknown)}; known faults: {', '.join(sorted(FAULTS))}"
        )
    return chosen
