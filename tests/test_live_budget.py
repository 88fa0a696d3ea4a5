"""Cost control of the live audit, end to end: the suite in live mode (URL + key only) against
the embedded stack; the stack's admin API and journal are the referee."""

from __future__ import annotations

import httpx
import pytest
from live_stack import LiveStack

pytestmark = [pytest.mark.timeout(300), pytest.mark.long(50)]  # long: started first

QUOTA_CASES = "conformance/test_quota.py"


@pytest.fixture(scope="module")
def stack():
    with LiveStack() as live:
        live.snapshot()
        yield live


def _used_quota(stack: LiveStack) -> int:
    info = stack.info
    assert info is not None
    answer = httpx.get(
        f"{info.relay_url}/v1/dashboard/billing/usage",
        headers={"Authorization": f"Bearer {info.relay_key}"},
        timeout=10,
    )
    return round(answer.json()["total_usage"] * 5000)


def _journal_size(stack: LiveStack) -> int:
    info = stack.info
    assert info is not None
    answer = httpx.get(f"{info.upstream_url}/_relaygate/journal", params={"limit": 1000})
    return len(answer.json()["data"])


def test_live_run_counts_and_prices_its_spend(stack, tmp_path):
    stack.restore()
    before = _used_quota(stack)
    # Without the client-disconnect case: a stream the client leaves is counted at its worst
    # case (the relay may bill what the upstream went on generating).
    code, doc, output = stack.run([QUOTA_CASES, "-k", "not disconnect"], report_dir=tmp_path)
    assert code == 0, output[-3000:]
    assert doc is not None and doc["mode"] == "live"
    cost = doc["live_cost"]
    assert cost["requests"] > 0 and cost["quota"] > 0
    # The meter's price is what the relay charged the key (the reference bills exactly).
    assert cost["quota"] == _used_quota(stack) - before
    assert cost["usd"] == pytest.approx(cost["quota"] / 500000, abs=1e-6)
    assert "relaygate live cost" in output


def test_the_sdk_cases_are_counted_and_priced_too(stack, tmp_path):
    """The SDK cases send through the official SDK's own client: their requests go through
    the meter as well, so the spend is still exactly what the relay charged."""
    stack.restore()
    before = _used_quota(stack)
    code, doc, output = stack.run(["conformance/test_sdk.py"], report_dir=tmp_path)
    assert code == 0, output[-3000:]
    cost = doc["live_cost"]
    assert cost["requests"] > 0 and cost["quota"] > 0, cost
    assert cost["quota"] == _used_quota(stack) - before


def test_a_key_of_another_group_is_judged_and_metered_at_its_ratio(stack, tmp_path):
    """A customer's key whose user is in a priced group (``vip`` at ratio 2 here): with
    ``--relay-key-group vip`` the formula holds and the live spend is what the relay charged;
    judged as ``default`` the same correct relay would fail quota.formula (a false failure)."""
    from relaygate.profiles import load_profile
    from relaygate.provision.reference import ReferenceProvisioner

    stack.restore()
    info = stack.info
    assert info is not None
    prov = ReferenceProvisioner(info.relay_url, info.admin_token)
    try:
        prov.put_ratios({"group_ratio": {"vip": "2"}})
        models = list(load_profile("faq").billing.model_ratio)
        prov.add_channel({"name": "vip", "base_url": info.upstream_url, "key": info.upstream_key,
                          "models": models, "groups": ["vip"]})  # fmt: skip
        key = prov.funded_key(group="vip")
        profile = tmp_path / "vip.toml"
        profile.write_text(
            'extends = "faq"\nname = "faq-vip2"\n\n[billing.group_ratio]\nvip = "2"\n'
        )
        stack.keys["RELAYGATE_RELAY_KEY"] = key.key
        formula = [QUOTA_CASES, "-k", "test_formula and not group", "--relay-profile", str(profile)]
        code, doc, output = stack.run(
            [*formula, "--relay-key-group", "vip"], report_dir=tmp_path / "vip"
        )
        assert code == 0, output[-3000:]
        assert doc is not None
        outcomes = [(c["outcome"], c.get("detail") or c.get("message")) for c in doc["cases"]]
        assert {outcome for outcome, _ in outcomes} == {"passed"}, outcomes
        assert doc["live_cost"]["quota"] == prov.balance(key).used_quota
        code, doc, output = stack.run(formula, report_dir=tmp_path / "default")
        assert code == 1 and doc is not None
        assert {c["outcome"] for c in doc["cases"]} == {"failed"}, output[-3000:]
    finally:
        stack.keys.pop("RELAYGATE_RELAY_KEY", None)
        prov.put_ratios({"group_ratio": {"vip": "1"}})
        prov.close()


def test_an_unpriced_group_is_one_line_before_any_case(stack, tmp_path):
    code, _, output = stack.run(
        [QUOTA_CASES, "--relay-key-group", "gold"], report_dir=tmp_path, timeout_s=120
    )
    assert code == 4, output[-3000:]
    lines = [line for line in output.splitlines() if "--relay-key-group 'gold'" in line]
    assert len(lines) == 1 and "its groups: default, svip, vip" in lines[0], output[-2000:]


def test_live_budget_stops_the_run_cleanly_at_the_cap(stack, tmp_path):
    stack.restore()
    before = _used_quota(stack)
    cap = 1500
    code, doc, output = stack.run([QUOTA_CASES, "--live-budget", f"{cap}q"], report_dir=tmp_path)
    assert code == 0, output[-3000:]
    assert doc is not None
    cases = doc["cases"]
    assert not [c for c in cases if c["outcome"] == "failed"]
    stopped = [c for c in cases if c["reason"].startswith("live budget spent")]
    assert stopped, [c["reason"] for c in cases]
    cost = doc["live_cost"]
    assert cost["stopped_by_budget"] is True
    assert cost["budget_quota"] == cap
    spent = _used_quota(stack) - before
    assert 0 < spent <= cost["quota"] <= cap


def test_dry_run_sends_nothing_and_prints_the_plan(stack, tmp_path):
    stack.restore()
    before, journal = _used_quota(stack), _journal_size(stack)
    code, doc, output = stack.run([QUOTA_CASES, "--live-dry-run"], report_dir=tmp_path)
    assert code == 0, output[-3000:]
    assert doc is None  # a dry run writes no report
    assert "dry run, nothing sent to the relay" in output
    assert "requests" in output and "max_tokens" in output and "USD" in output
    # What ran against the stand-in is no verdict on the relay: every case is a skip.
    assert "live dry run: planned against a local stand-in" in output
    assert " passed" not in output.split("relaygate conformance")[-1]
    assert _used_quota(stack) == before
    assert _journal_size(stack) == journal


def test_a_budget_that_is_not_an_amount_is_one_line(stack, tmp_path):
    code, _, output = stack.run([QUOTA_CASES, "--live-budget", "ten"], report_dir=tmp_path)
    assert code == 4
    assert "--live-budget 'ten': give US dollars" in output


# Live variants each fail on a faulty relay (one run with several switches: their failures
# add up). The full table of (switch, case) pairs is the live detection matrix's.
LIVE_DETECTIONS = {
    "ignore_completion_ratio": ["quota.formula[gpt-4]", "quota.stream-billed-from-usage"],
    "bill_failed": ["max_tokens.not-billed", "quota.refund-on-upstream-error[400]"],
    "fold_model_case": ["models.case-variant-not-billed"],
    "clamp_max_tokens": ["max_tokens.forwarded-unchanged[max_tokens]"],
    "bill_estimate_on_disconnect": ["quota.client-disconnect-billed-at-most-full"],
}


def test_live_variants_fail_on_a_faulty_relay(stack, tmp_path):
    stack.restore(list(LIVE_DETECTIONS))
    try:
        code, doc, output = stack.run(
            [
                "conformance/test_quota.py",
                "conformance/test_models.py",
                "conformance/test_max_tokens.py",
            ],
            report_dir=tmp_path,
        )
    finally:
        stack.restore()
    assert code == 1 and doc is not None, output[-3000:]
    failed = {c["id"] for c in doc["cases"] if c["outcome"] == "failed"}
    expected = {case for cases in LIVE_DETECTIONS.values() for case in cases}
    assert expected <= failed, sorted(expected - failed)
