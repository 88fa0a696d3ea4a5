"""SLO rules: parsing, evaluation against summaries and histograms, 'not measured' fails."""

from __future__ import annotations

import pytest

from relaygate.load.histogram import Histogram
from relaygate.load.slo import SLOSyntaxError, evaluate, observables, parse_rule


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold"),
    [
        ("ttft_p95_ms<=500", "ttft_p95_ms", "<=", 500.0),
        (" error_rate <= 0.01 ", "error_rate", "<=", 0.01),
        ("rate_limit_accuracy>=0.9", "rate_limit_accuracy", ">=", 0.9),
        ("itl_p99.9_ms<40", "itl_p99.9_ms", "<", 40.0),
        ("output_tokens_per_s>1e3", "output_tokens_per_s", ">", 1000.0),
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
