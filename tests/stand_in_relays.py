"""Stand-in relays that do nothing useful, for checking that no conformance case passes
vacuously: each answers every request the same way (or never), on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: One plausible chat chunk, sent again and again by the stream-forever stand-in.
FOREVER_CHUNK = (
    b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
)
FOREVER_INTERVAL_S = 0.05


def _json_everything(status: int, body: bytes) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body, content_type="application/json")

    return handle


async def _hold(request: web.Request) -> web.StreamResponse:
    """Accept the request and never answer (until the client or the server goes away)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _stream_forever(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    while True:
        await response.write(FOREVER_CHUNK)
        await asyncio.sleep(FOREVER_INTERVAL_S)


def _models_listed(handler: Handler) -> Handler:
    """``GET /v1/models`` lists a model (so the suite's preflight lets the run start); every
    other request goes to ``handler``."""
    listed = _json_everything(200, b'{"object":"list","data":[{"id":"gpt-4o","object":"model"}]}')

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path.rstrip("/") == "/v1/models":
            return await listed(request)
        return await handler(request)

    return handle


_REFUSE_401 = _json_everything(
    401,
    b'{"error":{"message":"Invalid API key","type":"invalid_request_error",'
    b'"param":null,"code":"invalid_api_key"}}',
)

HANDLERS: dict[str, Handler] = {
    "refuse-401": _REFUSE_401,
    # The preflight stops a run against the two above at once; these get past it.
    "refuse-401-listing-models": _models_listed(_REFUSE_401),
    "hold-listing-models": _models_listed(_hold),
    "refuse-404": _json_everything(
        404,
        b'{"error":{"message":"Not found","type":"invalid_request_error",'
        b'"param":null,"code":"not_found"}}',
    ),
    "empty-200": _json_everything(200, b"{}"),
    "hold": _hold,
    "stream-forever": _stream_forever,
}


class StandInRelay:
    """An aiohttp server (own loop, own thread) that answers every request with ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.url = ""
        self._handler = HANDLERS[kind]
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handler)
        # A short shutdown timeout: held and endless answers must not delay the test's end.
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> StandInRelay:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"stand-in relay {self.kind} did not start")
        return self

    async def _shutdown(self) -> None:
        # Held and endless answers are cancelled, not waited for.
        current = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not current:
                task.cancel()
        await self._runner.cleanup()

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def static_file_server(root: Path) -> Iterator[str]:
    """``python3 -m http.server`` on 127.0.0.1 serving ``root`` (issue #15: a relay URL that
    points at a plain web server). Yields its base URL."""
    (root / "index.html").write_text("<html><body><h1>It works</h1></body></html>\n")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("http.server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
