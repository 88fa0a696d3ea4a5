"""No false failures on legal SSE (issue #10 item 7): a relay whose streams use comments,
``event:``/``id:``/``retry:`` fields, CRLF or CR line ends, ``data:`` without the space, or
events split across TCP writes is a correct relay. Every MUST case of the streaming area (and
the SDK's stream case) passes against it; only the SHOULD case
``streaming.event-stream-canonical`` notes the non-canonical framing.

The relay is the reference relay behind a small rewriting proxy (127.0.0.1): ``/<variant>/v1/…``
is forwarded, and each SSE event of the answer is re-framed the ``<variant>`` way as it arrives.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, web

from relaygate.sse import SSEDecoder, SSEEvent
from relaygate.stack import EmbeddedStack

ROOT = Path(__file__).resolve().parents[1]

#: Under xdist the module's group starts first (conftest.py).
pytestmark = pytest.mark.long(30)


def _lines(event: SSEEvent) -> list[str]:
    return [f"data: {line}" for line in event.data.split("\n")]


def _comments(event: SSEEvent, n: int) -> list[bytes]:
    return [b": keep-alive\n\n", ("\n".join([": ping", *_lines(event)]) + "\n\n").encode()]


def _fields(event: SSEEvent, n: int) -> list[bytes]:
    head = ["event: message", f"id: {n}"] + (["retry: 3000"] if n == 0 else [])
    return [("\n".join([*head, *_lines(event)]) + "\n\n").encode()]


def _crlf(event: SSEEvent, n: int) -> list[bytes]:
    return [("\r\n".join(_lines(event)) + "\r\n\r\n").encode()]


def _cr(event: SSEEvent, n: int) -> list[bytes]:
    return [("\r".join(_lines(event)) + "\r\r").encode()]


def _nospace(event: SSEEvent, n: int) -> list[bytes]:
    return [("\n".join(f"data:{line}" for line in event.data.split("\n")) + "\n\n").encode()]


def _split(event: SSEEvent, n: int) -> list[bytes]:
    frame = ("\n".join(_lines(event)) + "\n\n").encode()
    return [frame[: len(frame) // 2], frame[len(frame) // 2 :]]


#: Variant -> how one event is written (a list of separate TCP writes).
VARIANTS: dict[str, Callable[[SSEEvent, int], list[bytes]]] = {
    "comments": _comments,
    "fields": _fields,
    "crlf": _crlf,
    "cr": _cr,
    "nospace": _nospace,
    "split": _split,
}
#: Variants whose bytes are still exactly OpenAI's 'data: <json>\n\n' frames.
CANONICAL = {"split"}


class ReframingProxy:
    """``/<variant>/…`` forwarded to ``target``; event-stream answers re-framed per variant."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        variant = request.match_info["variant"]
        reframe = VARIANTS[variant]
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type")
        }
        async with (
            ClientSession(timeout=ClientTimeout(total=60)) as http,
            http.request(
                request.method,
                self.target + "/" + request.match_info["tail"],
                params=request.query,
                data=await request.read(),
                headers=headers,
            ) as upstream,
        ):
            ctype = upstream.headers.get("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                body = await upstream.read()
                return web.Response(
                    status=upstream.status, body=body, headers={"Content-Type": ctype}
                )
            response = web.StreamResponse(
                status=upstream.status, headers={"Content-Type": "text/event-stream"}
            )
            await response.prepare(request)
            decoder, n = SSEDecoder(), 0
            async for chunk in upstream.content.iter_any():
                for event in decoder.feed(chunk):
                    for i, piece in enumerate(reframe(event, n)):
                        if i:
                            await asyncio.sleep(0.005)  # a separate TCP write
                        await response.write(piece)
                    n += 1
            await response.write_eof()
            return response

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{variant}/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> ReframingProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("reframing proxy did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _run_streaming_cases(proxy: str, stack: EmbeddedStack, variant: str, tmp: Path) -> Any:
    info = stack.info
    assert info is not None
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            str(ROOT / "conformance" / "test_streaming.py"),
            str(ROOT / "conformance" / "test_sdk.py") + "::test_stream",
            "--relay-url", f"{proxy}/{variant}", "--relay-key", info.relay_key,
            "--relay-admin-token", info.admin_token, "--upstream-url", info.upstream_url,
            "--report-dir", str(tmp),
        ],
        capture_output=True, text=True, timeout=180, check=False, cwd=ROOT,
    )  # fmt: skip
    report = tmp / "conformance.json"
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads(report.read_text())["cases"], proc.stdout[-3000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    stack = EmbeddedStack()
    stack.start()
    try:
        with (
            ReframingProxy(stack.info.relay_url if stack.info else "") as proxy,
            concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool,
        ):
            futures = {
                variant: pool.submit(
                    _run_streaming_cases,
                    proxy.url,
                    stack,
                    variant,
                    tmp_path_factory.mktemp(variant),
                )
                for variant in VARIANTS
            }
            yield {variant: future.result() for variant, future in futures.items()}
    finally:
        stack.stop()


@pytest.mark.timeout(400)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_legal_sse_passes_every_must_streaming_case(variant: str, results: Any) -> None:
    cases, tail = results[variant]
    must = {c["id"]: c["outcome"] for c in cases if c["level"] == "MUST"}
    assert "streaming.event-stream" in must and "sdk.stream" in must, tail
    assert set(must.values()) == {"passed"}, {k: v for k, v in must.items() if v != "passed"}
    canonical = next(c for c in cases if c["id"] == "streaming.event-stream-canonical")
    assert canonical["outcome"] == ("passed" if variant in CANONICAL else "failed"), canonical
