"""``relaygate gate``: exit codes, the one-screen verdict, ``--json``, bad input exits 2, keys
stay masked. Reports are small dicts in the shape the suite and the load plugin write."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from relaygate.cli import main
from relaygate.gate import GateInputError, evaluate, render
from relaygate.load import slo
from relaygate.load.metrics import Registry
from relaygate.load.summary import build_summary, write_summary
from relaygate.suite.results import SKIP_CLASSES, CaseMeta, CaseResult, skip_class, write_reports

FAILURE_DETAILS = (
    "relaygate.suite.failures.CaseFailure: -> an unknown key is refused with 401\n"
    "   Expected: HTTP 401, error.code 'invalid_api_key'\n"
    "     Actual: HTTP 403 application/json '{\"error\":{}}'\n"
    "  Reproduce: curl -sS -X POST http://relay:3000/v1/chat/completions "
    "-H 'Authorization: Bearer sk-rel…000'\n"
    "  (how to read this: README.md#reading-a-failure)"
)


def case(case_id: str, outcome: str = "passed", reason: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "id": case_id,
        "title": f"title of {case_id}",
        "area": case_id.split(".")[0],
        "faq": ["F15"],
        "level": "MUST",
        "outcome": outcome,
        "reason": reason,
        "duration_s": 0.01,
        **extra,
    }


def conformance(*cases: dict[str, Any]) -> dict[str, Any]:
    return {
        "relay_url": "http://relay:3000",
        "profile": "one-api",
        "mode": "mock",
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 1.0,
        "summary": {},
        "cases": list(cases) or [case("auth.funded-key-works")],
    }


FAILED = case(
    "auth.refused[invalid_key]",
    "failed",
    "relaygate.suite.failures.CaseFailure: -> an unknown key is refused with 401",
    details=FAILURE_DETAILS,
)
DEVIATION = case("quota.token-exhausted", "deviation", "one-api answers 429 (F20)")
SKIPPED = case("quota.formula[gpt-4]", "skipped", "needs ground truth: pass --upstream-url")


def load_summary(
    *results: tuple[str, float | None, float, bool], latency_valid: bool = True
) -> dict[str, Any]:
    return {
        "host": "http://relay:3000",
        "users": 5,
        "duration_s": 8.0,
        "scenario": "StreamingChatUser",
        "requests": {"ok": 95, "rate_limited": 5, "total": 100, "by_status": {"200": 95}},
        "error_rate": 0.05,
        "ttft_ms": {"p50": 100.0, "p90": 110.0, "p99": 150.0, "max": 160.0, "mean": 104.0,
                    "count": 95},
        "output_tokens_per_s": 376.3,
        "rate_limit": {"rate_limited": 5, "rate_limited_share": 0.05},
        "self_check": {
            "latency_valid": latency_valid,
            "reasons": [] if latency_valid else ["harness CPU p90 97% of a core > 85%"],
        },
        "latency_valid": latency_valid,
        "slo": [
            {"rule": r, "observed": o, "threshold": t, "passed": p} for r, o, t, p in results
        ],
    }  # fmt: skip


TTFT_OK = ("ttft_p95_ms<=500", 120.0, 500.0, True)
ERRORS_BAD = ("error_rate<=0.01", 0.05, 0.01, False)


@pytest.fixture(autouse=True)
def _terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """The render wraps at the terminal's width: fix it so the lines asserted do not vary."""
    monkeypatch.setenv("COLUMNS", "100")


@pytest.fixture
def gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """``gate(conformance=dict|str, load=dict|str, *args) -> (exit code, stdout, stderr)``."""

    def run(*args: str, conformance: Any = None, load: Any = None) -> tuple[int, str, str]:
        argv = ["gate", *args]
        for kind, doc in (("conformance", conformance), ("load", load)):
            if doc is None:
                continue
            path = tmp_path / f"{kind}.json"
            if isinstance(doc, (str, bytes)):
                path.write_bytes(doc.encode() if isinstance(doc, str) else doc)
            else:
                path.write_text(json.dumps(doc))
            argv += [f"--{kind}", str(path)]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


# -- exit codes --------------------------------------------------------------------------------


def test_all_passed_exits_0(gate: Any) -> None:
    code, out, _ = gate(conformance=conformance(), load=load_summary(TTFT_OK))
    assert code == 0
    assert out.splitlines()[0] == "GATE PASSED"
    assert "CHECK PASSED ttft_p95_ms<=500: observed 120 (threshold 500)" in out


def test_failed_case_exits_1_with_expected_and_actual(gate: Any) -> None:
    code, out, _ = gate(conformance=conformance(case("auth.funded-key-works"), FAILED))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "GATE FAILED"
    failed_line = "FAILED auth.refused[invalid_key]: title of auth.refused[invalid_key]"
    assert failed_line in lines
    expected = "    expected HTTP 401, error.code 'invalid_api_key' | actual HTTP 403 application"
    assert lines[lines.index(failed_line) + 1].startswith(expected)
    assert "1 passed, 1 failed, 0 deviations, 0 skipped" in out


@pytest.mark.parametrize("outcome", ["error", "xpassed"])
def test_an_unknown_outcome_fails(outcome: str) -> None:
    verdict = evaluate(conformance(case("auth.x", outcome, "error in setup: boom")), None)
    assert not verdict.passed
    assert "FAILED (" + outcome + ") auth.x" in render(verdict)


def test_deviation_fails_unless_allowed(gate: Any) -> None:
    doc = conformance(case("auth.funded-key-works"), DEVIATION)
    code, out, _ = gate(conformance=doc)
    assert code == 1
    assert "--allow-deviations" in out
    assert "DEVIATION quota.token-exhausted: one-api answers 429 (F20)" in out
    code, out, _ = gate("--allow-deviations", conformance=doc)
    assert code == 0
    assert out.startswith("GATE PASSED\n")
    assert "DEVIATION (allowed) quota.token-exhausted" in out


def test_allowed_skips_pass_and_are_grouped_by_reason(gate: Any) -> None:
    # Issue #10 changed this: the same report without --allow-skip fails (a MUST case skipped).
    second = case("quota.formula[gpt-4o]", "skipped", "needs ground truth: pass --upstream-url")
    other = case("rate_limits.429-shape", "skipped", "profile: no relay-side rate limiter")
    doc = conformance(case("auth.funded-key-works"), SKIPPED, second, other)
    assert gate(conformance=doc)[0] == 1
    code, out, _ = gate("--allow-skip", "quota", "--allow-skip", "profile", conformance=doc)
    assert code == 0, out
    lines = out.splitlines()
    first = lines.index(
        "SKIPPED (allowed: quota) 2x [live] needs ground truth: pass --upstream-url"
    )
    assert lines[first + 1] == "    quota.formula[gpt-4], quota.formula[gpt-4o]"
    assert lines[first + 2 : first + 4] == [
        "SKIPPED (allowed: profile) 1x [profile] profile: no relay-side rate limiter",
        "    rate_limits.429-shape",
    ]


def test_empty_conformance_report_fails() -> None:
    doc = conformance()
    doc["cases"] = []
    assert evaluate(doc, None).reasons == ("the conformance report holds no case",)


def test_failed_slo_in_summary_exits_1(gate: Any) -> None:
    code, out, _ = gate(load=load_summary(TTFT_OK, ERRORS_BAD))
    assert code == 1
    assert "CHECK FAILED error_rate<=0.01: observed 0.05 (threshold 0.01)" in out
    assert "1 of 2 SLOs failed" in out


def test_extra_slo_rules_from_the_summary(gate: Any) -> None:
    summary = load_summary(TTFT_OK)
    code, out, _ = gate("--slo", "ttft_p99_ms<=200", "--slo", "error_rate<=0.1", load=summary)
    assert code == 0
    assert "CHECK PASSED ttft_p99_ms<=200: observed 150 (threshold 200) [gate]" in out
    code, out, _ = gate("--slo", "rate_limit_rate_limited_share<0.01", load=summary)
    assert code == 1
    assert "CHECK FAILED rate_limit_rate_limited_share<0.01: observed 0.05" in out


def test_extra_slo_not_in_summary_fails_and_says_why(gate: Any) -> None:
    code, out, _ = gate("--slo", "ttft_p95_ms<=300", load=load_summary((*ERRORS_BAD[:3], True)))
    assert code == 1
    assert "CHECK FAILED ttft_p95_ms<=300: observed not measured (threshold 300) [gate]" in out
    assert "keeps p50, p90, p99, max, mean of ttft_ms, not p95" in out


def test_extra_slo_already_judged_by_the_run_is_not_repeated() -> None:
    verdict = evaluate(None, load_summary(TTFT_OK), slos=["ttft_p95_ms <= 500"])
    assert verdict.load is not None
    assert [s.rule for s in verdict.load.slos] == ["ttft_p95_ms<=500"]


def test_load_without_any_slo_fails() -> None:
    verdict = evaluate(None, load_summary())
    assert not verdict.passed
    assert "no SLO judged the load run" in verdict.reasons[0]


def test_invalid_latency_fails_only_when_a_latency_slo_is_judged(gate: Any) -> None:
    code, out, _ = gate(load=load_summary(TTFT_OK, latency_valid=False))
    assert code == 1
    assert "latency percentiles are invalid" in out
    assert "self-check: latency percentiles INVALID - harness CPU p90 97%" in out
    error_rule = ("error_rate<=0.1", 0.05, 0.1, True)
    code, out, _ = gate(load=load_summary(error_rule, latency_valid=False))
    assert code == 0
    assert "note: latency percentiles are invalid" in out
    code, _, _ = gate(
        "--slo", "e2e_max_ms<=10000", load=load_summary(error_rule, latency_valid=False)
    )
    assert code == 1


# -- bad input -----------------------------------------------------------------------------------


def test_no_report_exits_2(gate: Any) -> None:
    code, out, err = gate()
    assert code == 2 and not out
    assert "give --conformance FILE and/or --load FILE" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"cases": "all good"}', 'no "cases" list'),
        ('{"cases": [{"id": "a"}]}', 'cases[0] has no string "id" and "outcome"'),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_bad_conformance_file_exits_2(
    gate: Any, tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    if content is None:
        code, _, err = gate("--conformance", str(tmp_path / "missing.json"))
    else:
        code, _, err = gate(conformance=content)
    assert code == 2
    assert message in err
    assert err.startswith("relaygate gate: error: --conformance ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"requests": {}}, 'no "slo" list'),
        (conformance(), "this looks like a conformance report: pass it with --conformance"),
        ({"slo": [{"rule": "error_rate<=0.01", "passed": "yes"}]}, "slo[0] is not"),
        ({"slo": [], "latency_valid": "no"}, '"latency_valid" is not true/false'),
    ],
)
def test_load_file_of_the_wrong_shape_exits_2(gate: Any, doc: Any, message: str) -> None:
    code, _, err = gate(load=doc)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_directory_and_bad_slo_exit_2(gate: Any, tmp_path: Path) -> None:
    code, _, err = gate("--load", str(tmp_path))
    assert code == 2 and "is a directory" in err
    with pytest.raises(SystemExit) as info:
        gate("--slo", "ttft=>5", load=load_summary(TTFT_OK))
    assert info.value.code == 2


def test_evaluate_rejects_unusable_input() -> None:
    with pytest.raises(GateInputError, match="nothing to judge"):
        evaluate(None, None)
    with pytest.raises(GateInputError, match="need a load summary"):
        evaluate(conformance(), None, slos=["error_rate<=0.01"])
    with pytest.raises(GateInputError, match="METRIC<=NUMBER"):
        evaluate(None, load_summary(TTFT_OK), slos=["error_rate"])


# -- output ------------------------------------------------------------------------------------


def test_json_verdict_shape(gate: Any) -> None:
    code, out, _ = gate(
        "--json",
        "--slo",
        "ttft_p99_ms<=100",
        conformance=conformance(FAILED, DEVIATION, SKIPPED),
        load=load_summary(TTFT_OK),
    )
    assert code == 1
    doc = json.loads(out)
    assert doc["verdict"] == "GATE FAILED" and doc["passed"] is False and doc["exit_code"] == 1
    assert doc["reasons"] == [
        "1 conformance case failed",
        "1 MUST case not verified (skipped: 1 live; --allow-skip accepts an expected skip)",
        "1 deviation (--allow-deviations accepts documented deviations)",
        "1 of 2 SLOs failed",
    ]
    c = doc["conformance"]
    assert c["counts"] == {"passed": 0, "failed": 1, "deviation": 1, "skipped": 1}
    assert c["total"] == 3 and c["profile"] == "one-api"
    assert c["failed"] == [
        {
            "id": "auth.refused[invalid_key]",
            "title": "title of auth.refused[invalid_key]",
            "outcome": "failed",
            "reason": "an unknown key is refused with 401",
            "expected": "HTTP 401, error.code 'invalid_api_key'",
            "actual": "HTTP 403 application/json '{\"error\":{}}'",
        }
    ]
    assert c["deviations"][0]["reason"] == "one-api answers 429 (F20)"
    assert c["skipped"] == [
        {
            "reason": "needs ground truth: pass --upstream-url",
            "count": 1,
            "ids": ["quota.formula[gpt-4]"],
        }
    ]
    assert c["not_verified"] == [
        {
            "class": "live",
            "reason": "needs ground truth: pass --upstream-url",
            "count": 1,
            "ids": ["quota.formula[gpt-4]"],
        }
    ]
    assert c["not_verified_count"] == 1 and c["allowed_skips"] == [] and c["should_skips"] == []
    assert c["unchecked_areas"] == [] and doc["allow_skips"] == []
    slos = doc["load"]["slo"]
    assert [(s["rule"], s["source"], s["passed"]) for s in slos] == [
        ("ttft_p95_ms<=500", "run", True),
        ("ttft_p99_ms<=100", "gate", False),
    ]
    assert slos[1]["observed"] == 150.0 and slos[1]["threshold"] == 100.0
    assert doc["load"]["latency_valid"] is True and doc["load"]["requests"] == 100


def test_keys_in_reports_are_masked(gate: Any) -> None:
    key = "sk-LeakedRelayKey0123456789abcdef"
    leaky = case(
        "security.channel-key-not-leaked",
        "failed",
        f"-> the channel key {key} appears",
        details=f"   Expected: no key\n     Actual: body shows {key}",
    )
    summary = load_summary(TTFT_OK)
    summary["host"] = f"http://relay:3000/?key={key}"
    for args in ((), ("--json",)):
        code, out, _ = gate(*args, conformance=conformance(leaky), load=summary)
        assert code == 1
        assert key not in out
        assert "sk-Lea…def" in out


def test_a_long_report_stays_on_one_screen() -> None:
    cases = [case(f"auth.f{i}", "failed", "boom " * 40, details=FAILURE_DETAILS) for i in range(30)]
    cases += [case(f"quota.d{i}", "deviation", "documented") for i in range(10)]
    cases += [case(f"models.s{i}", "skipped", f"reason {i % 7}") for i in range(30)]
    text = render(evaluate(conformance(*cases), load_summary(TTFT_OK, ERRORS_BAD)), width=100)
    # Issue #15 item 7: lines wrap instead of being clipped, so a screen holds a few more lines.
    assert len(text.splitlines()) <= 42
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "... 25 more failed" in text and "... 6 more deviations" in text
    assert "... 16 more not verified for other reasons" in text
    # skipped ids are listed whole, never cut in the middle
    skipped = [line for line in text.splitlines() if line.startswith("    models.")]
    assert skipped and all(
        re.fullmatch(r"    models\.s\d+(, models\.s\d+)*(, \+\d+ more)?", line) for line in skipped
    )


# -- real files written by the report code ---------------------------------------------------


def test_real_report_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = CaseMeta(id="auth.refused[expired_key]", title="Expired keys are refused", area="auth")
    results = [
        CaseResult(meta, "passed", "", 0.1),
        CaseResult(
            CaseMeta(id="quota.formula[gpt-4]", title="Charges follow the formula", area="quota"),
            "skipped",
            "needs ground truth: pass --upstream-url (the relaygate mock upstream)",
            0.0,
        ),
    ]
    reports = tmp_path / "reports"
    write_reports(
        reports,
        results,
        relay_url="http://relay:3000",
        profile="one-api",
        mode="live",
        started_at=dt.datetime.now(dt.UTC),
        duration_s=1.0,
    )
    registry = Registry()
    registry.count("requests", 20)
    registry.count("outcome.ok", 20)
    for value in range(100, 120):
        registry.hist("ttft_ms").record(float(value))
    summary = build_summary(
        registry, host="http://relay:3000", users=2, duration_s=5.0, scenario=["StreamingChatUser"]
    )
    rules = [slo.parse_rule("ttft_p95_ms<=500"), slo.parse_rule("error_rate<=0.01")]
    summary["slo"] = slo.evaluate(rules, summary, registry.hists)
    write_summary(summary, reports)
    files = ["--conformance", str(reports / "conformance.json")]
    files += ["--load", str(reports / "load-summary.json")]
    files += ["--allow-skip", "quota"]  # the only quota case needs ground truth a live run lacks
    code = main(["gate", *files, "--slo", "ttft_p99_ms<=200"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), out
    assert "SKIPPED (allowed: quota) 1x [live] needs ground truth" in out
    assert "CHECK PASSED error_rate<=0.01: observed 0 (threshold 0.01)" in out
    assert main(["gate", *files, "--slo", "ttft_p99_ms<=110"]) == 1
    assert "CHECK FAILED ttft_p99_ms<=110" in capsys.readouterr().out


def test_many_skipped_ids_end_in_a_count() -> None:
    ids = [f"rate_limits.a-rather-long-case-name-{i}" for i in range(6)]
    cases = [case(i, "skipped", "profile: this relay has no relay-side rate limiter") for i in ids]
    lines = render(evaluate(conformance(*cases), None), width=100).splitlines()
    label = "NOT VERIFIED 6x [profile] profile: this relay has no relay-side rate limiter"
    listed = lines[lines.index(label) + 1]
    assert listed == f"    {ids[0]}, {ids[1]}, +4 more"


# -- a pass needs evidence: skipped cases (issue #10) ---------------------------------------------

LIVE = "needs ground truth: pass --upstream-url (the relaygate mock upstream)"
KEY = "needs a funded key: pass --relay-key or RELAYGATE_RELAY_KEY"
PROFILE = "profile: this relay has no relay-side rate limiter"
AREAS_OF_THE_SUITE = ("auth", "quota", "models", "max_tokens", "streaming", "errors", "sdk")


def skipped(case_id: str, reason: str = LIVE, level: str = "MUST", **extra: Any) -> dict[str, Any]:
    return case(case_id, "skipped", reason, level=level, **extra)


def test_a_report_where_every_case_was_skipped_fails(gate: Any) -> None:
    doc = conformance(*(skipped(f"{area}.x") for area in AREAS_OF_THE_SUITE))
    code, out, _ = gate(conformance=doc)
    assert code == 1
    assert out.startswith(
        "GATE FAILED\n  - nothing was checked: all 7 conformance cases were skipped"
    )
    # whatever is allowed: nothing executed is never a pass
    code, out, _ = gate(*(f"--allow-skip={a}" for a in AREAS_OF_THE_SUITE), conformance=doc)
    assert code == 1 and "nothing was checked" in out
    verdict = evaluate(doc, None, allow_skips=["live", "*.*"])
    assert not verdict.passed and verdict.reasons == (
        "nothing was checked: all 7 conformance cases were skipped",
    )


def test_only_security_passed_fails_on_the_areas_where_nothing_ran(gate: Any) -> None:
    cases = [case(f"security.k{i}") for i in range(3)]
    cases += [skipped(f"{area}.c{i}") for area in AREAS_OF_THE_SUITE for i in range(2)]
    code, out, _ = gate(conformance=conformance(*cases))
    assert code == 1
    lines = out.splitlines()
    assert lines[1] == (
        "  - 14 MUST cases not verified (skipped: 14 live; --allow-skip accepts an expected skip)"
    )
    assert (
        "nothing checked in 7 areas: auth, quota, models, max_tokens, streaming, errors, sdk" in out
    )
    assert "3 passed, 0 failed, 0 deviations, 14 skipped; 14 NOT VERIFIED" in out
    first = lines.index(f"NOT VERIFIED 14x [live] {LIVE}")
    assert lines[first + 1].startswith("    auth.c0, auth.c1, quota.c0")
    # allowing the class accepts each case, but not the areas where nothing ran
    verdict = evaluate(conformance(*cases), None, allow_skips=["live"])
    assert [r.split(":")[0] for r in verdict.reasons] == ["nothing checked in 7 areas"]
    assert evaluate(conformance(*cases), None, allow_skips=AREAS_OF_THE_SUITE).passed


def test_should_skips_never_fail_and_are_listed(gate: Any) -> None:
    doc = conformance(case("streaming.done"), skipped("streaming.keepalive", LIVE, level="SHOULD"))
    code, out, _ = gate(conformance=doc)
    assert code == 0, out
    assert f"SKIPPED (SHOULD) 1x [live] {LIVE}" in out
    verdict = evaluate(doc, None)
    assert verdict.conformance is not None
    assert verdict.conformance.should_skips[0].ids == ("streaming.keepalive",)


@pytest.mark.parametrize(
    "allow",
    ["quota", "live", "quota.formula*", "quota.formula", "quota.formula[gpt-4]", "*.formula"],
)
def test_each_allow_form_accepts_the_skip(gate: Any, allow: str) -> None:
    doc = conformance(case("quota.refund"), skipped("quota.formula[gpt-4]"), case("auth.ok"))
    assert gate(conformance=doc)[0] == 1
    code, out, _ = gate("--allow-skip", allow, conformance=doc)
    assert code == 0, out
    assert f"SKIPPED (allowed: {allow}) 1x [live] {LIVE}" in " ".join(out.split())
    assert "NOT VERIFIED" not in out


@pytest.mark.parametrize("allow", ["auth", "key", "quota.formula[gpt-4o]", "quota.refund*"])
def test_an_allow_that_does_not_match_leaves_the_skip_failing(allow: str) -> None:
    doc = conformance(case("quota.refund"), skipped("quota.formula[gpt-4]"))
    verdict = evaluate(doc, None, allow_skips=[allow])
    assert not verdict.passed
    assert verdict.reasons[0].startswith("1 MUST case not verified")


def test_each_skip_class_can_be_allowed_on_its_own() -> None:
    doc = conformance(
        case("auth.ok"),
        skipped("auth.live", LIVE),
        skipped("auth.key", KEY),
        skipped("auth.cors", "profile: this relay documents no CORS support"),
        skipped("auth.other", "Retry-After 9.0 s is too long for this bounded check"),
    )
    verdict = evaluate(doc, None)
    assert verdict.reasons == (
        "4 MUST cases not verified (skipped: 1 live, 1 key, 1 profile, 1 other; "
        "--allow-skip accepts an expected skip)",
    )
    assert evaluate(doc, None, allow_skips=list(SKIP_CLASSES)).passed
    left = evaluate(doc, None, allow_skips=["live", "key", "profile"])
    assert left.conformance is not None
    assert [g.ids for g in left.conformance.not_verified] == [("auth.other",)]


def test_an_inconclusive_skip_is_judged_not_a_crash() -> None:
    # The gate sorted skip groups by a class list that lacked "inconclusive": any report with
    # such a skip (a live run, or a relay's rate-limit window) crashed the gate and the page.
    doc = conformance(
        case("auth.ok"),
        skipped(
            "auth.x",
            "the model answered the same twice: no difference to judge",
            skip_class="inconclusive",
        ),
        skipped("auth.other", "Retry-After 9.0 s is too long for this bounded check"),
        skipped("auth.key", KEY),
    )
    verdict = evaluate(doc, None)
    assert verdict.conformance is not None
    classes = [g.skip_class for g in verdict.conformance.not_verified]
    assert classes == ["key", "inconclusive", "other"]
    assert evaluate(doc, None, allow_skips=list(SKIP_CLASSES)).passed


def test_an_area_where_nothing_ran_passes_only_when_allowed_or_all_profile() -> None:
    limiter = [skipped(f"rate_limits.c{i}", PROFILE) for i in range(3)]
    doc = conformance(case("auth.ok"), *limiter)
    # every skip is of class profile: the relay has no limiter; the skips still need allowing
    verdict = evaluate(doc, None, allow_skips=["profile"])
    assert verdict.passed, verdict.reasons
    assert verdict.conformance is not None
    area = verdict.conformance.unchecked_areas[0]
    assert (area.area, area.skipped, area.allowed_by) == ("rate_limits", 3, "profile")
    assert "UNCHECKED AREA rate_limits (all profile skips: profile)" in render(verdict)
    # one skip of another class: the whole area is unchecked for a reason the profile does not give
    mixed = conformance(case("auth.ok"), *limiter, skipped("rate_limits.x", LIVE))
    verdict = evaluate(mixed, None, allow_skips=["profile", "live"])
    assert verdict.reasons == (
        "nothing checked in 1 area: rate_limits (every case skipped; --allow-skip AREA accepts "
        "an area)",
    )
    assert evaluate(mixed, None, allow_skips=["rate_limits"]).passed


def test_an_older_report_without_skip_class_is_classified_from_the_reason() -> None:
    old = conformance(case("auth.ok"), skipped("auth.key", KEY), skipped("auth.p", PROFILE))
    assert all("skip_class" not in c for c in old["cases"])
    verdict = evaluate(old, None)
    assert verdict.conformance is not None
    assert [g.skip_class for g in verdict.conformance.not_verified] == ["key", "profile"]
    assert evaluate(old, None, allow_skips=["key", "profile"]).passed
    # a recorded class wins over the reason
    recorded = conformance(case("auth.ok"), skipped("auth.key", "whatever", skip_class="key"))
    assert evaluate(recorded, None, allow_skips=["key"]).passed


@pytest.mark.parametrize("bad", ["qouta", "everything", "", "auth.", "live key"])
def test_an_unknown_allow_skip_exits_2_with_one_line(gate: Any, bad: str) -> None:
    code, out, err = gate("--allow-skip", bad, conformance=conformance())
    assert code == 2 and not out
    assert err.startswith(f"relaygate gate: error: --allow-skip {bad!r} is no area (auth, ")
    assert "skip class (live, key, profile, inconclusive, other)" in err
    assert len(err.strip().splitlines()) == 1


def test_allow_skip_without_a_conformance_report_exits_2(gate: Any) -> None:
    code, _, err = gate("--allow-skip", "quota", load=load_summary(TTFT_OK))
    assert code == 2 and "--allow-skip needs a conformance report" in err


def test_write_reports_records_the_skip_class(tmp_path: Path) -> None:
    meta = CaseMeta(id="quota.formula[gpt-4]", title="Charges follow the formula", area="quota")
    results = [
        CaseResult(meta, "skipped", LIVE, 0.0),
        CaseResult(CaseMeta(id="auth.ok", title="ok", area="auth"), "passed", "", 0.1),
    ]
    path = write_reports(
        tmp_path,
        results,
        relay_url="http://relay:3000",
        profile="faq",
        mode="live",
        started_at=dt.datetime.now(dt.UTC),
        duration_s=1.0,
    )
    cases = {c["id"]: c for c in json.loads(path.read_text())["cases"]}
    assert cases["quota.formula[gpt-4]"]["skip_class"] == "live"
    assert "skip_class" not in cases["auth.ok"]


# Every reason the suite skips with (grep 'pytest.skip(' in conformance/, src/relaygate/suite/,
# pytest_plugin.py, provision/ through key_in_state), as it reads once formatted.
SKIP_REASONS = [
    # inconclusive: this run's answers could not decide the rule
    (
        "the rate-limited key is still refused after an earlier case's 429 (Retry-After 60 s is "
        "too long to wait out here), so this case cannot show it served before it is refused",
        "inconclusive",
    ),
    ("no complete error answer to judge the connection after: HTTP 200", "inconclusive"),
    ("the follow-up answer was cut: HTTP 200, 5 bytes (byte cap)", "inconclusive"),
    (
        "none of the listed ids ['gpt-3.5-turbo-instruct'] is a chat model (by name, or by the "
        "upstream's own refusal): no listed id to try with a chat request",
        "inconclusive",
    ),
    # other: the set-up keeps the probe from the relay
    (
        "the relay is reached through an HTTP proxy (HTTPS_PROXY/HTTP_PROXY): the keep-alive "
        "probe speaks to the relay directly",
        "other",
    ),
    # live: ground truth a relay customer's live run does not have
    ("needs ground truth: pass --upstream-url (the relaygate mock upstream)", "live"),
    ("needs the mock upstream's journal to see which name was forwarded", "live"),
    ("needs the mock upstream's journal for the upstream's answer", "live"),
    ("the static adapter cannot configure a group ratio and a channel", "live"),
    ("the relay exposes no balance this suite can read (profile balance_source)", "live"),
    ("needs an admin token and ground truth: the group ratio is checked on a key the", "live"),
    ("needs ground truth: only the mock upstream answers", "live"),
    ("needs ground truth: the answer ended by itself (", "live"),
    ("needs ground truth: not forwarded shows only in the mock upstream's journal, and", "live"),
    ("needs ground truth: only the mock upstream answers 429 on demand (a live provider's", "live"),
    ("the relay exposes no balance this suite can read, so 'never billed' is unchecked", "live"),
    # profile
    ("profile: models.usage_ladder_max_tokens = 0", "profile"),
    ("profile tolerance ±3 cannot tell families apart", "profile"),
    ("profile: this relay has no relay-side rate limiter, and live mode cannot", "profile"),
    # inconclusive: the live model's own answers could not decide the rule
    ("the model did not repeat", "inconclusive"),
    ("the model answered the same twice at temperature 1: equal answers at 0", "inconclusive"),
    ("the model answers a bare JSON object even without response_format: its", "inconclusive"),
    ("the model answers this request differently each time, even at", "inconclusive"),
    ("the model answers this request differently: no tool call to judge", "inconclusive"),
    ("the answer came too fast to tell streaming from buffering:", "inconclusive"),
    ("the rate-limited key got no 429 in 30 requests", "inconclusive"),
    # key: a key the run could not get
    ("the key is not served gpt-4", "key"),
    ("the key's balance does not cover max_tokens", "key"),
    ("needs a funded key (--relay-key)", "key"),
    ("needs a funded key: pass --relay-key or RELAYGATE_RELAY_KEY", "key"),
    ("needs a funded key (--relay-key) to show the relay serves keys at all", "key"),
    (
        "cannot provision the key this case needs: no key for state EXPIRED: set "
        "RELAYGATE_KEY_EXPIRED (or pass it in the static keys), or give an admin token so the "
        "harness can create one",
        "key",
    ),
    (
        "cannot provision the key this case needs: static keys have fixed quota and models; a "
        "case that needs a particular quota or allow-list needs an admin API (pass "
        "--relay-admin-token)",
        "key",
    ),
    (
        "cannot provision the key this case needs: login budget spent: 20 logins in 20 min",
        "key",
    ),
    ("the restricted key allows no model or every model", "key"),
    # profile: the relay's profile documents the feature is absent
    ("profile: billing is not readable by a key holder", "profile"),
    ("profile: no quota semantics", "profile"),
    ("profile: an unknown key is answered with 200, not 401/403", "profile"),
    ("profile: exhausted tokens are not refused with 403 by this relay", "profile"),
    ("profile: unknown model ids are not answered with 404 by this relay", "profile"),
    ("profile: this relay has no relay-side rate limiter", "profile"),
    ("profile: this relay sends no Retry-After", "profile"),
    ("profile: this relay documents no request body limit", "profile"),
    ("profile: this relay documents no CORS support", "profile"),
    ("profile reads balances from dashboard, not billing endpoints", "profile"),
    # other: the run could not decide for a reason of its own
    ("only 1 refusals were 401s with an error object to compare (a); the others: b 403", "other"),
    ("the relay sent no Authorization upstream: no channel key to look for", "other"),
    ("could not learn the channel key the relay uses upstream", "other"),
    ("Retry-After 9.0 s is too long for this bounded check", "other"),
    ("could not import 'openai': No module named 'openai'", "other"),
    ("", "other"),
]


@pytest.mark.parametrize(("reason", "expected"), SKIP_REASONS)
def test_every_skip_reason_of_the_suite_has_its_class(reason: str, expected: str) -> None:
    assert skip_class(reason) == expected
    assert skip_class(f"Skipped: {reason}") == expected


def test_the_classified_reasons_cover_every_skip_in_the_suite() -> None:
    """A new ``pytest.skip("...")`` in the suite must be added to SKIP_REASONS above."""
    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("conformance/*.py"), *root.glob("src/relaygate/suite/*.py")]
    sources += [root / "src/relaygate/pytest_plugin.py"]
    known = " ".join(reason for reason, _ in SKIP_REASONS)
    missing = []
    for source in sources:
        for match in re.finditer(r"pytest\.skip\(\s*f?\"([^\"{]*)", source.read_text()):
            head = match.group(1).strip()
            if head and head not in known:
                missing.append(f"{source.name}: {head}")
    assert missing == []


# -- the render wraps, never clips (issue #15 item 7) ----------------------------------------


@pytest.mark.parametrize("width", [200, 80])
def test_long_lines_wrap_at_the_width_and_lose_no_text(width: int) -> None:
    hint = "fix: " + " ".join(f"word{i}" for i in range(60)) + " END-OF-HINT"
    long_id = "errors.a-very-long-case-id-" + "x" * 90
    doc = conformance(
        case("auth.x", "failed", hint),
        case(long_id, "failed", "short"),
        case("auth.ok"),
    )
    text = render(evaluate(doc, None), width=width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines if long_id not in line)
    assert " ".join(" ".join(lines).split()).count(hint) == 1  # every word, in order
    assert "END-OF-HINT" in text and long_id in text  # a word longer than a line stays whole
    if width == 80:
        assert any(line.startswith("        word") for line in lines)  # continuation indent


def test_the_render_follows_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = conformance(case("auth.x", "failed", "y " * 120))
    monkeypatch.setenv("COLUMNS", "200")
    wide = render(evaluate(doc, None))
    monkeypatch.setenv("COLUMNS", "60")
    narrow = render(evaluate(doc, None))
    assert max(map(len, wide.splitlines())) > 100
    assert max(map(len, narrow.splitlines())) <= 60
    assert " ".join(wide.split()) == " ".join(narrow.split())


def test_help_lists_every_exit_code_and_allow_skip(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["gate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "0 the gate passed" in out
    assert "1 the gate failed" in out
    assert "2 unusable input" in out
    assert "--allow-skip X" in out and "live, key, profile, inconclusive, other" in out


def test_bench_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "concurrent streams (2, 3) (default: 500)" in out
    assert "(default: 8.0)" in out


def test_a_load_run_against_another_relay_is_noted() -> None:
    summary = load_summary(TTFT_OK)
    summary["host"] = "http://127.0.0.1:44281"
    verdict = evaluate(conformance(), summary)
    assert verdict.passed
    assert verdict.notes == (
        "the load run targeted http://127.0.0.1:44281, not the relay the conformance suite "
        "checked (http://relay:3000): the two results are about different relay instances",
    )
    assert "note: the load run targeted http://127.0.0.1:44281" in render(verdict)
    for same in ("http://relay:3000", "http://relay:3000/", "http://relay:3000/v1"):
        summary["host"] = same
        assert evaluate(conformance(), summary).notes == ()
