"""The admin API (``/api/admin/*``, ``Authorization: Bearer <admin token>``), JSON only.

Provisioning for the harness: users, top-ups, tokens, channels, ratios, settings (incl. fault
switches), the request log, a health probe, and snapshot/restore (one relay serves many
independent self-test runs). Validation errors are 400 naming the field,
unknown ids 404; channel keys are masked in every answer.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from relaygate.reference.context import (
    ADMIN_TOKEN,
    STATE,
    RequestTooLarge,
    read_body,
    relay_error,
    too_large,
)
from relaygate.reference.store import FieldError, RelayState
from relaygate.serve import json_response

__all__ = ["add_admin_routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_MAX_LOGS = 100_000


class _Refusal(Exception):
    """Ends an admin request with a prepared error answer."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _admin(handler: Callable[[web.Request, RelayState], Awaitable[web.StreamResponse]]) -> Handler:
    """Wrap a handler: check the admin token, turn refusals and FieldErrors into JSON 4xx."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if not header:
            return relay_error(
                401,
                "admin token required: send Authorization: Bearer <token>",
                "missing_admin_token",
            )
        if scheme.lower() != "bearer" or not credential.strip():
            return relay_error(
                401,
                "malformed admin Authorization header: use Bearer <token>",
                "malformed_admin_token",
            )
        if not hmac.compare_digest(credential.strip().encode(), request.app[ADMIN_TOKEN].encode()):
            return relay_error(403, "invalid admin token", "invalid_admin_token")
        try:
            return await handler(request, request.app[STATE])
        except _Refusal as refusal:
            return refusal.response
        except FieldError as exc:
            return relay_error(
                400, f"invalid {exc.field}: {exc.message}", "invalid_field", exc.field
            )

    return wrapped


async def _json_object(request: web.Request, state: RelayState) -> dict[str, Any]:
    try:
        raw = await read_body(request, state)
    except RequestTooLarge:
        raise _Refusal(too_large(state)) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Refusal(
            relay_error(400, f"the body is not valid JSON: {exc}", "invalid_json")
        ) from None
    if not isinstance(data, dict):
        raise _Refusal(relay_error(400, "the body must be a JSON object", "invalid_json"))
    return data


def _find(table: dict[int, Any], request: web.Request, kind: str) -> Any:
    raw = request.match_info["id"]
    item = table.get(int(raw)) if raw.isdigit() else None
    if item is None:
        raise _Refusal(relay_error(404, f"no {kind} with id {raw}", f"{kind}_not_found"))
    return item


# --- users ------------------------------------------------------------------------------------


async def _create_user(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(state.create_user(await _json_object(request, state)).to_dict(), 201)


async def _list_users(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response({"data": [u.to_dict() for u in state.users.values()]})


async def _get_user(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(_find(state.users, request, "user").to_dict())


async def _patch_user(request: web.Request, state: RelayState) -> web.StreamResponse:
    user = _find(state.users, request, "user")
    return json_response(state.update_user(user, await _json_object(request, state)).to_dict())


async def _topup(request: web.Request, state: RelayState) -> web.StreamResponse:
    user = _find(state.users, request, "user")
    return json_response(state.topup(user, await _json_object(request, state)).to_dict())


# --- tokens -----------------------------------------------------------------------------------


async def _create_token(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(state.create_token(await _json_object(request, state)).to_dict(), 201)


async def _list_tokens(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response({"data": [t.to_dict() for t in state.tokens.values()]})


async def _get_token(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(_find(state.tokens, request, "token").to_dict())


async def _patch_token(request: web.Request, state: RelayState) -> web.StreamResponse:
    token = _find(state.tokens, request, "token")
    return json_response(state.update_token(token, await _json_object(request, state)).to_dict())


async def _delete_token(request: web.Request, state: RelayState) -> web.StreamResponse:
    state.delete_token(_find(state.tokens, request, "token"))
    return json_response({"deleted": True})


# --- channels ---------------------------------------------------------------------------------


async def _create_channel(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(state.create_channel(await _json_object(request, state)).to_dict(), 201)


async def _list_channels(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response({"data": [c.to_dict() for c in state.channels.values()]})


async def _get_channel(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(_find(state.channels, request, "channel").to_dict())


async def _patch_channel(request: web.Request, state: RelayState) -> web.StreamResponse:
    channel = _find(state.channels, request, "channel")
    data = await _json_object(request, state)
    return json_response(state.update_channel(channel, data).to_dict())


async def _delete_channel(request: web.Request, state: RelayState) -> web.StreamResponse:
    channel = _find(state.channels, request, "channel")
    del state.channels[channel.id]
    return json_response({"deleted": True})


# --- ratios, settings, logs, health -----------------------------------------------------------


async def _get_ratios(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(state.ratios.to_dict())


async def _put_ratios(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(state.update_ratios(await _json_object(request, state)).to_dict())


async def _get_settings(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(state.settings.to_dict())


async def _put_settings(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(state.update_settings(await _json_object(request, state)).to_dict())


async def _snapshot(request: web.Request, state: RelayState) -> web.StreamResponse:
    state.snapshot()
    return json_response({"snapshot": True})


async def _restore(request: web.Request, state: RelayState) -> web.StreamResponse:
    state.restore()
    return json_response({"restored": True, "faults": sorted(state.settings.faults)})


def _query_int(request: web.Request, name: str, default: int | None, maximum: int) -> int | None:
    raw = request.query.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) <= maximum:
        raise FieldError(name, f"must be an integer from 1 to {maximum}")
    return int(raw)


async def _logs(request: web.Request, state: RelayState) -> web.StreamResponse:
    token_id = _query_int(request, "token_id", None, 2**62)
    limit = _query_int(request, "limit", 100, _MAX_LOGS)
    assert limit is not None
    entries = [e for e in state.logs if token_id is None or e.token_id == token_id]
    return json_response({"data": [e.to_dict() for e in entries[-limit:]]})


async def _health(request: web.Request, state: RelayState) -> web.StreamResponse:
    return json_response(
        {
            "status": "ok",
            "users": len(state.users),
            "tokens": len(state.tokens),
            "channels": len(state.channels),
            "in_flight": state.in_flight,
            "reserved_quota": sum(u.reserved_quota for u in state.users.values()),
            "faults": sorted(state.settings.faults),
        }
    )


def add_admin_routes(app: web.Application) -> None:
    """Register every ``/api/admin/*`` route on ``app``."""
    routes: list[
        tuple[str, str, Callable[[web.Request, RelayState], Awaitable[web.StreamResponse]]]
    ] = [
        ("POST", "/users", _create_user),
        ("GET", "/users", _list_users),
        ("GET", "/users/{id}", _get_user),
        ("PATCH", "/users/{id}", _patch_user),
        ("POST", "/users/{id}/topup", _topup),
        ("POST", "/tokens", _create_token),
        ("GET", "/tokens", _list_tokens),
        ("GET", "/tokens/{id}", _get_token),
        ("PATCH", "/tokens/{id}", _patch_token),
        ("DELETE", "/tokens/{id}", _delete_token),
        ("POST", "/channels", _create_channel),
        ("GET", "/channels", _list_channels),
        ("GET", "/channels/{id}", _get_channel),
        ("PATCH", "/channels/{id}", _patch_channel),
        ("DELETE", "/channels/{id}", _delete_channel),
        ("GET", "/ratios", _get_ratios),
        ("PUT", "/ratios", _put_ratios),
        ("GET", "/settings", _get_settings),
        ("PUT", "/settings", _put_settings),
        ("POST", "/snapshot", _snapshot),
        ("POST", "/restore", _restore),
        ("GET", "/logs", _logs),
        ("GET", "/health", _health),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, "/api/admin" + path, _admin(handler))
