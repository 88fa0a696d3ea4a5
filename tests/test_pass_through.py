"""Pass-through relays (no model table, e.g. openai-forward, Portkey): with a profile whose
``no_channel`` is answered by the upstream (``status_from_upstream``), the case-variant case
checks that the name reaches the upstream exactly as given. Shown against a tiny forwarding
proxy (127.0.0.1) in front of the mock upstream: forwarding unchanged is the documented
deviation; a proxy that folds the case (remaps the name) fails."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from relaygate.stack import EmbeddedStack

ROOT = Path(__file__).resolve().parents[1]
PROFILE = """extends = "faq"
name = "forwarder"
role = "relay"
description = "forwards every request to one upstream; model names as given"
[errors.no_channel]
status_from_upstream = true
error_passthrough = true
deviation = "a forwarder has no model table: every name goes upstream as given, whose 404 returns"
doc = "https://docs.example.invalid/forwarder#model-names"
"""


class _Proxy:
    """``POST /v1/*`` forwarded to the upstream with its key; ``fold`` lowercases the model."""

    def __init__(self, upstream: str, key: str, *, fold: bool) -> None:
        self.upstream, self.key, self.fold = upstream, key, fold
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.fold and isinstance(body.get("model"), str):
            body["model"] = body["model"].lower()
        headers = {"Authorization": f"Bearer {self.key}"}
        async with (
            ClientSession() as http,
            http.post(self.upstream + request.path, json=body, headers=headers) as resp,
        ):
            data = await resp.read()
            ctype = resp.headers.get("Content-Type", "application/json")
            return web.Response(status=resp.status, body=data, content_type=ctype.split(";")[0])

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> _Proxy:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[EmbeddedStack]:
    embedded = EmbeddedStack()
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.mark.parametrize("fold", [False, True], ids=["forwards-as-given", "folds-case"])
def test_case_variant_on_a_pass_through_relay(
    fold: bool, stack: EmbeddedStack, tmp_path: Path
) -> None:
    info = stack.info
    assert info is not None
    profile = tmp_path / "forwarder.toml"
    profile.write_text(PROFILE)
    with _Proxy(info.upstream_url, info.upstream_key, fold=fold) as proxy:
        proc = subprocess.run(
            [
                sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-q",
                "-p", "no:cacheprovider", "-k", "case_variant_refused",
                "--relay-url", proxy.url, "--relay-key", "sk-relaygate-client-000000",
                "--relay-profile", str(profile), "--upstream-url", info.upstream_url,
                "--report-dir", str(tmp_path),
            ],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    doc = json.loads((tmp_path / "conformance.json").read_text())
    outcomes = {c["outcome"] for c in doc["cases"]}
    assert len(doc["cases"]) == 5, proc.stdout[-2000:]
    if fold:
        assert outcomes == {"failed"}, proc.stdout[-2000:]
        assert "never remapped" in doc["cases"][0]["details"]
    else:
        assert outcomes == {"deviation"}, proc.stdout[-2000:]
