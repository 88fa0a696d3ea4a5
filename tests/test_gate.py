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
from relaygate.suite.results import CaseMeta, CaseResult, write_reports

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


def test_skipped_only_passes_and_groups_reasons(gate: Any) -> None:
    second = case("quota.formula[gpt-4o]", "skipped", "needs ground truth: pass --upstream-url")
    other = case("rate_limits.429-shape", "skipped", "profile: no relay-side rate limiter")
    code, out, _ = gate(conformance=conformance(SKIPPED, second, other))
    assert code == 0
    lines = out.splitlines()
    first = lines.index("SKIPPED 2x needs ground truth: pass --upstream-url")
    assert lines[first + 1] == "    quota.formula[gpt-4], quota.formula[gpt-4o]"
    assert lines[first + 2 : first + 4] == [
        "SKIPPED 1x profile: no relay-side rate limiter",
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
    text = render(evaluate(conformance(*cases), load_summary(TTFT_OK, ERRORS_BAD)))
    assert len(text.splitlines()) <= 32
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "... 25 more failed" in text and "... 6 more deviations" in text
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
    code = main(["gate", *files, "--slo", "ttft_p99_ms<=200"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), out
    assert "SKIPPED 1x needs ground truth" in out
    assert "CHECK PASSED error_rate<=0.01: observed 0 (threshold 0.01)" in out
    assert main(["gate", *files, "--slo", "ttft_p99_ms<=110"]) == 1
    assert "CHECK FAILED ttft_p99_ms<=110" in capsys.readouterr().out


def test_many_skipped_ids_end_in_a_count() -> None:
    ids = [f"rate_limits.a-rather-long-case-name-{i}" for i in range(6)]
    cases = [case(i, "skipped", "profile: this relay has no relay-side rate limiter") for i in ids]
    lines = render(evaluate(conformance(*cases), None)).splitlines()
    listed = lines[lines.index("SKIPPED 6x profile: this relay has no relay-side rate limiter") + 1]
    assert listed == f"    {ids[0]}, {ids[1]}, +4 more"
