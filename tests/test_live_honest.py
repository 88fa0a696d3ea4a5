"""The live audit is honest (issue #12): the suite in live mode (``--relay-url`` and
``--relay-key`` only) against the reference relay in front of a mock upstream that behaves like
a real model (``--ignore-directives``: a ``[[relaygate ...]]`` directive is plain prompt text,
never obeyed, and plain answers are paced like a model's) fails no case. A live case that
leans on the mock obeying a directive fails here (a false failure on a real relay) or sends a
directive that asks for behaviour (a vacuous check there): both are caught.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_stack import LiveStack
from mock_helpers import MockThread, request

from relaygate.cli import mock_upstream
from relaygate.mock.config import MockConfig

#: Live cases that executed (passed or failed) on 2026-12-04: fewer means a live path turned
#: into a skip, which needs a reason in review.
MIN_EXECUTED = 85
_DIRECTIVE = re.compile(r"\[\[relaygate\b([^\]]*)\]\]")

CHAT = "/v1/chat/completions"
DIRECTED = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hello [[relaygate error=503 chunks=5]]"}],
}


def test_ignore_directives_makes_the_mock_answer_like_a_model() -> None:
    with MockThread() as obeying:
        assert request(obeying.port, "POST", CHAT, DIRECTED).status == 503
    with MockThread(MockConfig(ignore_directives=True)) as model:
        answer = request(model.port, "POST", CHAT, DIRECTED)
        assert answer.status == 200
        assert answer.json()["choices"][0]["message"]["content"]


def test_ignore_directives_flag() -> None:
    parser = argparse.ArgumentParser()
    mock_upstream.add_arguments(parser)
    assert parser.parse_args(["--ignore-directives"]).ignore_directives is True
    assert parser.parse_args([]).ignore_directives is False


def _behaviour_directives(journal: list[dict[str, Any]]) -> dict[str, int]:
    """Directives with more than a tag that reached the upstream: a live case asking a model
    for behaviour it cannot give (a tag only labels a request and asks for nothing)."""
    found: dict[str, int] = {}
    for entry in journal:
        for fields in _DIRECTIVE.findall(json.dumps(entry.get("body"))):
            if any(not f.startswith("tag=") for f in fields.split()):
                found[fields.strip()] = found.get(fields.strip(), 0) + 1
    return found


@pytest.mark.timeout(900)
@pytest.mark.long(125)  # under xdist: started first (conftest.py)
def test_live_suite_fails_nothing_when_the_upstream_obeys_no_directive(tmp_path: Path) -> None:
    with LiveStack(ignore_directives=True) as stack:
        code, doc, output = stack.run(["conformance"], report_dir=tmp_path)
        assert stack.info is not None
        journal = httpx.get(
            f"{stack.info.upstream_url}/_relaygate/journal", params={"limit": 10_000}, timeout=30
        ).json()["data"]
    assert doc is not None and doc["mode"] == "live", output[-3000:]
    cases = doc["cases"]
    counts: dict[str, int] = {}
    for case in cases:
        counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
    executed = counts.get("passed", 0) + counts.get("failed", 0)
    print(f"live mode, directives ignored: {len(cases)} cases, {executed} executed, {counts}")
    failed = {c["id"]: c["reason"] for c in cases if c["outcome"] == "failed"}
    assert not failed, (code, failed)
    assert executed >= MIN_EXECUTED, counts
    assert not _behaviour_directives(journal)


#: The live paths of the cases that used to lean on directives, each failing on its fault with
#: a mock that obeys none (not vacuous): fault switch -> the case it must fail.
LIVE_PATH_DETECTIONS = {
    "drop_done": "streaming.event-stream",
    "sse_keepalive_comments": "streaming.event-stream-canonical",
    "rewrite_model_field": "sdk.chat",
    "drop_finish_reason": "sdk.stream",
}
LIVE_PATH_NODES = [
    "conformance/test_streaming.py::test_event_stream",
    "conformance/test_streaming.py::test_event_stream_canonical",
    "conformance/test_sdk.py::test_chat",
    "conformance/test_sdk.py::test_stream",
]


@pytest.mark.timeout(600)
def test_live_paths_without_directives_fail_on_their_fault(tmp_path: Path) -> None:
    outcomes: dict[str, dict[str, str]] = {}
    with LiveStack(ignore_directives=True) as stack:
        stack.snapshot()
        for fault in ["", *LIVE_PATH_DETECTIONS]:
            stack.restore([fault] if fault else [])
            _, doc, output = stack.run(LIVE_PATH_NODES, report_dir=tmp_path / (fault or "none"))
            assert doc is not None, output[-3000:]
            outcomes[fault] = {c["id"]: c["outcome"] for c in doc["cases"]}
    assert set(outcomes[""].values()) == {"passed"}, outcomes[""]
    for fault, case in LIVE_PATH_DETECTIONS.items():
        assert outcomes[fault][case] == "failed", (fault, outcomes[fault])
