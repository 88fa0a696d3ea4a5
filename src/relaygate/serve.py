"""Shared HTTP helpers for our aiohttp servers: OpenAI-shaped JSON errors, the ready line.

Every answer our servers give to an API client is JSON, never HTML: aiohttp's own error
pages are replaced by :func:`json_errors_middleware`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "ServeError",
    "error_body",
    "error_response",
    "json_errors_middleware",
    "json_response",
    "print_ready",
    "run_app",
]


class ServeError(RuntimeError):
    """A server could not start (bad address, port in use, …)."""


def error_body(
    message: str,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI answers."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return json_response(error_body(message, type, code, param), status, headers)


_HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "request_too_large",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


@web.middleware
async def json_errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn aiohttp's HTML/text error pages (404, 405, 413, ...) into OpenAI JSON errors."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        if exc.status == 404:
            message = f"Invalid URL ({request.method} {request.path})"
        elif exc.status == 405:
            message = f"Invalid method for URL ({request.method} {request.path})"
        elif exc.status == 413:
            message = f"Request body too large: {exc.text or ''}".rstrip(": ")
        else:
            message = exc.text or exc.reason
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(
            exc.status, message, code=_HTTP_ERROR_CODES.get(exc.status), headers=headers
        )


def print_ready(url: str, **extra: Any) -> None:
    """One JSON line on stdout when a server listens: the embedded stack waits for it."""
    line = {"ready": True, "url": url, "pid": os.getpid(), **extra}
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(
    app: web.Application, host: str, port: int, on_ready: Callable[[str], None] | None
) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        await runner.cleanup()
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.listen(4096)
    sock.setblocking(False)
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    bound_port = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound_port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(url)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_app(
    app: web.Application,
    host: str,
    port: int,
    on_ready: Callable[[str], None] | None = print_ready,
    use_uvloop: bool = True,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; port 0 picks a free port (see the ready line).

    Raises :class:`ServeError` when it cannot listen.
    """
    if use_uvloop:
        _install_uvloop()
    asyncio.run(_serve(app, host, port, on_ready))
