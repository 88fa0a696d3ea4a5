"""Histogram: resolution, percentiles against an exact nearest-rank computation, merging."""

from __future__ import annotations

import math
import random

import pytest

from relaygate.load.histogram import Histogram, bucket_bounds, bucket_index


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def allowed_error(value: float) -> float:
    """Half a bucket: 5 µs below 100 ms, 0.05 % above (plus float slack)."""
    return (0.005 if value < 100 else value * 0.0005) + 1e-9


@pytest.mark.parametrize("value", [0.0, 0.004, 0.01, 1.2345, 19.99, 99.999, 100.0, 250.0, 9999.0])
def test_bucket_contains_value_and_resolution(value: float) -> None:
    low, high = bucket_bounds(bucket_index(value))
    assert low <= value < high
    assert high - low <= (0.01 + 1e-12 if value < 100 else value * 0.0011)


def test_resolution_below_100ms_is_at_most_0_1ms() -> None:
    hist = Histogram()
    hist.record(12.34)
    hist.record(12.44)
    assert hist.percentile(0) != hist.percentile(100)
    assert len(hist.buckets) == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_exact_nearest_rank(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(3, 1.2) for _ in range(5000)] + [
        rng.uniform(0, 5) for _ in range(500)
    ]
    hist = Histogram()
    hist.record_many(values)
    for q in (0, 1, 50, 90, 99, 99.9, 100):
        exact = exact_percentile(values, q) if q else min(values)
        got = hist.percentile(q)
        assert got is not None
        assert abs(got - exact) <= allowed_error(exact), (q, got, exact)
    assert hist.max == max(values) and hist.min == min(values)
    assert hist.mean == pytest.approx(sum(values) / len(values))
    assert hist.percentiles([50, 99]) == {50: hist.percentile(50), 99: hist.percentile(99)}


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    parts = [[rng.expovariate(1 / 30) for _ in range(1000)] for _ in range(3)]
    merged = Histogram()
    for part in parts:
        piece = Histogram()
        piece.record_many(part)
        merged.merge(Histogram.from_dict(piece.to_dict()))  # through the wire format
    whole = Histogram()
    whole.record_many(v for part in parts for v in part)
    assert merged.buckets == whole.buckets
    assert (merged.count, merged.min, merged.max) == (whole.count, whole.min, whole.max)
    assert merged.sum == pytest.approx(whole.sum)


def test_negative_and_nan_values_are_accounted_not_poisoning() -> None:
    hist = Histogram()
    hist.record(-0.5)
    hist.record(float("nan"))
    hist.record(3.0)
    assert hist.count == 2 and hist.negative == 1 and hist.min == 0.0


def test_empty_histogram_and_plain_dict_snapshot() -> None:
    hist = Histogram()
    assert hist.percentile(50) is None and hist.mean is None
    snap = hist.to_dict()
    assert snap["n"] == 0 and Histogram.from_dict(snap).count == 0
    hist.record(5.0)
    assert set(hist.summary()) == {"p50", "p90", "p99", "max", "mean", "count"}
