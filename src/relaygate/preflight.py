"""Preflight: is the relay under test usable at all? Asked once, before any case or load runs.

An unreachable relay, a refused key or a missing profile is not 92 failed cases: it is one
unusable input, reported as ONE line that names the input and what to do, and the caller
exits with its usage code (``relaygate check``/``demo`` exit 2; the pytest plugin stops the
session with pytest's usage-error code 4). Used by the pytest plugin, ``relaygate demo`` and
the Locust plugin.

API (every function returns ``None`` or the loaded profile, and raises :class:`PreflightError`)::

    check_relay(url, key, *, timeout_s=5.0, headers=None, url_option="--relay-url")
        the relay answers HTTP at all, and does not refuse ``key`` (401/403 on GET /v1/models);
        ``url_option`` is how the caller's user gave the URL (Locust: ``"--host"``)
    check_admin_token(url, token, *, adapter, timeout_s=5.0, headers=None)
        the reference relay's admin API accepts ``token`` (other adapters: not checked here)
    check_upstream(upstream_url, *, timeout_s=5.0)
        ``upstream_url`` answers as a relaygate mock upstream (GET /_relaygate/health -> 200)
    check_profile(name_or_path) -> Profile
    check_target(url, key, *, admin_token, upstream_url, profile, timeout_s, headers) -> Profile
        all of the above in that order: profile, relay + key, admin token, upstream

``str(PreflightError)`` is the one line to print; keys in it are masked. Only a refused
*funded* key or an unreachable address fails: a relay that accepts every key, lists no
models (404) or answers 5xx passes preflight and is judged by the cases. Every request is
bounded: ``timeout_s`` per phase and in total, at most 64 KiB read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from relaygate.keys import mask_secrets

if TYPE_CHECKING:
    from relaygate.profiles import Profile

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PreflightError",
    "check_admin_token",
    "check_profile",
    "check_relay",
    "check_target",
    "check_upstream",
]

DEFAULT_TIMEOUT_S = 5.0
_MAX_BYTES = 64 * 1024
_REFUSED = (401, 403)


class PreflightError(Exception):
    """An input the run cannot use; ``str()`` is one line naming it and the next step."""


class _Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def snippet(self, *secrets: str | None) -> str:
        """The answer's first 120 characters on one line, secrets masked."""
        text = " ".join(self.body.decode("utf-8", "replace").split())
        if len(text) > 120:
            text = text[:120] + "…"
        return mask_secrets(text, *secrets)


def _get(url: str, headers: Mapping[str, str], timeout_s: float) -> _Answer:
    """GET with a total deadline and a byte cap; ``httpx.HTTPError`` when unreachable."""
    import httpx

    from relaygate.bounded import tls_context

    deadline = time.monotonic() + timeout_s
    body = bytearray()
    with (
        httpx.Client(timeout=timeout_s, follow_redirects=False, verify=tls_context()) as client,
        client.stream("GET", url, headers=dict(headers)) as response,
    ):
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= _MAX_BYTES or time.monotonic() > deadline:
                break
    return _Answer(response.status_code, bytes(body[:_MAX_BYTES]))


def _base(url: str, url_option: str = "--relay-url") -> str:
    from relaygate.suite.target import normalize_base_url

    try:
        return normalize_base_url(url)
    except ValueError as exc:
        text = str(exc).replace("--relay-url", url_option)
        fix = "pass the relay's base URL, e.g. http://relay:3000"
        raise PreflightError(f"{text} — {fix}") from None


def _unreachable(what: str, url: str, exc: Exception, fix: str, *secrets: str | None) -> str:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return mask_secrets(f"cannot reach the {what} at {url} ({reason}) — {fix}", *secrets)


def check_relay(
    url: str,
    key: str | None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
    url_option: str = "--relay-url",
) -> None:
    """The relay at ``url`` answers HTTP, and with ``key`` (when given) it does not refuse it."""
    import httpx

    base = _base(url, url_option)
    sent = dict(headers or {})
    if key:
        sent["Authorization"] = f"Bearer {key}"
    try:
        answer = _get(base + "/v1/models", sent, timeout_s)
    except httpx.HTTPError as exc:
        fix = f"check {url_option} and that the relay is running"
        raise PreflightError(_unreachable("relay", base, exc, fix, key)) from None
    if key and answer.status in _REFUSED:
        raise PreflightError(
            f"the relay refused --relay-key (HTTP {answer.status}: {answer.snippet(key)}) "
            "— check the key"
        )


def check_admin_token(
    url: str,
    token: str,
    *,
    adapter: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
) -> None:
    """The reference relay's admin API accepts ``token``.

    Only the ``reference`` adapter has a read-only endpoint to ask; for one-api / new-api the
    provisioner reports a bad token itself on first use.
    """
    import httpx

    if adapter != "reference":
        return
    base = _base(url)
    sent = {**(headers or {}), "Authorization": f"Bearer {token}"}
    try:
        answer = _get(base + "/api/admin/settings", sent, timeout_s)
    except httpx.HTTPError as exc:
        fix = "check --relay-url and that the relay is running"
        raise PreflightError(_unreachable("relay", base, exc, fix, token)) from None
    if answer.status in _REFUSED:
        raise PreflightError(
            f"the relay refused --relay-admin-token (HTTP {answer.status}: "
            f"{answer.snippet(token)}) — check the token, or leave it out (cases that need "
            "provisioning then skip)"
        )


def check_upstream(upstream_url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """``upstream_url`` answers as a relaygate mock upstream (``GET /_relaygate/health``)."""
    import httpx

    fix = "pass the relaygate mock upstream the relay's channels point at, or leave it out"
    base = upstream_url.strip().rstrip("/").removesuffix("/v1")
    if not base.startswith(("http://", "https://")):
        raise PreflightError(f"--upstream-url must start with http:// or https://, got {base!r}")
    try:
        answer = _get(base + "/_relaygate/health", {}, timeout_s)
    except httpx.HTTPError as exc:
        raise PreflightError(_unreachable("mock upstream", base, exc, fix)) from None
    if answer.status != 200:
        raise PreflightError(
            f"--upstream-url {base} is not a relaygate mock upstream (GET /_relaygate/health "
            f"answered HTTP {answer.status}) — {fix}"
        )


def check_profile(name_or_path: str) -> Profile:
    """The profile, loaded; a missing or malformed one is a :class:`PreflightError`."""
    from relaygate.profiles import ProfileError, load_profile

    try:
        return load_profile(name_or_path)
    except ProfileError as exc:
        first = str(exc).splitlines()[0] if str(exc) else repr(name_or_path)
        raise PreflightError(f"--relay-profile: {first}") from None


def check_key_group(profile: Profile, group: str) -> None:
    """``--relay-key-group``: a group ``profile`` prices (a profile without prices takes any);
    else a :class:`PreflightError` naming the groups it has."""
    rules = profile.billing
    if rules.applicable and group not in rules.group_ratio:
        known = ", ".join(sorted(rules.group_ratio)) or "none"
        raise PreflightError(
            f"--relay-key-group {group!r}: the profile {profile.name!r} prices no such group "
            f"(its groups: {known}); add its ratio to the profile's [billing.group_ratio]"
        )


def check_target(
    url: str,
    key: str | None,
    *,
    admin_token: str | None = None,
    upstream_url: str | None = None,
    profile: str = "faq",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    headers: Mapping[str, str] | None = None,
) -> Profile:
    """Everything a conformance run against ``url`` relies on; the loaded profile."""
    loaded = check_profile(profile)
    sent = {**loaded.http.extra_headers, **(headers or {})}
    check_relay(url, key, timeout_s=timeout_s, headers=sent)
    if admin_token:
        check_admin_token(
            url, admin_token, adapter=loaded.admin.adapter, timeout_s=timeout_s, headers=sent
        )
    if upstream_url:
        check_upstream(upstream_url, timeout_s=timeout_s)
    return loaded
