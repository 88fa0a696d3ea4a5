"""SLO rules: parsing, evaluation against summaries and histograms, 'not measured' fails."""

from __future__ import annotations

import pytest

from relaygate.load.histogram import Histogram
from relaygate.load.slo import (
    SLOSyntaxError,
    UnknownMetricError,
    evaluate,
    known_metrics,
    observables,
    parse_rule,
)


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold"),
    [
        ("ttft_p95_ms<=500", "ttft_p95_ms", "<=", 500.0),
        (" error_rate <= 0.01 ", "error_rate", "<=", 0.01),
        ("rate_limit_accuracy>=0.9", "rate_limit_accuracy", ">=", 0.9),
        ("itl_p99.9_ms<40", "itl_p99.9_ms", "<", 40.0),
        ("output_tokens_per_s>1e3", "output_tokens_per_s", ">", 1000.0),
        ("direct.ttft_p50_ms<=5", "direct.ttft_p50_ms", "<=", 5.0),
        ("ratelimit.rate_limited_p99_ms<9", "ratelimit.rate_limited_p99_ms", "<", 9.0),
        ("rate_limit_fairness_jain_index>=0.9", "rate_limit_fairness_jain_index", ">=", 0.9),
        ("requests_by_status_429==0", "requests_by_status_429", "==", 0.0),
        ("latency_valid==1", "latency_valid", "==", 1.0),
    ],
)
def test_parse(text: str, metric: str, op: str, threshold: float) -> None:
    rule = parse_rule(text)
    assert (rule.metric, rule.op, rule.threshold) == (metric, op, threshold)


@pytest.mark.parametrize("text", ["ttft", "ttft_p95_ms=>5", "<=5", "error_rate<=abc", ""])
def test_parse_errors_name_the_expected_form(text: str) -> None:
    with pytest.raises(SLOSyntaxError, match="METRIC<=NUMBER"):
        parse_rule(text)


def test_evaluate_percentiles_scalars_and_unmeasured() -> None:
    ttft = Histogram()
    ttft.record_many(float(v) for v in range(1, 101))
    summary = {
        "error_rate": 0.02,
        "rate_limit": {"accuracy": 0.95, "retry_after": {"correct": True}},
        "e2e_ms": {"p50": 10.0},
    }
    rules = [
        parse_rule(t)
        for t in (
            "ttft_p95_ms<=96",
            "ttft_max_ms<100",
            "error_rate<=0.01",
            "rate_limit_accuracy>=0.9",
            "rate_limit_retry_after_correct==1",
            "e2e_p50_ms<=10",
            "itl_p99_ms<=5",
        )
    ]
    results = evaluate(rules, summary, {"ttft_ms": ttft})
    assert [r["passed"] for r in results] == [True, False, False, True, True, True, False]
    assert results[0]["observed"] == pytest.approx(95.0, abs=0.01)
    assert results[-1]["observed"] is None  # never measured -> fails


def test_observables_flatten_nested_blocks() -> None:
    flat = observables({"rate_limit": {"fairness": {"jain_index": 0.5}}, "ttft_ms": {"p99": 3.0}})
    assert flat["rate_limit_fairness_jain_index"] == 0.5
    assert flat["ttft_p99_ms"] == 3.0


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("ttft_p99<=500", "ttft_p99_ms"),
        ("errror_rate<=0.01", "error_rate"),
        ("tfft_p95_ms<=300", "ttft_p95_ms"),
        ("ttft_p0_ms<=300", "ttft_p50_ms"),
        ("cpu_percent<=80", None),
    ],
)
def test_unknown_metric_is_refused_with_close_matches(text: str, suggestion: str | None) -> None:
    """Issue #10 item 9: ``ttft_p99<=500`` used to be accepted and fail only after the whole
    run as "not measured"."""
    with pytest.raises(UnknownMetricError) as info:
        parse_rule(text)
    message = str(info.value)
    assert "\n" not in message and text.split("<")[0] in message
    if suggestion is not None:
        assert suggestion in message.split("did you mean", 1)[1].split("?")[0]
    assert isinstance(info.value, SLOSyntaxError)  # callers that catch syntax errors still do


def test_every_metric_a_summary_reports_is_known() -> None:
    names = set(known_metrics())
    metrics = ["error_rate", "output_tokens_per_s", "ttft_p95_ms", "itl_p99.9_ms", "e2e_max_ms"]
    for metric in [*metrics, "requests_ok", "requests_total", "schedule_lag_p99_ms"]:
        assert metric in names
        parse_rule(f"{metric}<=1")
