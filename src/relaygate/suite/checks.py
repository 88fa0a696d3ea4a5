"""Checks shared by the cases: an answer against the profile's expectation, the journal,
balances. Each check fails with requirement / expected / actual and a curl line.

A verdict is earned: a case that judges a refusal, a "not forwarded" or a "not billed" first
shows, through :class:`Baseline`, that the relay does serve the funded key, that what it
forwards reaches the journal, and that a served request is billed. A relay that refuses (or
ignores) everything then fails those cases instead of passing them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from relaygate.suite.failures import deviation, fail, require

if TYPE_CHECKING:
    from relaygate.profiles import ErrorExpectation, Profile
    from relaygate.provision import Balance, ProvisionedKey, Provisioner
    from relaygate.suite.client import Exchange, RelayClient, UpstreamJournal

__all__ = [
    "Baseline",
    "applicable",
    "charged",
    "check_error",
    "check_not_forwarded",
    "is_chat_completion",
    "key_in_state",
    "retry_after_s",
    "settled_balance",
]


class Baseline:
    """What the relay demonstrably does for the funded key, probed once per session.

    ``require_served``: a chat request with the funded key gets a JSON chat completion.
    ``require_forwarding_seen``: and that request reached the mock upstream's journal (so an
    empty journal later means "not forwarded", not "we watch the wrong upstream").
    ``require_billing_seen``: a served request changes a funded key's balance (so a zero
    charge later means "not billed", not "nothing is ever billed or readable").
    A failed probe fails every case that relies on it, with the probe's own answer.
    """

    def __init__(
        self,
        client: RelayClient,
        journal: UpstreamJournal | None,
        key: str | None,
        secrets: tuple[str | None, ...],
    ) -> None:
        self._client = client
        self._journal = journal
        self._key = key
        self._secrets = secrets
        self._served: Exchange | None = None
        self._served_tag = ""
        # Why the probe gave no answer (transport error, or interrupted: then it never ended).
        self._served_error: str | None = None
        self._forwarded: list[dict[str, Any]] | None = None
        self._billed: tuple[Exchange, int] | None = None

    def require_served(self) -> Exchange:
        """Fail unless the funded key gets a chat completion (skip without a funded key)."""
        __tracebackhide__ = True
        from relaygate.directives import directive
        from relaygate.suite.client import chat_body, new_tag

        if not self._key:
            pytest.skip("needs a funded key (--relay-key) to show the relay serves keys at all")
        if self._served is None and self._served_error is None:
            self._served_tag = new_tag("baseline")
            body = chat_body(directive=directive(tag=self._served_tag))
            # Set before the call: a probe a case timeout interrupts fails the next case at
            # once instead of hanging it again.
            self._served_error = "the request never completed (interrupted by a timeout)"
            try:
                self._served = self._client.chat(body)
                self._served_error = None
            except httpx.HTTPError as exc:
                self._served_error = f"{type(exc).__name__}: {exc}"
        if self._served is None:
            fail(
                "baseline: the relay serves the funded key",
                "HTTP 200 application/json with choices[0].message",
                f"no answer: {self._served_error}",
                None,
                self._secrets,
            )
        ex = self._served
        require(
            is_chat_completion(ex),
            "baseline: the relay serves the funded key (without that, a refusal or an absent "
            "effect proves nothing)",
            "HTTP 200 application/json with choices[0].message",
            ex.describe(),
            ex.curl,
            self._secrets,
        )
        return ex

    def require_forwarding_seen(self) -> list[dict[str, Any]]:
        """Fail unless the served baseline request reached the upstream journal."""
        __tracebackhide__ = True
        ex = self.require_served()
        if self._journal is None:
            pytest.skip("needs ground truth: pass --upstream-url (the relaygate mock upstream)")
        if self._forwarded is None:
            self._forwarded = self._journal.wait_entries(self._served_tag, count=1)
        require(
            bool(self._forwarded),
            "baseline: a served request reaches the mock upstream's journal (without that, an "
            "empty journal proves nothing: is --upstream-url the relay's upstream?)",
            "the funded key's request in the journal",
            "no journal entry for it",
            ex.curl,
            self._secrets,
        )
        return self._forwarded

    def require_billing_seen(
        self, client: RelayClient, provision: Provisioner, profile: Profile
    ) -> int:
        """Fail unless a served request changes a funded key's balance; returns the charge."""
        __tracebackhide__ = True
        from relaygate.directives import directive
        from relaygate.suite.client import chat_body, new_tag

        if self._billed is None:
            key = key_in_state(lambda: provision.funded_key())
            before = settled_balance(provision, key, profile)
            body = chat_body(directive=directive(usage="100/100", tag=new_tag("baseline.billed")))
            ex = client.chat(body, key=key.key)
            require(
                is_chat_completion(ex),
                "baseline: a fresh funded key is served",
                "HTTP 200 with choices",
                ex.describe(),
                ex.curl,
                (*self._secrets, key.key),
            )
            after = settled_balance(provision, key, profile, expect_change_from=before)
            self._billed = (ex, charged(before, after))
        ex, amount = self._billed
        require(
            amount > 0,
            "baseline: a served request is billed (without that, a zero charge proves nothing)",
            "a charge > 0 for a served request",
            f"{amount} quota",
            ex.curl,
            self._secrets,
        )
        return amount


def is_chat_completion(ex: Exchange) -> bool:
    """A 200 JSON answer with at least one choice carrying a message."""
    data = ex.json()
    if ex.status != 200 or ex.content_type != "application/json" or not isinstance(data, dict):
        return False
    choices = data.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and isinstance(choices[0], dict)
        and isinstance(choices[0].get("message"), dict)
    )


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
    if exp.status_from_upstream:
        # The answer must carry the upstream's status: with nothing in the journal there is
        # no status to compare, and skipping the comparison would pass any answer.
        require(
            upstream_status is not None,
            f"{requirement} (the request reaches the upstream, whose answer comes back)",
            "the request in the mock upstream's journal",
            f"nothing reached the upstream; the relay answered {ex.describe()}",
            ex.curl,
            secrets,
        )
        want_status = upstream_status
    else:
        want_status = exp.status
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
        for field, want in (("code", exp.code), ("type", exp.type), ("param", exp.param)):
            if want is not None:
                _require_error_field(ex, error, field, want, requirement, secrets)
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
                _require_error_field(
                    ex,
                    error,
                    field,
                    upstream_error.get(field),
                    f"{requirement} (the upstream's error object passes through intact)",
                    secrets,
                    source=" (as the upstream sent it)",
                )
            _require_upstream_message(ex, error, exp, upstream_error, requirement, secrets)
    elif exp.body == "empty":
        require(
            not ex.body.strip(),
            requirement,
            "an empty body (as the profile documents)",
            ex.describe(),
            ex.curl,
            secrets,
        )
    waiver = exp.waiver()
    if waiver:
        deviation(waiver)
    return error


def _require_error_field(
    ex: Exchange,
    error: Mapping[str, Any],
    field: str,
    want: Any,
    requirement: str,
    secrets: tuple[str | None, ...],
    *,
    source: str = "",
) -> None:
    """Fail unless ``error[field] == want`` (``source`` says where ``want`` comes from)."""
    __tracebackhide__ = True
    require(
        error.get(field) == want,
        requirement,
        f"error.{field} {want!r}{source}",
        f"error.{field} {error.get(field)!r}",
        ex.curl,
        secrets,
    )


def _require_upstream_message(
    ex: Exchange,
    error: Mapping[str, Any],
    exp: ErrorExpectation,
    upstream_error: Mapping[str, Any],
    requirement: str,
    secrets: tuple[str | None, ...],
) -> None:
    """The upstream's error.message reaches the client as the profile's ``upstream_message``
    allows: unchanged (``exact``) or wrapped around the upstream's text (``contains``)."""
    __tracebackhide__ = True
    want, got = upstream_error.get("message"), error.get("message")
    if exp.upstream_message == "replaced" or not isinstance(want, str):
        return
    if exp.upstream_message == "exact":
        held, expected = got == want, f"error.message {want!r} (as the upstream sent it)"
    else:
        held = isinstance(got, str) and want in got
        expected = f"error.message containing {want!r} (the upstream's, wrapped at most)"
    require(
        held,
        f"{requirement} (the upstream's error message is not rewritten)",
        expected,
        f"error.message {got!r}",
        ex.curl,
        secrets,
    )


def check_not_forwarded(
    upstream: UpstreamJournal,
    tag: str,
    requirement: str,
    curl: str | None = None,
    *,
    baseline: Baseline,
) -> None:
    """Nothing tagged ``tag`` reached the mock upstream, on a relay whose forwarded requests
    do show in that journal (``baseline``)."""
    __tracebackhide__ = True
    baseline.require_forwarding_seen()
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


def retry_after_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds a 429 asks the client to wait: ``retry-after-ms``, else ``Retry-After`` as
    delta-seconds or an HTTP-date (RFC 9110 §10.2.3 allows both); None when absent or
    unreadable."""
    ms = headers.get("retry-after-ms", "").strip()
    with contextlib.suppress(ValueError):
        if ms:
            return max(0.0, float(ms) / 1000)
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


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
