"""The usage area: its probes (``relaygate.suite.usage_probes``) and its cases
(``conformance/test_usage.py``) run in live mode against relays that cheat on usage or on the
model, as a customer would meet them.

The stand-in relays are a proxy on 127.0.0.1 in front of the embedded stack: an honest one,
and one that hides a same-family substitute. The suite runs with ``--relay-url`` and
``--relay-key`` only, so these runs also show the cases need no ground truth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from relaygate import tokens
from relaygate.profiles import ProfileError, load_profile
from relaygate.stack import EmbeddedStack, StackInfo
from relaygate.suite.usage_probes import (
    CANARY_RE,
    FAMILY_PROBE,
    canary_codes,
    canary_conversation,
    codes_in,
    conversation_probe,
    family_counts,
    is_snapshot_of,
    usage_numbers,
    visible_completion_tokens,
)

ROOT = Path(__file__).resolve().parents[1]


# -- probes ------------------------------------------------------------------------------------
def test_family_probe_tells_the_families_apart() -> None:
    counts = family_counts([{"role": "user", "content": FAMILY_PROBE}])
    # Pinned: a change of the probe text or of the vocab shows here first.
    assert counts == {"o200k_base": 91, "cl100k_base": 177}


def test_conversation_probe_has_every_role_and_a_known_count() -> None:
    messages = conversation_probe()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert family_counts(messages) == {"o200k_base": 127, "cl100k_base": 134}
    # Dropping any one message changes the count: truncation cannot hide.
    full = tokens.count_chat_prompt(messages, "gpt-4o")
    for i in range(len(messages)):
        rest = messages[:i] + messages[i + 1 :]
        assert tokens.count_chat_prompt(rest, "gpt-4o") < full - 5


def test_canary_codes_are_fresh_and_well_formed() -> None:
    codes = canary_codes(3, random.Random(1))
    assert len(set(codes)) == 3
    assert all(CANARY_RE.fullmatch(code) for code in codes)
    assert canary_codes(3, random.Random(2)) != codes


@pytest.mark.parametrize("size", [300, 2000])
def test_canary_conversation_places_the_codes_and_has_the_size(size: int) -> None:
    codes = canary_codes(3, random.Random(size))
    messages = canary_conversation(codes, size, "gpt-4o")
    assert messages[0]["role"] == "system" and codes[0] in messages[0]["content"]
    assert messages[-1]["role"] == "user" and codes[2] in messages[-1]["content"]
    assert messages[-1]["content"].startswith("Reply with the codes you see")
    middle = [m for m in messages[1:-1] if codes[1] in m["content"]]
    assert len(middle) == 1
    # Exactly the three codes, in order: the instruction carries no code-shaped example.
    assert codes_in(" ".join(m["content"] for m in messages)) == codes
    assert size * 0.8 <= tokens.count_chat_prompt(messages, "gpt-4o") <= size


@pytest.mark.parametrize(
    ("answered", "requested", "ok"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o", True),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo", True),
        ("gpt-4o-mini-2024-07-18", "gpt-4o", False),
        ("gpt-4o-mini", "gpt-4o", False),
        ("gpt-4-0613", "gpt-4", True),
        ("gpt-4-turbo", "gpt-4", False),
        ("gpt-4o", "gpt-4o", False),
    ],
)
def test_is_snapshot_of(answered: str, requested: str, ok: bool) -> None:
    assert is_snapshot_of(answered, requested) is ok


def test_usage_numbers_and_reasoning_tokens() -> None:
    assert usage_numbers({"prompt_tokens": 3, "completion_tokens": 4}) == (3, 4)
    assert usage_numbers({"prompt_tokens": 3}) is None
    assert usage_numbers({"prompt_tokens": True, "completion_tokens": 4}) is None
    assert usage_numbers({"prompt_tokens": -1, "completion_tokens": 4}) is None
    assert usage_numbers(None) is None
    reasoning = {"completion_tokens": 50, "completion_tokens_details": {"reasoning_tokens": 38}}
    assert visible_completion_tokens(reasoning) == 12
    assert visible_completion_tokens({"completion_tokens": 9}) == 9


def test_usage_profile_settings(tmp_path: Path) -> None:
    models = load_profile("faq").models
    assert models.usage_tolerance_tokens == 0
    assert models.answer_model_snapshot_ok is True
    assert models.usage_ladder_max_tokens == 2000
    head = 'extends = "faq"\nname = "r"\nrole = "relay"\n[models]\n'
    cheap = tmp_path / "cheap.toml"
    cheap.write_text(head + "usage_ladder_max_tokens = 600\n")
    # A cost bound is configuration: no deviation reason needed.
    assert load_profile(str(cheap)).models.usage_ladder_max_tokens == 600
    tolerant = tmp_path / "tolerant.toml"
    tolerant.write_text(head + "usage_tolerance_tokens = 3\n")
    with pytest.raises(ProfileError, match="usage_tolerance_tokens"):
        load_profile(str(tolerant))
    tolerant.write_text(
        head
        + "usage_tolerance_tokens = 3\n[models.deviations]\n"
        + 'usage_tolerance_tokens = { reason = "own counts", doc = "https://x.invalid/u#counts" }\n'
    )
    profile = load_profile(str(tolerant))
    assert profile.models.usage_tolerance_tokens == 3
    assert profile.deviation("models.usage_tolerance_tokens") == (
        "own counts (docs: https://x.invalid/u#counts)"
    )


# -- cheating relays ---------------------------------------------------------------------------
# The reference relay's fraud switches (inflate_usage, inject_system_prompt, truncate_history,
# swap_model_family, rewrite_model_field, substitute_model, downgrade_models) show each usage
# case failing, in both detection matrices. This stand-in adds the fraud none of them is: a
# same-family substitute whose answer names the model asked for, which only the twin probe sees.
def _hidden_substitute(body: dict[str, Any]) -> None:
    body["model"] = {"gpt-4o": "gpt-4o-mini"}.get(body["model"], body["model"])


Change = Callable[[dict[str, Any]], None]
#: fraud -> what it does to the request body (the answer then names the model asked for).
FRAUDS: dict[str, Change | None] = {"honest": None, "hidden_substitute": _hidden_substitute}

#: The cases each fraud must fail (full ids); the honest proxy fails none.
DETECTS: dict[str, set[str]] = {
    "honest": set(),
    "hidden_substitute": {"usage.models-differ[gpt-4o-vs-gpt-4o-mini]"},
}


class FraudProxy:
    """A relay in front of the embedded stack's relay that cheats the way ``fraud`` says.

    Answers are read whole and rewritten (streams event by event) to name the model asked
    for: a stand-in for dishonest routing, not a streaming relay.
    """

    def __init__(self, target: str, fraud: str) -> None:
        self.target = target
        self.fraud = fraud
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        change = FRAUDS[self.fraud]
        raw = await request.read()
        requested = None
        if raw and request.path.endswith("/chat/completions"):
            body = orjson.loads(raw)
            requested = body.get("model")
            if change is not None:
                change(body)
            raw = orjson.dumps(body)
        headers = {"Authorization": request.headers.get("Authorization", "")}
        if raw:
            headers["Content-Type"] = "application/json"
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.target + request.path_qs,
                data=raw or None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as answer,
        ):
            payload = await answer.read()
            content_type = answer.headers.get("Content-Type", "application/json")

        def rewrite(data: Any) -> Any:
            if isinstance(data, dict) and "model" in data and requested is not None:
                data["model"] = requested
            return data

        if content_type.startswith("text/event-stream"):
            lines = []
            for line in payload.decode().split("\n"):
                if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                    line = "data: " + orjson.dumps(rewrite(orjson.loads(line[6:]))).decode()
                lines.append(line)
            payload = "\n".join(lines).encode()
        elif content_type.startswith("application/json") and answer.status == 200:
            payload = orjson.dumps(rewrite(orjson.loads(payload)))
        return web.Response(
            status=answer.status, body=payload, headers={"Content-Type": content_type}
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=16 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> FraudProxy:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fraud proxy did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[StackInfo]:
    with EmbeddedStack() as info:
        yield info


def _run_usage_cases(url: str, key: str, out: Path) -> dict[str, str]:
    """Run the usage area in live mode against ``url``; full case id -> outcome."""
    command = [
        sys.executable, "-m", "pytest", str(ROOT / "conformance" / "test_usage.py"), "-q",
        "-p", "no:cacheprovider", "--relay-url", url, "--relay-key", key,
        "--report-dir", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    report = out / "conformance.json"
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(report.read_text())
    assert doc["mode"] == "live"
    return {case["id"]: case["outcome"] for case in doc["cases"]}


@pytest.mark.timeout(900)
def test_each_fraud_fails_exactly_its_cases(stack: StackInfo, tmp_path: Path) -> None:
    def run(fraud: str) -> dict[str, str]:
        with FraudProxy(stack.relay_url, fraud) as proxy:
            return _run_usage_cases(proxy.url, stack.relay_key, tmp_path / fraud)

    # Two suite runs at a time: light enough for a shared machine.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(FRAUDS, pool.map(run, FRAUDS), strict=True))
    # Every case runs in live mode and passes against an honest relay: nothing is skipped for
    # want of ground truth.
    assert set(runs["honest"].values()) == {"passed"}, runs["honest"]
    observed = {
        fraud: {case for case, outcome in outcomes.items() if outcome == "failed"}
        for fraud, outcomes in runs.items()
    }
    assert observed == DETECTS
