"""Live mode (issue #12): the cases' live paths pass on a relay that honours the rule and fail
on one that breaks it, judged from a customer's evidence only (``--relay-url`` and
``--relay-key``, no journal).

The ``params`` cases the mock upstream cannot answer yet (logprobs, response_format, a forced
tool_choice) run against :class:`model_stand_in.ModelStandIn`; the others against the
embedded stack with a reference-relay fault switch (``live_paced_stack.run_live``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_paced_stack import run_live
from model_stand_in import KEY, ModelStandIn

from relaygate.suite.client import StreamEvent, StreamExchange
from relaygate.suite.live import judge_streamed, stream_timing

ROOT = Path(__file__).resolve().parents[1]
STAND_IN_CASES = {
    "params.logprobs": "logprobs",
    "params.response-format-json": "response_format",
    "params.tool-choice": "tools",
    "streaming.tool-calls": "tools",
}
STAND_IN_NODES = [
    "conformance/test_params.py::test_logprobs",
    "conformance/test_params.py::test_response_format_json",
    "conformance/test_params.py::test_tool_choice",
    "conformance/test_streaming.py::test_tool_calls",
]
#: reference-relay fault -> the live case ids it must fail (live mode, paced mock upstream)
LIVE_DETECTION: dict[str, list[str]] = {
    "buffer_streams": ["streaming.not-buffered"],
    "drop_finish_reason": [
        "streaming.finish-reason[length]",
        "streaming.finish-reason[stop]",
    ],
    "no_usage_chunk": ["streaming.usage-chunk[asked]", "streaming.matches-non-stream"],
    "always_usage_chunk": ["streaming.usage-chunk[not-asked]"],
    "leak_channel_key": ["security.channel-key-not-leaked"],
    "clamp_max_tokens": ["sdk.bad-request-error"],
    "drop_stop": ["params.stop"],
    "drop_n": ["params.n"],
    "drop_temperature": ["params.temperature-zero"],
}
LIVE_NODES = [
    "conformance/test_streaming.py",
    "conformance/test_params.py::test_stop",
    "conformance/test_params.py::test_n",
    "conformance/test_params.py::test_temperature_zero",
    "conformance/test_security.py::test_channel_key_not_leaked",
    "conformance/test_sdk.py::test_bad_request",
]


def _outcomes(url: str, key: str, nodes: list[str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="relaygate-live-") as out:
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--relay-url", url, "--relay-key", key, "--report-dir", out, *nodes,
        ]  # fmt: skip
        subprocess.run(command, capture_output=True, timeout=180, check=False, cwd=ROOT)
        doc: dict[str, Any] = json.loads((Path(out) / "conformance.json").read_text())
    return {c["id"]: c["outcome"] for c in doc["cases"]}


def test_stand_in_params_pass_when_honoured() -> None:
    with ModelStandIn() as relay:
        outcomes = _outcomes(relay.url, KEY, STAND_IN_NODES)
    assert outcomes == dict.fromkeys(STAND_IN_CASES, "passed")


@pytest.mark.parametrize("param", ["logprobs", "response_format", "tools"])
def test_stand_in_params_fail_when_dropped(param: str) -> None:
    with ModelStandIn(drop=frozenset({param})) as relay:
        outcomes = _outcomes(relay.url, KEY, STAND_IN_NODES)
    failed = {case for case, outcome in outcomes.items() if outcome == "failed"}
    assert failed == {case for case, p in STAND_IN_CASES.items() if p == param}, outcomes


def _stream(sent_ms: int, arrivals_ms: list[int]) -> StreamExchange:
    chunk = b'{"choices":[{"index":0,"delta":{"content":"x"}}]}'
    events = [StreamEvent(chunk.decode(), ms * 1_000_000) for ms in arrivals_ms]
    return StreamExchange(
        "POST", "u", 200, httpx.Headers(), b"", 0.0, "", events=events, sent_ns=sent_ms * 1_000_000
    )


def test_buffering_rule() -> None:
    streamed = stream_timing(_stream(0, [200, 400, 600, 800]))
    buffered = stream_timing(_stream(0, [800, 800, 801, 801]))
    assert streamed is not None and buffered is not None
    assert judge_streamed(streamed) and not judge_streamed(buffered)
    # a slow first token (a reasoning model) and a quick answer: still spread over a quarter
    assert judge_streamed(stream_timing(_stream(0, [600, 700, 800])))  # type: ignore[arg-type]
    with pytest.raises(pytest.skip.Exception, match="too fast"):
        judge_streamed(stream_timing(_stream(0, [50, 60, 70])))  # type: ignore[arg-type]


@pytest.mark.timeout(600)
def test_live_paths_pass_on_the_reference_relay() -> None:
    doc = run_live((), LIVE_NODES)
    outcomes = {c["id"]: c["outcome"] for c in doc["cases"]}
    live_cases = {case for cases in LIVE_DETECTION.values() for case in cases}
    assert {c: outcomes.get(c) for c in live_cases} == dict.fromkeys(live_cases, "passed"), doc[
        "tail"
    ]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fault", sorted(LIVE_DETECTION))
def test_live_paths_fail_on_their_fault(fault: str) -> None:
    doc = run_live((fault,), LIVE_NODES)
    failed = {c["id"] for c in doc["cases"] if c["outcome"] == "failed"}
    assert set(LIVE_DETECTION[fault]) <= failed, doc["tail"]
