"""API-key authentication (F15): distinct 401s for missing, malformed, unknown, expired and
disabled keys; 403 for a disabled user.

Keys come from ``Authorization`` only: ``Bearer sk-…`` (scheme case-insensitive) or a bare
``sk-…`` as the one-api family accepts. Query strings and other headers are never read (except
under the ``accept_query_key`` fault), so keys do not end up in access logs.
"""

from __future__ import annotations

import time

from aiohttp import web

from relaygate.reference.store import DISABLED, RelayState, Token, User

__all__ = ["AuthError", "authenticate", "extract_key"]


class AuthError(Exception):
    """Why a request was refused before reaching the relay proper."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# (status, code, message) of each refusal; a fresh AuthError is raised per request.
MISSING = (
    401,
    "missing_api_key",
    "未提供令牌 (no API key provided): send Authorization: Bearer sk-…",
)
MALFORMED = (
    401,
    "malformed_api_key",
    "令牌格式错误 (malformed Authorization header): use Authorization: Bearer sk-…",
)
INVALID = (401, "invalid_api_key", "无效的令牌 (invalid API key)")
EXPIRED = (401, "token_expired", "该令牌已过期 (this API key has expired): create a new one")
DISABLED_TOKEN = (401, "token_disabled", "该令牌状态不可用 (this API key is disabled)")
DISABLED_USER = (403, "user_disabled", "用户已被封禁 (this key's user is disabled)")


def extract_key(request: web.Request, faults: frozenset[str]) -> str:
    """The key the client sent, or raise the matching :class:`AuthError`."""
    header = request.headers.get("Authorization", "").strip()
    if not header:
        query_key = request.query.get("key", "")
        if "accept_query_key" in faults and query_key:
            return query_key
        raise AuthError(*MISSING)
    scheme, _, rest = header.partition(" ")
    # RFC 7235: the scheme is case-insensitive (bearer_case_sensitive: only "Bearer" is).
    if "bearer_case_sensitive" not in faults:
        scheme = scheme.lower().capitalize()
    if scheme == "Bearer":
        credential = rest.strip()
        if not credential or " " in credential:
            raise AuthError(*MALFORMED)
        return credential
    if rest or not header.startswith("sk-"):
        # "Basic …", "Token …" or any other scheme we do not speak.
        raise AuthError(*MALFORMED)
    return header


def authenticate(request: web.Request, state: RelayState) -> tuple[Token, User]:
    """Token and user for this request, or raise :class:`AuthError`."""
    faults = state.settings.faults
    try:
        key = extract_key(request, faults)
        token = state.tokens_by_key.get(key)
        if token is None:
            if "unknown_key_403" in faults:
                raise AuthError(403, *INVALID[1:])
            raise AuthError(*INVALID)
        if token.status == DISABLED:
            raise AuthError(*DISABLED_TOKEN)
        if token.expired(time.time()) and "ignore_expiry" not in faults:
            raise AuthError(*EXPIRED)
    except AuthError as exc:
        if "same_auth_message" in faults:
            raise AuthError(*INVALID) from exc
        raise
    user = state.users.get(token.user_id)
    if user is None:
        raise AuthError(*INVALID)
    if user.status == DISABLED:
        raise AuthError(*DISABLED_USER)
    return token, user
