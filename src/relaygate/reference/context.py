"""What the relay's route modules share: app keys, body reading, relay-made errors."""

from __future__ import annotations

from aiohttp import web

from relaygate.reference.store import RelayState
from relaygate.serve import error_response

__all__ = [
    "ADMIN_TOKEN",
    "RELAY_ERROR",
    "STATE",
    "RequestTooLarge",
    "read_body",
    "relay_error",
    "too_large",
]

#: error.type of every error the relay makes itself (upstream errors keep theirs).
RELAY_ERROR = "relay_error"

#: The relay's state (users, tokens, channels, ratios, settings, logs).
STATE = web.AppKey("relay_state", RelayState)
#: The bearer token the admin API accepts.
ADMIN_TOKEN = web.AppKey("relay_admin_token", str)


class RequestTooLarge(Exception):
    """The request body is larger than ``max_body_bytes``."""


def relay_error(
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error made by the relay itself (type ``relay_error``)."""
    return error_response(status, message, RELAY_ERROR, code, param, headers)


async def read_body(request: web.Request, state: RelayState) -> bytes:
    """The whole body, refusing (``RequestTooLarge``) as soon as it passes the limit."""
    limit = None if "no_body_limit" in state.settings.faults else state.settings.max_body_bytes
    if limit is not None and (request.content_length or 0) > limit:
        raise RequestTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if limit is not None and size > limit:
            raise RequestTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(state: RelayState) -> web.Response:
    response = relay_error(
        413,
        f"request body too large: the limit is {state.settings.max_body_bytes} bytes",
        "request_too_large",
    )
    # The rest of the body is unread; do not try to reuse the connection.
    response.force_close()
    return response
