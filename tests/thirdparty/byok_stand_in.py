"""A bring-your-own-key pass-through relay in front of a mock upstream, the way Portkey's
gateway works: no keys of its own, the client's ``Authorization`` goes to the provider, the
query string does not. ``leak_query_key`` makes it pass a ``?key=`` on as ``x-api-key`` (the
defect ``security.query-key-rejected`` must catch on such a relay although the OpenAI-style
provider refuses that request) and add a usable key of its own beside a ``Basic`` credential
(the defect ``auth.refused-before-upstream`` must still catch on a BYOK relay)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

import httpx
from aiohttp import web

from relaygate.thirdparty.launcher import free_port

UPSTREAM_KEY = "sk-relaygate-byok-provider-key-0123456789"


class ByokStandIn:
    """The mock upstream (a child process) and the pass-through relay (own loop, own thread)."""

    def __init__(self, log_dir: Path, *, leak_query_key: bool = False) -> None:
        self.leak_query_key = leak_query_key
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream_url = ""
        self._mock: subprocess.Popen[bytes] | None = None
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        # Without a key Portkey sends "Bearer undefined".
        headers["authorization"] = request.headers.get("authorization", "Bearer undefined")
        if self.leak_query_key and "key" in request.query:
            headers["x-api-key"] = request.query["key"]
        if self.leak_query_key and headers["authorization"].startswith("Basic "):
            headers["x-api-key"] = UPSTREAM_KEY  # a shared key of its own, beside the client's
        async with httpx.AsyncClient(timeout=30.0) as http:
            answer = await http.request(
                request.method,
                f"{self.upstream_url}{request.path}",  # the query string stays behind
                headers=headers,
                content=await request.read(),
            )
        return web.Response(
            status=answer.status_code,
            body=answer.content,
            content_type=answer.headers.get("content-type", "application/json").split(";")[0],
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> ByokStandIn:
        port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "mock-upstream.log").open("wb") as log:
            argv = [sys.executable, "-m", "relaygate", "mock-upstream"]
            self._mock = subprocess.Popen(
                [*argv, "--port", str(port), "--key", UPSTREAM_KEY],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self._mock.stdout is not None
        ready = json.loads(self._mock.stdout.readline() or b"{}")
        self.upstream_url = str(ready.get("url") or f"http://127.0.0.1:{port}").rstrip("/")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        if self._mock is not None:
            self._mock.terminate()
            self._mock.wait(10)
            if self._mock.stdout is not None:
                self._mock.stdout.close()
