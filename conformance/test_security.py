"""security: the client's key never reaches the upstream, the channel key never reaches the
client, keys in URLs are not accepted. No profile can waive these."""

from __future__ import annotations

import pytest

from relaygate.directives import directive
from relaygate.keys import mask_key
from relaygate.suite.client import chat_body, header_pairs
from relaygate.suite.failures import require


@pytest.mark.case(
    "security.client-key-not-forwarded",
    title="The client's key never reaches the upstream",
    area="security",
    spec="relay design; RELAY_SPEC §10.28",
)
def test_client_key_not_forwarded(client, upstream, funded_key, tag, relay):
    ex = client.chat(chat_body(directive=directive(tag=tag)))
    require(
        ex.status == 200, "the request is served", "HTTP 200", ex.describe(), ex.curl, relay.secrets
    )
    for entry in upstream.wait_entries(tag):
        dump = repr(entry.get("headers")) + repr(entry.get("body")) + repr(entry.get("query"))
        require(
            funded_key not in dump,
            "the relay authenticates upstream with its channel key, never the client's key",
            "the client's key absent from what the upstream received",
            f"the upstream received the client's key {mask_key(funded_key)}",
            ex.curl,
            relay.secrets,
        )


@pytest.mark.case(
    "security.channel-key-not-leaked",
    title="The channel key never appears in any answer",
    area="security",
    spec="relay design",
)
def test_channel_key_not_leaked(client, upstream, funded_key, tag, relay):
    ex = client.chat(chat_body(directive=directive(tag=tag)))
    entries = upstream.wait_entries(tag)
    auth = next(
        (v for e in entries for k, v in header_pairs(e) if k.lower() == "authorization"), ""
    )
    channel_key = auth.partition(" ")[2] or auth
    if not channel_key:
        pytest.skip("the relay sent no Authorization upstream: no channel key to look for")
    answers = [ex]
    for i, fields in enumerate(
        [
            {"error": 401, "error_code": "invalid_api_key"},
            {"error": 500},
            {"error": 400},
            {"error": 429},
        ]
    ):
        answers.append(client.chat(chat_body(directive=directive(tag=f"{tag}.{i}", **fields))))
    answers.append(
        client.stream(chat_body(directive=directive(tag=f"{tag}.s", stream_error_after=1)))
    )
    for answer in answers:
        dump = answer.body.decode("utf-8", "replace") + repr(dict(answer.headers))
        require(
            channel_key not in dump,
            "no answer ever shows the relay's upstream (channel) key",
            "the channel key absent",
            f"the channel key {mask_key(channel_key)} appears in {answer.describe()}",
            answer.curl,
            (*relay.secrets, channel_key),
        )


@pytest.mark.case(
    "security.query-key-rejected",
    title="A key in the query string is not accepted",
    area="security",
    spec="relay design",
)
def test_query_key_rejected(client, funded_key, tag, relay):
    ex = client.request(
        "POST",
        f"/v1/chat/completions?key={funded_key}&api_key={funded_key}",
        json=chat_body(directive=directive(tag=tag)),
        key=None,
    )
    require(
        ex.status == 401,
        "keys travel in the Authorization header only: a key in the URL (logged by every proxy) "
        "is refused",
        "HTTP 401",
        ex.describe(),
        ex.curl,
        relay.secrets,
    )
