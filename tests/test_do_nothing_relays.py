"""No conformance case passes against a relay that does nothing useful (issue #10 item 5,
issue #15 item 4).

The whole suite runs (faq profile, a funded key, a real mock upstream for the journal, a short
``--relay-timeout``) against stand-in relays that answer 401, 404 or ``200 {}`` to everything,
never answer, stream forever, or are a plain static file server. Each run must fail, end within
its deadlines, and pass exactly the cases listed in ``ALLOWED_TO_PASS`` — each with the reason
its rule really holds there. The six runs go concurrently: they mostly wait on timeouts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mock_helpers import MockThread
from stand_in_relays import HANDLERS, StandInRelay, static_file_server

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-relaygate-client-000000"
RELAY_TIMEOUT_S = 2
#: Stand-ins that never answer (or never finish) make every request wait the whole timeout.
SLOW_KINDS = ("stream-forever", "hold", "hold-listing-models")
SLOW_RELAY_TIMEOUT_S = 1
#: pytest-timeout per case inside the runs: a backstop only (see test_every_case_ends_by_the
#: suite_s_own_deadline); the suite's own deadline (--relay-timeout) must end every case first.
CASE_BACKSTOP_S = 6
#: The whole run of one stand-in, however it goes.
RUN_LIMIT_S = 240

#: Case ids (parameters included) each stand-in may pass, each with why its rule holds there.
#: Every rule needs evidence a do-nothing relay cannot give (a served funded key, a journal
#: entry, a 200 stream with content, a billed request), so every set is empty.
ALLOWED_TO_PASS: dict[str, dict[str, str]] = {
    # refuses every key: no refusal means anything while the funded key is refused too
    "refuse-401": {},
    # 404 to everything: no "unknown path/model is 404" while known ones are 404 too
    "refuse-404": {},
    # 200 "{}" to everything: no chat completion, no stream, nothing forwarded
    "empty-200": {},
    # accepts and never answers: every request ends in the suite's timeout
    "hold": {},
    # as the two above, but GET /v1/models lists gpt-4o, so the preflight lets every case run;
    # listing a model is no case's whole rule (models.list-usable also needs the model served)
    "refuse-401-listing-models": {},
    "hold-listing-models": {},
    # 200 text/event-stream forever: no stream ever ends, no JSON answer ever comes
    "stream-forever": {},
    # python3 -m http.server: HTML and 404/501 pages, nothing an OpenAI client can use
    "static": {},
}
KINDS = list(ALLOWED_TO_PASS)
#: Stand-ins the suite's preflight refuses (funded key refused on GET /v1/models, or no
#: answer): the session stops before any case, with pytest's usage-error code 4.
PREFLIGHT_STOPS = {"refuse-401", "hold"}
assert set(KINDS) - {"static"} == set(HANDLERS)

#: Under xdist the module's group starts first (conftest.py).
pytestmark = pytest.mark.long(145)


def _run_suite(
    url: str, upstream_url: str, report_dir: Path, relay_timeout_s: int, backstop_s: int
) -> dict[str, Any]:
    started = time.monotonic()
    command = [
        sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-q",
        "-p", "no:cacheprovider", "-o", f"timeout={backstop_s}", "-o", "timeout_func_only=true",
        "--relay-url", url, "--relay-key", KEY, "--relay-profile", "faq",
        "--upstream-url", upstream_url, "--relay-timeout", str(relay_timeout_s),
        "--relay-fuzz-examples", "5", "--report-dir", str(report_dir),
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=RUN_LIMIT_S, check=False, cwd=ROOT
        )
        returncode, tail = proc.returncode, proc.stdout[-3000:] + proc.stderr[-1000:]
    except subprocess.TimeoutExpired as exc:
        returncode, tail = None, f"the run did not end within {RUN_LIMIT_S} s: {exc.stdout!r}"
    report = report_dir / "conformance.json"
    doc = json.loads(report.read_text()) if report.exists() else {"cases": []}
    return {
        "returncode": returncode,
        "elapsed_s": time.monotonic() - started,
        "backstop_s": backstop_s,
        "cases": doc["cases"],
        "tail": tail,
    }


def _run_against(kind: str, upstream_url: str, tmp: Path) -> dict[str, Any]:
    server: contextlib.AbstractContextManager[Any]
    server = static_file_server(tmp / "www") if kind == "static" else StandInRelay(kind)
    (tmp / "www").mkdir(parents=True, exist_ok=True)
    with server as running:
        url = running if isinstance(running, str) else running.url
        backstop_s = CASE_BACKSTOP_S
        timeout_s = SLOW_RELAY_TIMEOUT_S if kind in SLOW_KINDS else RELAY_TIMEOUT_S
        return _run_suite(url, upstream_url, tmp / "report", timeout_s, backstop_s)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    with (
        MockThread() as upstream,
        # Two at a time, the slow ones first: fast enough, and light enough for a shared
        # machine that the per-case backstop does not fire under load.
        concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool,
    ):
        order = sorted(KINDS, key=lambda kind: kind not in SLOW_KINDS)
        futures = {
            kind: pool.submit(_run_against, kind, upstream.url, tmp_path_factory.mktemp(kind))
            for kind in order
        }
        yield {kind: future.result() for kind, future in futures.items()}


@pytest.mark.timeout(RUN_LIMIT_S + 60)
@pytest.mark.parametrize("kind", KINDS)
def test_no_case_passes_without_its_rule_holding(kind: str, runs: dict[str, Any]) -> None:
    run = runs[kind]
    # 1: cases failed; 4: the preflight stopped the session (a refused funded key, no answer)
    # before any case ran, which is a failing verdict too.
    want = 4 if kind in PREFLIGHT_STOPS else 1
    assert run["returncode"] == want, f"the suite must fail against {kind}:\n{run['tail']}"
    if want == 1:
        assert any(c["outcome"] == "failed" for c in run["cases"]), run["tail"]
    passed = {c["id"] for c in run["cases"] if c["outcome"] == "passed"}
    assert passed == set(ALLOWED_TO_PASS[kind]), run["tail"]


@pytest.mark.timeout(RUN_LIMIT_S + 60)
@pytest.mark.parametrize("kind", KINDS)
def test_every_case_ends_by_the_suites_own_deadline(kind: str, runs: dict[str, Any]) -> None:
    """No case needs the pytest-timeout backstop: --relay-timeout ends every request, streams
    included (a total deadline, not one per read)."""
    run = runs[kind]
    assert run["returncode"] is not None, run["tail"]
    cut = [
        f"{c['id']} ({c['duration_s']:.1f} s)"
        for c in run["cases"]
        if "Timeout >" in c.get("details", "") or c["duration_s"] > run["backstop_s"] - 0.5
    ]
    assert not cut, f"cases ended only by the pytest-timeout backstop: {cut}"
