"""The customer's audit report (issue #12): the mode a run had, a failure's structured evidence,
``reports/audit.md`` and the page's audit section; no key anywhere in them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from relaygate.report.audit import build_audit, main, relay_host, render_markdown, severity
from relaygate.report.page import render_page
from relaygate.suite.failures import CaseFailure, fail, parse_evidence, require
from relaygate.suite.results import CaseMeta, CaseResult, run_mode, write_reports

pytest_plugins = ["pytester"]

KEY = "sk-audit-test-SECRET-0123456789"
OTHER = "rg-admin-SECRET-TOKEN-42"  # not key-shaped: only known-secret masking catches it
CURL = (
    "curl -sS -X POST https://relay.example/v1/chat/completions "
    f"-H 'Authorization: Bearer {KEY}' --data-raw '{{\"model\": \"gpt-4o\"}}'"
)
EVIDENCE: dict[str, Any] = {
    "confidence": "exact",
    "counts": {"local prompt tokens": 12, "reported prompt_tokens": 40, "billed quota": 600},
    "excerpt": '{"usage": {"prompt_tokens": 40}}',
    "model_requested": "gpt-4o",
    "model_served": "gpt-4o",
    "method": "tiktoken o200k_base",
}


# conformance.json's live_cost as the live cost meter writes it (relaygate.suite.budget)
LIVE_COST: dict[str, Any] = {
    "requests": 41,
    "refused_requests": 3,
    "prompt_tokens": 900,
    "completion_tokens": 120,
    "quota": 7380,
    "usd": 0.01230,
    "worst_case_quota": 12000,
    "worst_case_usd": 0.02,
    "max_tokens": 16,
    "budget_quota": 300000,
    "budget_usd": 0.5,
    "stopped_by_budget": True,
    "priced_with": "the profile's ratios, tokens counted locally (relaygate.tokens)",
}


def _failure_text(**kwargs: Any) -> str:
    with pytest.raises(CaseFailure) as info:
        require(
            False,
            "usage.prompt_tokens is the prompt's token count",
            "12 prompt tokens",
            "40 prompt tokens",
            CURL,
            (KEY,),
            **kwargs,
        )
    return str(info.value)


# -- evidence ---------------------------------------------------------------------------------
def test_require_carries_structured_evidence_through_the_failure_text() -> None:
    text = _failure_text(evidence=EVIDENCE)
    assert parse_evidence(text) == EVIDENCE
    assert KEY not in text
    # the human-readable parts are where they were: requirement, expected, actual, curl
    lines = text.splitlines()
    assert lines[0].startswith("-> usage.prompt_tokens")
    assert lines[3].strip().startswith("Evidence: {")
    assert lines[4].strip().startswith("Reproduce: curl")


def test_existing_callers_are_unchanged_and_a_bad_evidence_never_hides_the_failure() -> None:
    assert "Evidence:" not in _failure_text()
    assert parse_evidence(_failure_text()) is None
    odd = {"confidence": "certain", "counts": {"n": "many", "ok": 3, "flag": True}, "x": object()}
    text = _failure_text(evidence=odd)
    assert parse_evidence(text) == {"counts": {"ok": 3}}
    with pytest.raises(CaseFailure, match="Evidence"):
        fail("r", 1, 2, evidence={"excerpt": "a" * 20_000})
    try:
        fail("r", 1, 2, evidence={"excerpt": "a" * 20_000})
    except CaseFailure as exc:
        [line] = [x for x in str(exc).splitlines() if "Evidence:" in x]
        assert len(line) < 700 and "(20000 chars)" in line


def test_the_case_result_writes_the_evidence_key() -> None:
    meta = CaseMeta(id="quota.x", title="t", area="quota")
    failed = CaseResult(meta, "failed", "r", 0.1, details=_failure_text(evidence=EVIDENCE))
    assert failed.to_json()["evidence"] == EVIDENCE
    assert "evidence" not in CaseResult(meta, "failed", "r", 0.1, details="plain").to_json()


# -- the mode ---------------------------------------------------------------------------------
def test_the_mode_says_what_ground_truth_the_run_had() -> None:
    live = run_mode(relay_key=True, admin_api=False, upstream_journal=False)
    assert live.name == "live"
    assert live.to_json()["missing"] == ["admin_api", "upstream_journal"]
    assert live.describe() == (
        "live: had a funded key; without the admin API, the mock upstream's journal"
    )
    assert run_mode(relay_key=True, admin_api=True, upstream_journal=False).name == "partial"
    assert run_mode(relay_key=False, admin_api=False, upstream_journal=True).name == "partial"
    full = run_mode(relay_key=True, admin_api=True, upstream_journal=True, embedded=True)
    assert (full.name, full.missing) == ("mock", ())


def _results() -> list[CaseResult]:
    def meta(cid: str, area: str, level: str = "MUST") -> CaseMeta:
        return CaseMeta(id=cid, title=f"title of {cid}", area=area, level=level)

    return [
        CaseResult(meta("auth.ok", "auth"), "passed", "", 0.1),
        CaseResult(
            meta("quota.usage-honest", "quota"),
            "failed",
            "usage.prompt_tokens is the prompt's token count",
            0.2,
            details=_failure_text(evidence=EVIDENCE),
        ),
        CaseResult(
            meta("streaming.not-buffered", "streaming", "SHOULD"),
            "failed",
            "tokens arrive as they are made",
            0.2,
            details=_failure_text(evidence={"confidence": "statistical"}),
        ),
        CaseResult(
            meta("models.exact-name-forwarded", "models"),
            "skipped",
            "needs ground truth: pass --upstream-url (the relaygate mock upstream)",
            0.0,
        ),
        CaseResult(meta("errors.x", "errors"), "deviation", "one-api answers 500", 0.0),
    ]


def _write(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    write_reports(
        tmp_path,
        _results(),
        relay_url=f"https://user:{OTHER}@relay.example:8443/v1?key={KEY}",
        profile="faq",
        mode="live",
        started_at=dt.datetime(2026, 12, 4, 17, 0, tzinfo=dt.UTC),
        duration_s=3.0,
        secrets=(KEY, OTHER),
        **kwargs,
    )
    doc: dict[str, Any] = json.loads((tmp_path / "conformance.json").read_text())
    return doc


def test_conformance_json_records_the_mode_the_version_models_and_cost(tmp_path: Path) -> None:
    mode = run_mode(relay_key=True, admin_api=False, upstream_journal=False)
    cost = {"usd": 0.0123, "budget_usd": 0.5, "requests": 41}
    doc = _write(tmp_path, mode_detail=mode, models=["gpt-4o"], extra={"live_cost": cost})
    assert doc["mode"] == "live"  # the old key keeps its old value
    assert doc["run_mode"] == mode.to_json()
    assert doc["relaygate_version"]
    assert doc["models"] == ["gpt-4o"] and doc["live_cost"] == cost
    assert "live: had a funded key" in (tmp_path / "conformance.html").read_text()


def test_without_the_mode_detail_the_report_marks_what_it_does_not_know(tmp_path: Path) -> None:
    doc = _write(tmp_path)
    assert doc["run_mode"]["name"] == "live"
    assert doc["run_mode"]["missing"] == ["upstream_journal"]
    assert doc["run_mode"]["unknown"] == ["relay_key", "admin_api"]
    assert "models" not in doc and "live_cost" not in doc


def test_without_the_mode_detail_a_missing_admin_api_is_read_from_the_skips(
    tmp_path: Path,
) -> None:
    no_admin = CaseResult(
        CaseMeta(id="auth.refused", title="t", area="auth"),
        "skipped",
        "cannot provision the key this case needs: no key for state EXPIRED: set "
        "RELAYGATE_KEY_EXPIRED (or pass it in the static keys), or give an admin token so the "
        "harness can create one",
        0.0,
    )
    write_reports(
        tmp_path,
        [*_results(), no_admin],
        relay_url="http://127.0.0.1:3000",
        profile="faq",
        mode="mock",
        started_at=dt.datetime(2026, 12, 4, tzinfo=dt.UTC),
        duration_s=1.0,
    )
    detail = json.loads((tmp_path / "conformance.json").read_text())["run_mode"]
    assert detail["name"] == "partial"
    assert detail["ground_truth"] == ["upstream_journal"]
    assert (detail["missing"], detail["unknown"]) == (["admin_api"], ["relay_key"])


# -- audit.md ---------------------------------------------------------------------------------
def test_audit_md_is_written_beside_conformance_json_fit_to_send(tmp_path: Path) -> None:
    mode = run_mode(relay_key=True, admin_api=False, upstream_journal=False)
    _write(tmp_path, mode_detail=mode, models=["gpt-4o"], extra={"live_cost": LIVE_COST})
    text = (tmp_path / "audit.md").read_text()
    for secret in (KEY, OTHER):
        assert secret not in text
    head = text[: text.index("## Summary")]
    assert "# Relay audit: relay.example:8443" in head
    assert "relay.example:8443/v1" not in head  # host only in the header
    assert "2026-12-04" in head and "| models tested | gpt-4o |" in head
    assert "live: had a funded key; without the admin API" in head
    assert (
        "spent 0.012300 USD (7380 quota); requests 41 (3 refused); tokens 900 prompt + 120 " in head
    )
    assert "budget 0.500000 USD; stopped at the budget: the cases after it were not tested" in head
    assert "worst_case_usd 0.02" in head and "relaygate 0." in head
    findings = text[text.index("## Findings") : text.index("## Checked and clean")]
    # high (MUST quota) first, then low (SHOULD); severity and confidence apart
    assert findings.index("quota.usage-honest") < findings.index("streaming.not-buffered")
    assert "**severity high** (MUST, quota) · **confidence exact** ·" in findings
    assert "**severity low** (SHOULD, streaming) · **confidence statistical** ·" in findings
    assert "| local prompt tokens | 12 |" in findings
    assert "| reported prompt_tokens | 40 |" in findings
    assert "| billed quota | 600 |" in findings
    assert "Authorization: Bearer sk-aud…789" in findings
    assert "model: asked for `gpt-4o`, served `gpt-4o`" in findings
    clean = text[text.index("## Checked and clean") : text.index("## Documented differences")]
    assert "`auth.ok`" in clean and "models.exact-name-forwarded" not in clean
    not_tested = text[text.index("## Not tested") :]
    assert "**1 × [live]** needs ground truth" in not_tested
    assert "`models.exact-name-forwarded`" in not_tested
    assert "1 checked and clean" in text and "**1 not tested**" in text


def test_audit_of_a_report_without_the_new_keys() -> None:
    doc = {
        "relay_url": "http://127.0.0.1:3000",
        "mode": "mock",
        "profile": "faq",
        "cases": [
            {"id": "sdk.chat", "area": "sdk", "level": "MUST", "outcome": "failed",
             "details": f"-> r\n   Expected: a\n     Actual: b\n  Reproduce: {CURL}"},
        ],
    }  # fmt: skip
    text = render_markdown(build_audit(doc))
    assert "mode | mock (this report does not say what ground truth the run had)" in text
    assert "**confidence exact** (a direct comparison)" in text
    assert "gpt-4o (the run did not record its models" in text
    assert "audit cost | nothing: the upstream was the relaygate mock" in text
    assert "None: every case ran." in text
    no_models = render_markdown(build_audit({**doc, "cases": []}))
    assert "| models tested | not recorded by this run |" in no_models
    assert "| tool | relaygate not recorded, profile faq |" in text


def test_severity_and_host_rules() -> None:
    assert severity("MUST", "quota") == "high"
    assert severity("MUST", "usage") == "high"
    assert severity("MUST", "streaming") == "medium"
    assert severity("SHOULD", "quota") == "low"
    assert relay_host(f"https://u:{OTHER}@relay.example/v1/{KEY}?k=1") == "relay.example"
    assert relay_host("embedded") == "the embedded stack"


def test_an_answer_cannot_break_out_of_its_fence() -> None:
    doc = {
        "relay_url": "https://relay.example",
        "cases": [
            {"id": "models.x", "area": "models", "level": "MUST", "outcome": "failed",
             "evidence": {"excerpt": "```\n# Injected heading\n```"}, "details": "-> r"},
        ],
    }  # fmt: skip
    text = render_markdown(build_audit(doc))
    assert "````\n```\n# Injected heading\n```\n````" in text


def test_the_command_builds_audit_md_from_a_saved_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path)
    (tmp_path / "audit.md").unlink()
    assert main([str(tmp_path / "conformance.json"), "-o", str(tmp_path / "a" / "x.md")]) == 0
    assert (tmp_path / "a" / "x.md").read_text().startswith("# Relay audit: relay.example")
    assert main([str(tmp_path / "nothing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]


# -- the page -----------------------------------------------------------------------------------
def test_the_page_has_the_audit_section_and_the_mode(tmp_path: Path) -> None:
    mode = run_mode(relay_key=True, admin_api=False, upstream_journal=False)
    doc = _write(tmp_path, mode_detail=mode, extra={"live_cost": LIVE_COST})
    page = render_page(doc, None, secrets=[KEY, OTHER])
    assert KEY not in page and OTHER not in page
    assert "mode live: had a funded key; without the admin API" in page
    audit = page[page.index('id="audit"') :]
    assert "2 findings" in audit and "1 checked and clean" in audit and "1 not tested" in audit
    assert "<b>high</b>" in audit and "statistical" in audit
    assert "local prompt tokens: <b>12</b>" in audit
    assert "spent 0.012300 USD" in audit


# -- end to end through pytest: a live-mode run writes audit.md with no key in it ---------------
LIVE_CASES = f"""
import pytest
from relaygate.suite.failures import require

CURL = {CURL!r}

@pytest.mark.case("quota.usage-honest", title="usage is the prompt's count", area="quota")
def test_usage(relay):
    require(False, "usage.prompt_tokens is the prompt's token count", 12, 40, CURL,
            (relay.key,), evidence={{"counts": {{"local": 12, "reported": 40}},
            "excerpt": "echo " + relay.key}})

@pytest.mark.case("auth.ok", title="a passing case", area="auth")
def test_ok():
    pass

@pytest.mark.case("models.fp", title="a case that needs the journal", area="models")
def test_needs_journal(upstream):
    pass
"""


def test_a_live_run_writes_audit_md_without_a_key(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_live=LIVE_CASES)
    pytester.makeconftest(
        "import pytest\n"
        "from relaygate.suite.target import RelayTarget\n"
        "@pytest.fixture(scope='session')\n"
        "def relay():\n"
        f"    return RelayTarget(base_url='https://relay.example/v1', key={KEY!r}, "
        "admin_token=None, upstream_url=None, mode='live', embedded=False, timeout_s=1.0)\n"
    )
    result = pytester.runpytest(
        "--relay-url", "https://relay.example/v1", "--relay-key", KEY,
        "--report-dir", "out", "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(failed=1, passed=1, skipped=1)
    audit = (pytester.path / "out" / "audit.md").read_text()
    conformance = (pytester.path / "out" / "conformance.json").read_text()
    for text in (audit, conformance, "\n".join(result.outlines)):
        assert KEY not in text
    assert "| local | 12 |" in audit and "echo sk-aud…789" in audit
    assert "**1 × [live]** needs ground truth" in audit
    doc = json.loads(conformance)
    assert doc["run_mode"]["name"] == "live"
    [failed] = [c for c in doc["cases"] if c["outcome"] == "failed"]
    assert failed["evidence"]["counts"] == {"local": 12, "reported": 40}


# -- relaygate gate -------------------------------------------------------------------------------
def test_gate_says_the_mode_and_writes_the_audit_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from relaygate.cli import main as cli

    mode = run_mode(relay_key=True, admin_api=False, upstream_journal=False)
    _write(tmp_path, mode_detail=mode)
    report, audit_md = tmp_path / "conformance.json", tmp_path / "sent" / "audit.md"
    assert cli(["gate", "--conformance", str(report), "--audit-md", str(audit_md)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "mode live: had a funded key; without the admin API, the mock upstream's journal" in out
    text = audit_md.read_text()
    assert text.startswith("# Relay audit: relay.example:8443") and KEY not in text
    assert cli(["gate", "--load", str(report), "--audit-md", str(audit_md)]) == 2
    assert "--audit-md needs --conformance" in capsys.readouterr().err
    assert cli(["gate", "--conformance", str(report), "--audit-md", str(tmp_path)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("relaygate gate: error: --audit-md")


def test_a_demo_run_without_a_conformance_report_leaves_no_stale_audit(tmp_path: Path) -> None:
    from relaygate.cli.demo import _swap_in

    out, new = tmp_path / "reports", tmp_path / "new"
    out.mkdir()
    new.mkdir()
    (out / "audit.md").write_text("# Relay audit: an older run")
    (new / "load-summary.json").write_text("{}")
    _swap_in(new, out)
    assert sorted(p.name for p in out.iterdir()) == ["load-summary.json"]
