"""Every request the harness sends is bounded: stand-in servers on 127.0.0.1 that drip forever,
drip their headers, or send 50 MB make the admin API client and the relay health check fail
within the deadline, with one line naming the URL (keys masked) and the bound."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop
from aiohttp import web

from relaygate.bounded import ByteCapExceeded, DeadlineExceeded, bounded_client
from relaygate.provision import ProvisioningError
from relaygate.provision.newapi import NewAPIProvisioner
from relaygate.provision.oneapi import OneAPIProvisioner
from relaygate.provision.reference import ReferenceProvisioner
from relaygate.suite.client import UpstreamJournal
from relaygate.thirdparty.launcher import RelayLauncher, RelayStartError

ADMIN_TOKEN = "sk-relaygate-admin-0123456789abcdef"
FIFTY_MB = 50 * 1024 * 1024


async def _drip(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"success": true, "data": ')
    while True:  # a byte every 50 ms, forever: no per-operation timeout ever fires
        await response.write(b" ")
        await asyncio.sleep(0.05)


async def _flood(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b" " * (1024 * 1024)
    for _ in range(FIFTY_MB // len(chunk)):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _drip_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
    try:
        while True:
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(0.05)
    except (ConnectionError, OSError):
        writer.close()


class StandIn:
    """An aiohttp app (every path) and a raw header-dripping server, in one loop thread."""

    def __init__(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/drip/{tail:.*}", _drip)
        app.router.add_route("*", "/flood/{tail:.*}", _flood)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self._loop = uvloop.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = self.raw_port = 0

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        raw = loop.run_until_complete(asyncio.start_server(_drip_headers, "127.0.0.1", 0))
        self.raw_port = raw.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        raw.close()
        loop.run_until_complete(self._runner.cleanup())

    def __enter__(self) -> StandIn:
        self._thread.start()
        assert self._ready.wait(10), "stand-in server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def url(self, behaviour: str) -> str:
        if behaviour == "drip-headers":
            return f"http://127.0.0.1:{self.raw_port}"
        return f"http://127.0.0.1:{self.port}/{behaviour}"


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


def _timed(call: Any) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        call()
    return info.value, time.monotonic() - started


@pytest.mark.parametrize(
    ("behaviour", "timeout_s", "bound"),
    [
        ("drip", 0.5, "no complete answer within 0.5 s (total deadline)"),
        ("drip-headers", 0.5, "no complete answer within 0.5 s (total deadline)"),
        ("flood", 10.0, "answer longer than 16 MiB (byte cap)"),
    ],
)
@pytest.mark.parametrize("adapter", [OneAPIProvisioner, NewAPIProvisioner, ReferenceProvisioner])
def test_admin_api_that_drips_or_floods_fails_within_its_bounds(
    stand_in: StandIn, adapter: Any, behaviour: str, timeout_s: float, bound: str
) -> None:
    prov = adapter(stand_in.url(behaviour), ADMIN_TOKEN, timeout_s=timeout_s, run_id="t1")
    try:
        error, elapsed_s = _timed(prov.funded_key)
    finally:
        prov.close()
    assert isinstance(error, ProvisioningError)
    message = str(error)
    assert elapsed_s < timeout_s + 2.5, message
    assert bound in message and stand_in.url(behaviour) in message
    assert ADMIN_TOKEN not in message and "\n" not in message


def test_newapi_bootstrap_against_a_dripping_relay_fails_within_the_deadline(
    stand_in: StandIn,
) -> None:
    error, elapsed_s = _timed(
        lambda: NewAPIProvisioner.bootstrap(
            stand_in.url("drip"), "root", "root-password-1", timeout_s=0.5
        )
    )
    assert isinstance(error, ProvisioningError)
    assert "POST " in str(error) and "(total deadline)" in str(error)
    assert "root-password-1" not in str(error)
    assert elapsed_s < 3.0


def test_bounded_client_masks_keys_in_the_url(stand_in: StandIn) -> None:
    with (
        bounded_client(timeout_s=0.3, secrets=[ADMIN_TOKEN]) as http,
        pytest.raises(DeadlineExceeded) as info,
    ):
        http.get(stand_in.url("drip") + "/x", params={"key": ADMIN_TOKEN})
    assert ADMIN_TOKEN not in str(info.value) and "sk-rel…def" in str(info.value)
    assert isinstance(info.value, httpx.HTTPError)  # existing `except httpx.HTTPError` holds


def test_bounded_client_streamed_answer_is_capped(stand_in: StandIn) -> None:
    with (
        bounded_client(timeout_s=10.0, max_bytes=1000) as http,
        pytest.raises(ByteCapExceeded, match=r"longer than 1000 bytes \(byte cap\)"),
        http.stream("GET", stand_in.url("flood") + "/x") as response,
    ):
        for _ in response.iter_raw():
            pass


class _Alive:
    """A process that is still running (the health wait polls it)."""

    def poll(self) -> None:
        return None


@pytest.mark.parametrize("behaviour", ["drip", "drip-headers", "flood"])
def test_relay_health_check_is_bounded(
    stand_in: StandIn, behaviour: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaygate.thirdparty import launcher as launcher_mod

    monkeypatch.setattr(launcher_mod, "HEALTH_PROBE_TIMEOUT_S", 0.5)
    launcher = object.__new__(RelayLauncher)
    log = tmp_path / "relay.log"
    log.write_text("")
    error, elapsed_s = _timed(
        lambda: launcher._wait_http(
            _Alive(),  # type: ignore[arg-type]
            stand_in.url(behaviour) + "/health",
            log,
            "relay",
            1.0,
            ADMIN_TOKEN,
        )
    )
    assert isinstance(error, RelayStartError)
    first_line = str(error).splitlines()[0]
    assert elapsed_s < 4.0, first_line
    bound = "(byte cap)" if behaviour == "flood" else "(total deadline)"
    assert bound in first_line and ADMIN_TOKEN not in str(error)


@pytest.mark.parametrize("behaviour", ["drip", "flood"])
def test_upstream_journal_health_is_bounded(stand_in: StandIn, behaviour: str) -> None:
    journal = UpstreamJournal(stand_in.url(behaviour), timeout_s=0.5, max_bytes=1024)
    try:
        started = time.monotonic()
        assert journal.healthy() is False
        assert time.monotonic() - started < 3.0
    finally:
        journal.close()


@pytest.mark.parametrize(
    ("behaviour", "bound"), [("drip", "(total deadline)"), ("flood", "(byte cap)")]
)
def test_bench_control_call_is_bounded(
    stand_in: StandIn, behaviour: str, bound: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relaygate.cli import bench

    monkeypatch.setattr(bench, "_CONTROL_TIMEOUT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=re.escape(bound)) as info:
        asyncio.run(bench._control("127.0.0.1", stand_in.port, "GET", f"/{behaviour}/stats"))
    assert f"GET http://127.0.0.1:{stand_in.port}/{behaviour}/stats" in str(info.value)
    assert time.monotonic() - started < 3.0
