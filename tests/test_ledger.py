"""The ledger's reading of a key's billing endpoints and the live meter's arithmetic."""

from __future__ import annotations

import dataclasses

import httpx
import orjson
import pytest

from relaygate.profiles import load_profile
from relaygate.provision import Balance
from relaygate.suite.budget import (
    BUDGET_SPENT,
    UNCAPPED_COMPLETION_TOKENS,
    BudgetError,
    LiveMeter,
    count_usage,
    parse_budget,
)
from relaygate.suite.client import Exchange
from relaygate.suite.ledger import balance_from_endpoints, live_chat
from relaygate.suite.results import skip_class
from relaygate.tokens import count_chat_prompt, count_text


@pytest.fixture(scope="module")
def faq():
    return load_profile("faq")


def _answer(body: dict, status: int = 200) -> Exchange:
    return Exchange(
        method="POST",
        url="http://relay/v1/chat/completions",
        status=status,
        headers=httpx.Headers({"content-type": "application/json"}),
        body=orjson.dumps(body),
        elapsed_s=0.01,
        curl="curl …",
    )


def test_balance_from_billing_endpoints_in_cents(faq):
    # 123456 quota used of 1000000 granted: one-api's endpoints say 246.912 cents, 2 USD.
    got, problem = balance_from_endpoints(
        {"hard_limit_usd": 2.0}, {"total_usage": 123456 / 500000 * 100}, faq
    )
    assert problem == ""
    assert got == Balance(remain_quota=1000000 - 123456, used_quota=123456)


def test_balance_from_billing_endpoints_in_usd_and_remaining(faq):
    rules = dataclasses.replace(faq.billing, usage_unit="usd", hard_limit_usd="remaining")
    profile = dataclasses.replace(faq, billing=rules)
    got, _ = balance_from_endpoints({"hard_limit_usd": 1.5}, {"total_usage": 0.25}, profile)
    assert got == Balance(remain_quota=750000, used_quota=125000)


@pytest.mark.parametrize(
    ("sub", "use", "problem"),
    [
        ({"hard_limit_usd": 1}, {"error": {"message": "no"}}, "total_usage None"),
        ({"hard_limit_usd": "1"}, {"total_usage": 1}, "hard_limit_usd '1'"),
        (None, {"total_usage": 1}, "hard_limit_usd None"),
    ],
)
def test_unusable_billing_answers_are_named(faq, sub, use, problem):
    got, why = balance_from_endpoints(sub, use, faq)
    assert got is None
    assert problem in why


@pytest.mark.parametrize(
    ("text", "quota"),
    [("0.5", 250000), ("0.5usd", 250000), ("$2", 1000000), ("1234q", 1234), ("99 quota", 99)],
)
def test_parse_budget(text, quota):
    assert parse_budget(text, 500000) == quota


@pytest.mark.parametrize("text", ["", "ten", "-1", "1eur", "0.5 q q"])
def test_parse_budget_refuses_what_is_not_an_amount(text):
    with pytest.raises(BudgetError, match="--live-budget"):
        parse_budget(text, 500000)


def test_count_usage_is_the_local_exact_count():
    body = live_chat("gpt-4o", "Repeat exactly: hello there")
    answer = _answer({"choices": [{"message": {"role": "assistant", "content": "hello there"}}]})
    assert count_usage(body, answer) == (
        count_chat_prompt(body["messages"], "gpt-4o"),
        count_text("hello there", "gpt-4o"),
    )


def test_meter_prices_served_requests_and_not_refused_ones(faq):
    meter = LiveMeter(faq.billing, cap_quota=None)
    body = live_chat("gpt-4", "Repeat exactly: hello there", max_tokens=10)
    content = orjson.dumps(body)
    meter.before("POST", "/v1/chat/completions", content)
    served = _answer({"choices": [{"message": {"content": "hello there"}}]})
    meter.after("POST", "/v1/chat/completions", content, served)
    meter.before("POST", "/v1/chat/completions", content)
    meter.after("POST", "/v1/chat/completions", content, _answer({"error": {}}, status=400))
    prompt, completion = count_usage(body, served)
    assert meter.spend.quota == faq.quota_for("gpt-4", "default", prompt, completion)
    assert (meter.spend.requests, meter.spend.refused) == (2, 1)
    assert meter.spend.max_tokens == 20
    cost = meter.to_json()
    assert cost["usd"] == pytest.approx(meter.spend.quota / 500000)
    assert cost["stopped_by_budget"] is False


def test_meter_holds_back_a_request_that_could_pass_the_cap(faq):
    body = live_chat("gpt-4", "hi", max_tokens=100)
    content = orjson.dumps(body)
    worst = faq.quota_for("gpt-4", "default", count_usage(body, None)[0], 100)
    meter = LiveMeter(faq.billing, cap_quota=worst)
    meter.before("POST", "/v1/chat/completions", content)  # exactly the cap: allowed
    meter.after("POST", "/v1/chat/completions", content, _answer({"choices": []}))
    meter.spend.quota = 1  # something was spent: the next worst case passes the cap
    with pytest.raises(pytest.skip.Exception, match=BUDGET_SPENT) as held:
        meter.before("POST", "/v1/chat/completions", content)
    assert meter.spent_reason is not None
    assert skip_class(str(held.value)) in ("other", "live")
    # Free requests (balance reads) still go; every priced one is held back from now on.
    meter.before("GET", "/v1/dashboard/billing/usage", None)
    with pytest.raises(pytest.skip.Exception, match=BUDGET_SPENT):
        meter.before("POST", "/v1/chat/completions", orjson.dumps(live_chat()))


def test_meter_assumes_a_bound_for_requests_without_max_tokens(faq):
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    meter = LiveMeter(faq.billing, cap_quota=None)
    meter.before("POST", "/v1/chat/completions", orjson.dumps(body))
    assert meter.spend.max_tokens == UNCAPPED_COMPLETION_TOKENS


def test_a_huge_body_is_priced_by_its_length_without_tokenising_it(faq, monkeypatch):
    """An 8 MB body (errors.body-too-large) was tokenised before it was sent: a minute a run."""
    from relaygate.suite import budget

    small = live_chat("gpt-4o", "word " * 1000, max_tokens=1)
    small_content = orjson.dumps(small)
    exact = LiveMeter(faq.billing, cap_quota=None)._worst_case(small)[0]
    assert exact <= LiveMeter(faq.billing, cap_quota=None)._worst_case(small, 10**9)[0]
    huge = live_chat("gpt-4o", "x" * (budget.EXACT_COUNT_MAX_BYTES + 1), max_tokens=1)
    content = orjson.dumps(huge)

    def no_count(*args: object, **kwargs: object) -> int:
        raise AssertionError("a huge body was tokenised")

    monkeypatch.setattr(budget.tokens, "count_chat_prompt", no_count)
    meter = LiveMeter(faq.billing, cap_quota=None)
    meter.before("POST", "/v1/chat/completions", content)
    meter.after("POST", "/v1/chat/completions", content, _answer({"error": {}}, status=413))
    assert meter.spend.worst_case_quota >= len(content) and meter.spend.quota == 0
    assert len(small_content) < budget.EXACT_COUNT_MAX_BYTES
