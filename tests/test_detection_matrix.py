"""Detection matrix: the conformance suite passes against the reference relay, and every
fault switch makes exactly the cases that check the broken rule fail.

Each run is the real suite (``pytest conformance``) in a subprocess. Four embedded stacks serve
the runs, four at a time; before each run its stack's reference relay gets the fault switched
on through the admin API (``PUT /api/admin/settings``), as ``--fault`` does at start. The table
below is the contract: a fault that stops being detected, or a case that starts failing for a
fault that does not touch its rule, fails this test.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relaygate.relay.faults import FAULTS
from relaygate.stack import EmbeddedStack

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 4

# fault -> the case ids (without parameters) that check the rule the fault breaks.
DETECTS: dict[str, set[str]] = {
    "buffer_streams": {"streaming.not-buffered"},
    "bill_failed": {
        "quota.refund-on-upstream-error",
        "quota.refund-on-transport-failure",
        "max_tokens.not-billed",
    },
    "fold_model_case": {"models.case-variant-refused", "models.case-variant-not-billed"},
    "drop_done": {"streaming.event-stream", "streaming.upstream-framing-tolerated"},
    "html_404": {"errors.unknown-path"},
    "wrong_quota_status": {
        "quota.token-exhausted",
        "quota.user-exhausted",
        "quota.unlimited-bounded-by-user",
        "sdk.permission-denied-error",
    },
    "forward_client_key": {"security.client-key-not-forwarded"},
    "ignore_rate_limit": {
        "rate_limits.429-shape",
        "rate_limits.refused-before-upstream",
        "rate_limits.retry-after-honest",
    },
    "racy_billing": {"quota.parallel-no-overdraw"},
    "fake_finish_reason": {
        "streaming.upstream-error-surfaces",
        "streaming.upstream-disconnect-surfaces",
    },
    "drop_retry_after": {
        "rate_limits.429-shape",
        "rate_limits.retry-after-honest",
        "rate_limits.upstream-429-passthrough",
    },
    "rewrite_429": {"rate_limits.upstream-429-passthrough", "sdk.rate-limit-error"},
    "same_auth_message": {"auth.refused", "auth.distinct-messages"},
    "ignore_expiry": {"auth.refused", "auth.refused-before-upstream"},
    "leak_channel_key": {"security.channel-key-not-leaked"},
    "no_usage_chunk": {"streaming.usage-chunk", "sdk.stream"},
    "always_usage_chunk": {"streaming.usage-chunk"},
    "substitute_model": {"models.exact-name-forwarded", "sdk.chat"},
    "clamp_max_tokens": {
        "max_tokens.forwarded-unchanged",
        "max_tokens.upstream-400-intact",
        "max_tokens.not-billed",
        "sdk.bad-request-error",
    },
    "no_cors": {"errors.cors-preflight"},
    "no_body_limit": {"errors.body-too-large"},
    "accept_query_key": {"security.query-key-rejected"},
    "retry_4xx": {"max_tokens.upstream-400-intact"},
    "round_billing": {"quota.formula", "quota.stream-billed-from-usage"},
    "bearer_case_sensitive": {"auth.bearer-scheme-case"},
    "same_quota_message": {
        "quota.token-exhausted",
        "quota.user-exhausted",
        "quota.token-vs-user-distinct",
        "quota.unlimited-bounded-by-user",
    },
    "list_all_models": {"models.list-exact", "models.list-usable"},
    "ignore_allow_list": {"models.allow-list"},
    "unknown_model_200": {"models.unknown-id", "sdk.not-found-error"},
    "crash_on_bad_json": {"errors.invalid-json"},
    "missing_model_503": {"errors.missing-model", "properties.refusals-are-json"},
    "html_405": {"errors.wrong-method"},
    "passthrough_html_errors": {"errors.upstream-error"},
    "pass_200_error": {"errors.upstream-error"},
    "normalize_finish_reason": {"streaming.finish-reason", "streaming.tool-calls"},
    "drop_tool_calls": {"streaming.tool-calls"},
    "strict_data_prefix": {"streaming.upstream-framing-tolerated"},
    "bill_estimate_on_disconnect": {"quota.client-disconnect-billed-at-most-full"},
    "billing_usage_in_usd": {"quota.billing-endpoints"},
    "html_content_type": {"auth.funded-key-works"},
    "public_log_stream": {"security.no-key-in-public-endpoints"},
    "unknown_key_403": {"auth.refused", "sdk.authentication-error"},
    "ignore_group_ratio": {"quota.formula-group"},
    "ignore_completion_ratio": {
        "quota.formula",
        "quota.formula-group",
        "quota.parallel-no-overdraw",
        "quota.stream-billed-from-usage",
        "quota.billing-endpoints",
    },
}

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("RELAYGATE_SKIP_MATRIX") == "1", reason="RELAYGATE_SKIP_MATRIX=1"
    ),
    # The first test pays for every suite run (the module fixture): about 2-4 minutes.
    pytest.mark.timeout(900),
]


def _run_suite(stack: EmbeddedStack, fault: str | None, report_dir: Path) -> dict[str, Any]:
    info = stack.info
    assert info is not None
    stack.admin("PUT", "/api/admin/settings", {"faults": [fault] if fault else []})
    args = [sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-q"]
    args += ["-p", "no:cacheprovider", "--report-dir", str(report_dir)]
    args += ["--relay-url", info.relay_url, "--relay-key", info.relay_key]
    args += ["--relay-admin-token", info.admin_token, "--upstream-url", info.upstream_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = report_dir / "conformance.json"
    if not report.exists():
        output = proc.stdout[-3000:] + "\n" + proc.stderr[-2000:]
        pytest.fail(f"the suite wrote no report (fault {fault}):\n{output}")
    doc: dict[str, Any] = json.loads(report.read_text())
    doc["_stdout"] = proc.stdout
    return doc


def _base(case_id: str) -> str:
    return case_id.split("[", 1)[0]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, dict[str, Any]]:
    runs: list[str | None] = [None, *sorted(FAULTS)]
    stacks: queue.Queue[EmbeddedStack] = queue.Queue()
    started: list[EmbeddedStack] = []

    # mktemp is not thread-safe: make every report folder here, before the threads start.
    dirs = {fault: tmp_path_factory.mktemp(fault or "baseline") for fault in runs}

    def run(fault: str | None) -> dict[str, Any]:
        stack = stacks.get()
        try:
            return _run_suite(stack, fault, dirs[fault])
        finally:
            stacks.put(stack)

    try:
        for _ in range(WORKERS):
            stack = EmbeddedStack()
            stack.start()
            started.append(stack)
            stacks.put(stack)
        with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = {fault: pool.submit(run, fault) for fault in runs}
            return {fault: future.result() for fault, future in futures.items()}
    finally:
        for stack in started:
            stack.stop()


def test_every_fault_has_an_expected_detection() -> None:
    assert set(DETECTS) == set(FAULTS)


def test_reference_relay_passes(matrix: dict[str | None, dict[str, Any]]) -> None:
    doc = matrix[None]
    failed = [c["id"] for c in doc["cases"] if c["outcome"] == "failed"]
    assert not failed, doc["_stdout"][-4000:]
    skipped = [c for c in doc["cases"] if c["outcome"] == "skipped"]
    assert all(c["reason"] for c in skipped)


def test_every_case_is_caught_by_some_fault(matrix: dict[str | None, dict[str, Any]]) -> None:
    """A case that no faulty relay makes fail is a case that cannot fail."""
    cases = {_base(c["id"]) for c in matrix[None]["cases"]}
    caught = set().union(*DETECTS.values())
    assert cases - caught == set(), "cases no fault switch detects"
    assert caught - cases == set(), "the table names cases the suite does not have"


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_detected_by_exactly_its_cases(
    fault: str, matrix: dict[str | None, dict[str, Any]]
) -> None:
    doc = matrix[fault]
    failed = {_base(c["id"]) for c in doc["cases"] if c["outcome"] == "failed"}
    assert failed == DETECTS[fault], (
        f"fault {fault} ({FAULTS[fault]}): failed {sorted(failed)}, expected "
        f"{sorted(DETECTS[fault])}"
    )
