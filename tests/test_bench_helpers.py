"""The benchmark's Locust user stays in step with the class it extends.

``benchmarks/_bench_relaygate_locustfile.py`` overrides ``RelaygateUser.report``; when the
plugin grew an argument, the override silently broke every relaygate benchmark row (no stream
recorded). Read with ``ast``: importing Locust here would monkey-patch this test process.
The control client (``benchmarks/_bench_control.py``, plain asyncio) is run against a local
server: keep-alive reuse, both body framings, the byte cap.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relaygate.load.histogram import Histogram

ROOT = Path(__file__).resolve().parent.parent


def _parameters(path: Path, cls: str, method: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    args = item.args
                    return [a.arg for a in (*args.args, *args.kwonlyargs)]
    raise AssertionError(f"{cls}.{method} not found in {path}")


def test_bench_user_report_takes_what_the_plugin_passes() -> None:
    plugin = _parameters(ROOT / "src/relaygate/load/locust_plugin.py", "RelaygateUser", "report")
    bench = _parameters(
        ROOT / "benchmarks/_bench_relaygate_locustfile.py", "BenchStreamingChatUser", "report"
    )
    assert bench == plugin


def _control() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_bench_control", ROOT / "benchmarks/_bench_control.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EVENT = b'data: {"choices":[{"delta":{"content":"hi"}}],"relaygate_emit_ns":%d}\n\n'


async def _serve(answer: Callable[[], bytes], requests: list[int]) -> asyncio.Server:
    """A keep-alive server: one ``answer()`` per request head (the body is skipped)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(id(writer))
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    writer.write(answer())
                    await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _chunked() -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for _ in range(3):
        event = _EVENT % time.monotonic_ns()
        out += b"%x\r\n%b\r\n" % (len(event), event)
    return out + b"0\r\n\r\n"


def _sized() -> bytes:
    body = b"".join(_EVENT % time.monotonic_ns() for _ in range(3))
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


@pytest.mark.parametrize("answer", [_chunked, _sized], ids=["chunked", "content-length"])
def test_control_client_reuses_its_connections(answer: Callable[[], bytes]) -> None:
    """The control client used to open one connection per stream (Connection: close)."""
    control = _control()

    async def run() -> dict[str, Any]:
        accepted: list[int] = []
        server = await _serve(answer, accepted)
        port = server.sockets[0].getsockname()[1]
        out = {"ttft": Histogram(), "event": Histogram(), "itl": Histogram()}
        out.update(ttft_excess=Histogram(), streams=0, events=0, failed=0, connections=0)
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        async with server:
            deadline = time.monotonic() + 0.3
            await asyncio.gather(
                *(control.user("127.0.0.1", port, request, deadline, out, 0) for _ in range(2))
            )
            await asyncio.sleep(0.05)  # the server's handlers see the clients close
        out["accepted"] = len(accepted)
        return out

    out = asyncio.run(run())
    assert out["failed"] == 0
    assert out["connections"] == out["accepted"] == 2
    assert out["streams"] > 2
    assert out["events"] == 3 * out["streams"]


def test_control_client_bounds_a_stream_that_never_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunked answer with no end is cut at the byte cap and counted as failed."""
    control = _control()
    monkeypatch.setattr(control, "STREAM_MAX_BYTES", 4096)
    endless = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"6\r\ndata: \r\n" * 2000

    async def run() -> dict[str, Any]:
        server = await _serve(lambda: endless, [])
        port = server.sockets[0].getsockname()[1]
        out = {"ttft": Histogram(), "event": Histogram(), "itl": Histogram()}
        out.update(ttft_excess=Histogram(), streams=0, events=0, failed=0, connections=0)
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
        async with server:
            deadline = time.monotonic() + 0.05
            await control.user("127.0.0.1", port, request, deadline, out, None)
            await asyncio.sleep(0.05)
        return out

    out = asyncio.run(run())
    assert out["failed"] >= 1
    assert out["streams"] == 0
