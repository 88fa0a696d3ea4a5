"""The ledger: what a key's balance is and what a request cost it, read the way this run can.

Two sources, the first that works:

* the relay's admin API (ground truth; :meth:`Provisioner.balance`), as
  :func:`relaygate.suite.checks.settled_balance` reads it;
* the key's own billing endpoints (live mode: a relay customer holds only the URL and the key):
  one-api / new-api ``GET /v1/dashboard/billing/subscription`` (``hard_limit_usd``: the total
  granted, or the remainder, per profile) and ``GET /v1/dashboard/billing/usage``
  (``total_usage`` in US cents, or USD, per profile), RELAY_SPEC §2.

:meth:`Ledger.bill` does the sequence every billing case shares: read a settled balance, send,
read the settled balance after, and return the charge; :meth:`Ledger.require_charge` and
:meth:`Ledger.require_free` judge it with requirement / expected / actual and the request's curl.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from relaygate.provision import Balance, wait_for_settled_balance
from relaygate.suite.budget import count_usage
from relaygate.suite.checks import charged, is_chat_completion, key_in_state, settled_balance
from relaygate.suite.client import chat_body
from relaygate.suite.failures import fail, require

if TYPE_CHECKING:
    from relaygate.profiles import Profile
    from relaygate.provision import ProvisionedKey, Provisioner
    from relaygate.suite.checks import Baseline
    from relaygate.suite.client import Exchange, RelayClient

__all__ = [
    "SUBSCRIPTION_PATH",
    "USAGE_PATH",
    "Billed",
    "Ledger",
    "balance_from_endpoints",
    "live_chat",
    "reported_usage",
]

SUBSCRIPTION_PATH = "/v1/dashboard/billing/subscription"
USAGE_PATH = "/v1/dashboard/billing/usage"
# The skip reason when neither source exists (skip class "live": no ground truth).
NO_BALANCE = "the relay exposes no balance this suite can read (profile balance_source)"


# A live request: an ordinary prompt (no directive: a real model would only echo it), answered
# briefly, its length bounded by max_tokens (cost control).
LIVE_PROMPT = "Repeat exactly: relaygate live audit, billing check."
LIVE_MAX_TOKENS = 32


def live_chat(model: str = "gpt-4o", text: str = LIVE_PROMPT, **extra: Any) -> dict[str, Any]:
    """A chat body for a live relay: plain text, ``max_tokens`` bounded unless given."""
    if "max_tokens" not in extra and "max_completion_tokens" not in extra:
        extra["max_tokens"] = LIVE_MAX_TOKENS
    return chat_body(model, text, **extra)


def reported_usage(exchange: Exchange) -> tuple[int, int] | None:
    """(prompt, completion) as the relay reported them (the JSON's or the last chunk's
    ``usage``), or None when it reported none."""
    from relaygate.suite.client import StreamExchange

    found: Any = None
    if isinstance(exchange, StreamExchange):
        for chunk in exchange.chunks():
            if isinstance(chunk.get("usage"), dict):
                found = chunk["usage"]
    else:
        data = exchange.json()
        found = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return None
    prompt, completion = found.get("prompt_tokens"), found.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None


@dataclasses.dataclass(frozen=True)
class Billed:
    """One request and what it cost: the balances around it and the charge between them."""

    exchange: Exchange
    before: Balance
    after: Balance
    quota: int
    source: str

    def describe(self) -> str:
        return f"{self.quota} quota (balance {self.before} -> {self.after}, read via {self.source})"


def balance_from_endpoints(
    subscription: Any, usage: Any, profile: Profile
) -> tuple[Balance | None, str]:
    """A balance from the two billing answers (parsed JSON), or None and what is wrong.

    ``used = total_usage × quota_per_usd / 100`` (cents; ``usage_unit = "usd"``: no / 100);
    ``remain = hard_limit_usd × quota_per_usd − used`` when ``hard_limit_usd`` is the total
    granted, or ``hard_limit_usd × quota_per_usd`` when it is the remainder.
    """
    rules = profile.billing
    total = usage.get("total_usage") if isinstance(usage, dict) else None
    hard = subscription.get("hard_limit_usd") if isinstance(subscription, dict) else None
    numbers = (int, float)
    if not isinstance(total, numbers) or isinstance(total, bool) or not math.isfinite(total):
        return None, f"usage total_usage {total!r} is not a number"
    if not isinstance(hard, numbers) or isinstance(hard, bool) or not math.isfinite(hard):
        return None, f"subscription hard_limit_usd {hard!r} is not a number"
    per_unit = rules.quota_per_usd / (100 if rules.usage_unit == "cents" else 1)
    # The endpoints divide integer quota into floats; rounding recovers the integer exactly.
    used = round(total * per_unit)
    limit = round(hard * rules.quota_per_usd)
    remain = limit - used if rules.hard_limit_usd == "total_granted" else limit
    return Balance(remain_quota=remain, used_quota=used), ""


class Ledger:
    """Balances and charges of keys, from the admin API or else from the key's own endpoints."""

    def __init__(
        self,
        client: RelayClient,
        provision: Provisioner,
        profile: Profile,
        secrets: tuple[str | None, ...] = (),
    ) -> None:
        self._client = client
        self._provision = provision
        self._profile = profile
        self._secrets = secrets
        self._sources: dict[str, str] = {}
        self._billing_seen: Billed | None = None

    def source(self, key: ProvisionedKey) -> str:
        """``"admin API"`` or ``"billing endpoints"``; skips when the run can read neither."""
        known = self._sources.get(key.key)
        if known is not None:
            return known
        if self._provision.balance(key) is not None:
            known = "admin API"
        elif self._profile.billing.balance_source == "billing_endpoints":
            known = "billing endpoints"
        else:
            pytest.skip(NO_BALANCE)
        self._sources[key.key] = known
        return known

    def read_endpoints(self, key: ProvisionedKey) -> Balance:
        """One reading of the key's billing endpoints; fails when they do not answer usably."""
        __tracebackhide__ = True
        sub = self._client.request("GET", SUBSCRIPTION_PATH, key=key.key)
        use = self._client.request("GET", USAGE_PATH, key=key.key)
        secrets = (*self._secrets, key.key)
        balance, problem = balance_from_endpoints(sub.json(), use.json(), self._profile)
        if sub.status != 200 or use.status != 200 or balance is None:
            fail(
                "the key's billing endpoints answer its holder (RELAY_SPEC §2; the live audit "
                "reads every charge there)",
                "HTTP 200 JSON with hard_limit_usd and total_usage",
                f"{sub.describe()} / {use.describe()}" + (f"; {problem}" if problem else ""),
                use.curl,
                secrets,
            )
        return balance

    def settled(self, key: ProvisionedKey, *, expect_change_from: Balance | None = None) -> Balance:
        """A settled balance (relays bill asynchronously), as ``settled_balance`` reads it."""
        __tracebackhide__ = True
        if self.source(key) == "admin API":
            return settled_balance(
                self._provision, key, self._profile, expect_change_from=expect_change_from
            )
        rules = self._profile.billing

        def read() -> Balance:
            return self.read_endpoints(key)

        if expect_change_from is None and rules.settle == "sync":
            return read()
        if expect_change_from is not None:
            changed = wait_for_settled_balance(
                read,
                timeout_s=rules.settle_timeout_s,
                poll_interval_s=rules.poll_interval_s,
                until=lambda b: b != expect_change_from,
            )
            if changed == expect_change_from:
                return expect_change_from  # nothing was charged within the bound
        reading = wait_for_settled_balance(
            read, timeout_s=rules.settle_timeout_s, poll_interval_s=rules.poll_interval_s
        )
        assert reading is not None
        return reading

    def bill(
        self, key: ProvisionedKey, send: Callable[[], Exchange], *, expect_charge: bool
    ) -> Billed:
        """Read before, ``send()``, read the settled balance after; the charge between.

        ``expect_charge``: wait (within the profile's settle bound) for the balance to move,
        as for a served request; without, take the balance once it is stable.
        """
        __tracebackhide__ = True
        source = self.source(key)
        before = self.settled(key)
        ex = send()
        after = self.settled(key, expect_change_from=before if expect_charge else None)
        return Billed(ex, before, after, charged(before, after), source)

    def require_charge(
        self,
        billed: Billed,
        expected: int,
        requirement: str,
        secrets: tuple[str | None, ...],
        *,
        why: str = "",
    ) -> None:
        """The charge is exactly ``expected`` quota (``why``: how it was computed)."""
        __tracebackhide__ = True
        require(
            billed.quota == expected,
            requirement,
            f"{expected} quota" + (f" ({why})" if why else ""),
            billed.describe(),
            billed.exchange.curl,
            (*self._secrets, *secrets),
        )

    def require_free(
        self, billed: Billed, requirement: str, secrets: tuple[str | None, ...]
    ) -> None:
        """Nothing was charged (a refused or failed request)."""
        __tracebackhide__ = True
        require(
            billed.quota == 0,
            requirement,
            "0 quota",
            f"{billed.describe()}; the answer: {billed.exchange.describe()}",
            billed.exchange.curl,
            (*self._secrets, *secrets),
        )

    def require_formula(
        self,
        billed: Billed,
        body: dict[str, Any],
        group: str,
        requirement: str,
        secrets: tuple[str | None, ...],
    ) -> None:
        """Live: the charge is the profile's formula applied to the tokens counted locally
        (the prompt by OpenAI's chat rule, the completion from the text the relay returned)."""
        __tracebackhide__ = True
        model = str(body["model"])
        prompt, completion = count_usage(body, billed.exchange)
        rules = self._profile.billing
        expected = self._profile.quota_for(model, group, prompt, completion)
        reported = reported_usage(billed.exchange)
        self.require_charge(
            billed,
            expected,
            requirement,
            secrets,
            why=f"{rules.rounding}(group {rules.group_ratio.get(group)} × model "
            f"{rules.ratio_for(model)} × ({prompt} + {completion} × "
            f"{rules.completion_ratio.get(model, rules.default_completion_ratio)})), tokens "
            f"counted locally; the relay reported "
            + ("no usage" if reported is None else f"{reported[0]} + {reported[1]}"),
        )

    def require_billing_seen(self, baseline: Baseline) -> int:
        """Fail unless a served request changes a funded key's balance; returns the charge.

        With an admin API this is :meth:`Baseline.require_billing_seen`; live, the funded key
        pays for one short request, read through its billing endpoints.
        """
        __tracebackhide__ = True
        key = key_in_state(lambda: self._provision.funded_key())
        if self.source(key) == "admin API":
            return baseline.require_billing_seen(self._client, self._provision, self._profile)
        if self._billing_seen is None:
            body = live_chat()
            self._billing_seen = self.bill(
                key, lambda: self._client.chat(body, key=key.key), expect_charge=True
            )
        billed = self._billing_seen
        require(
            is_chat_completion(billed.exchange),
            "baseline: the funded key is served",
            "HTTP 200 with choices",
            billed.exchange.describe(),
            billed.exchange.curl,
            (*self._secrets, key.key),
        )
        require(
            billed.quota > 0,
            "baseline: a served request is billed (without that, a zero charge proves nothing)",
            "a charge > 0 for a served request, read through the key's billing endpoints",
            billed.describe(),
            billed.exchange.curl,
            (*self._secrets, key.key),
        )
        return billed.quota
