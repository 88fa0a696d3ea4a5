"""properties: generated request bodies and headers never get a 5xx, never HTML, always an
OpenAI error object on 4xx, and nothing refused is billed (hypothesis, seeded and bounded)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from relaygate.directives import directive
from relaygate.suite.checks import charged, key_in_state, settled_balance
from relaygate.suite.failures import require

json_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
messages = (
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant", "tool", "", "x"]),
                "content": json_values,
            }
        ),
        max_size=3,
    )
    | json_values
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["gpt-4o", "GPT-4o", "", "gpt-4o ", "no-such-model"])
        | json_values,
        "messages": messages,
        "max_tokens": st.integers(-5, 10**7) | json_values,
        "stream": st.booleans() | json_values,
        "temperature": st.floats(allow_nan=False) | json_values,
        "n": st.integers(-2, 5),
    },
).filter(lambda b: b.get("stream") is not True)


@pytest.mark.case(
    "properties.refusals-are-json",
    title="Generated bad requests: never 5xx, never HTML, always an error object, never billed",
    area="properties",
    faq=("F5", "F18"),
)
def test_refusals_are_json(client, provision, profile, relay, request, baseline):
    # "Never a 5xx, always an error object" means nothing from a relay that refuses everything.
    baseline.require_served()
    examples = int(request.config.getoption("relay_fuzz_examples") or 25)
    key = key_in_state(lambda: provision.funded_key())
    # Live, a static key's balance is unreadable: the other rules are still checked, and the
    # case then ends as a skip naming the one it could not check (never a pass).
    readable = profile.billing.applicable and provision.balance(key) is not None
    before = settled_balance(provision, key, profile) if readable else None
    served_quota = 0

    @seed(20261128)
    @settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(body=bodies)
    def check(body):
        nonlocal served_quota
        msgs = body.get("messages")
        if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict):
            body["messages"][0]["content"] = "fuzz " + directive(usage="3/2", chunks=2)
        ex = client.request("POST", "/v1/chat/completions", json=body, key=key.key)
        require(
            ex.status < 500,
            "no generated request makes the relay fail with a 5xx",
            "HTTP < 500",
            ex.describe(),
            ex.curl,
            (*relay.secrets, key.key),
        )
        require(
            ex.content_type != "text/html",
            "F18: no answer is HTML",
            "JSON",
            ex.describe(),
            ex.curl,
            relay.secrets,
        )
        if ex.status >= 400:
            require(
                ex.error is not None and bool(ex.error.get("message")),
                "F5: every 4xx carries an OpenAI error object",
                '{"error": {"message", …}}',
                ex.describe(),
                ex.curl,
                relay.secrets,
            )
        elif ex.status == 200 and before is not None:
            usage = (ex.json() or {}).get("usage") or {}
            served_quota += profile.quota_for(
                str(body.get("model")),
                key.group,
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)),
            )

    check()
    if profile.billing.applicable and not readable:
        pytest.skip(
            "the relay exposes no balance this suite can read, so 'never billed' is unchecked "
            f"(the {examples} generated requests got no 5xx, no HTML and an error object on "
            "every 4xx)"
        )
    if before is not None:
        after = settled_balance(provision, key, profile)
        require(
            charged(before, after) == served_quota,
            "refused requests are never billed: the key paid exactly for the served ones",
            f"{served_quota} quota",
            f"{charged(before, after)} quota",
            None,
            relay.secrets,
        )
