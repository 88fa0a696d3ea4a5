"""Checks shared by the cases: an answer against the profile's expectation, the journal,
balances. Each check fails with requirement / expected / actual and a curl line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from relaygate.suite.failures import deviation, fail, require

if TYPE_CHECKING:
    from relaygate.profiles import ErrorExpectation, Profile
    from relaygate.provision import Balance, ProvisionedKey, Provisioner
    from relaygate.suite.client import Exchange, UpstreamJournal

__all__ = [
    "applicable",
    "charged",
    "check_error",
    "check_not_forwarded",
    "key_in_state",
    "settled_balance",
]


def applicable(expectation: ErrorExpectation) -> ErrorExpectation:
    """Skip the case (with the profile's reason) when the condition does not apply."""
    from relaygate.profiles import NotApplicable

    try:
        expectation.require_applicable()
    except NotApplicable as exc:
        pytest.skip(f"profile: {exc.reason}")
    return expectation


def check_error(
    ex: Exchange,
    profile: Profile,
    condition: str,
    requirement: str,
    *,
    upstream_error: dict[str, Any] | None = None,
    upstream_status: int | None = None,
    secrets: tuple[str | None, ...] = (),
    values: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The answer ``ex`` is what the profile expects for ``condition``.

    ``upstream_error``/``upstream_status``: what the mock upstream answered, for conditions
    whose error object or status must pass through intact. ``values`` fill the ``{model}`` /
    ``{group}`` placeholders of the profile's message patterns. Returns the error object.
    An expectation that carries a ``deviation`` ends the case as an accepted deviation once
    the relay behaved exactly as that (documented) deviation says.
    """
    __tracebackhide__ = True
    exp = applicable(profile.expect(condition))
    want_status = upstream_status if exp.status_from_upstream else exp.status
    expected = f"HTTP {want_status}" + (f", error.code {exp.code!r}" if exp.code else "")
    require(
        want_status is None or ex.status == want_status,
        requirement,
        expected,
        ex.describe(),
        ex.curl,
        secrets,
    )
    error: dict[str, Any] | None = None
    if exp.body == "json":
        error = ex.error
        require(
            ex.content_type == "application/json" and error is not None,
            f"{requirement} (F5: an OpenAI-shaped JSON error body)",
            'Content-Type application/json and {"error": {"message", "type", "code"}}',
            ex.describe(),
            ex.curl,
            secrets,
        )
        assert error is not None
        message = error.get("message")
        require(
            isinstance(message, str) and bool(message.strip()),
            f"{requirement} (the error says what went wrong)",
            "a non-empty error.message",
            error,
            ex.curl,
            secrets,
        )
        if exp.code is not None:
            require(
                error.get("code") == exp.code,
                requirement,
                f"error.code {exp.code!r}",
                f"error.code {error.get('code')!r}",
                ex.curl,
                secrets,
            )
        if exp.type is not None:
            require(
                error.get("type") == exp.type,
                requirement,
                f"error.type {exp.type!r}",
                f"error.type {error.get('type')!r}",
                ex.curl,
                secrets,
            )
        if exp.param is not None:
            require(
                error.get("param") == exp.param,
                requirement,
                f"error.param {exp.param!r}",
                f"error.param {error.get('param')!r}",
                ex.curl,
                secrets,
            )
        require(
            exp.message_matches(str(message), **(values or {})),
            requirement,
            f"error.message containing {list(exp.message_patterns)}"
            + (f" matching /{exp.message_regex}/" if exp.message_regex else ""),
            f"error.message {message!r}",
            ex.curl,
            secrets,
        )
        if exp.error_passthrough and upstream_error is not None:
            for field in ("type", "param", "code"):
                require(
                    error.get(field) == upstream_error.get(field),
                    f"{requirement} (the upstream's error object passes through intact)",
                    f"error.{field} {upstream_error.get(field)!r} (as the upstream sent it)",
                    f"error.{field} {error.get(field)!r}",
                    ex.curl,
                    secrets,
                )
    elif exp.body == "empty":
        require(
            not ex.body.strip(),
            requirement,
            "an empty body (as the profile documents)",
            ex.describe(),
            ex.curl,
            secrets,
        )
    if exp.deviation:
        deviation(exp.deviation)
    return error


def check_not_forwarded(
    upstream: UpstreamJournal, tag: str, requirement: str, curl: str | None = None
) -> None:
    """Nothing tagged ``tag`` reached the mock upstream."""
    __tracebackhide__ = True
    # A relay that forwards waits for the upstream before answering, so by now the journal
    # has the request; the short grace covers a relay that forwards after it answered.
    entries = upstream.wait_entries(tag, count=1, timeout_s=0.05)
    require(
        not entries,
        requirement,
        "no request reached the upstream",
        f"{len(entries)} request(s) reached the upstream: "
        + ", ".join(f"{e.get('method')} {e.get('path')}" for e in entries),
        curl,
    )


def key_in_state(make: Callable[[], ProvisionedKey]) -> ProvisionedKey:
    """Provision a key; a state the adapter cannot make skips the case with its reason."""
    from relaygate.provision import ProvisioningUnavailable

    try:
        return make()
    except ProvisioningUnavailable as exc:
        pytest.skip(f"cannot provision the key this case needs: {exc}")


def settled_balance(
    provision: Provisioner,
    key: ProvisionedKey,
    profile: Profile,
    *,
    expect_change_from: Balance | None = None,
) -> Balance:
    """Read a key's balance, polling until it is stable (relays bill asynchronously).

    With ``expect_change_from``, keep polling (bounded by the profile's settle timeout) until
    the balance differs from it or the bound is reached; without, until two reads agree.
    """
    __tracebackhide__ = True
    rules = profile.billing
    deadline = time.monotonic() + rules.settle_timeout_s
    reading = provision.balance(key)
    if reading is None:
        pytest.skip("the relay exposes no balance this suite can read (profile balance_source)")
    previous = reading
    if rules.settle == "sync" and expect_change_from is None:
        return reading
    while time.monotonic() < deadline:
        time.sleep(rules.poll_interval_s)
        current = provision.balance(key)
        assert current is not None
        if expect_change_from is not None:
            if current != expect_change_from and current == previous:
                return current
        elif current == previous:
            return current
        previous = current
    if expect_change_from is None:
        fail(
            "balances settle within the profile's bound",
            f"a stable balance within {rules.settle_timeout_s} s",
            f"still changing: {previous}",
        )
    return previous


def charged(before: Balance, after: Balance) -> int:
    """Quota charged between two balance readings (used grows, or remaining shrinks)."""
    __tracebackhide__ = True
    if before.used_quota is not None and after.used_quota is not None:
        return int(after.used_quota - before.used_quota)
    if before.remain_quota is not None and after.remain_quota is not None:
        return int(before.remain_quota - after.remain_quota)
    fail("the relay exposes a balance", "used or remaining quota", f"{before} / {after}")
