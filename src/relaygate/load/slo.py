"""SLO rules: ``--slo ttft_p95_ms<=500`` and friends, evaluated against the run summary.

Grammar: ``<metric> <op> <number>`` with ``op`` one of ``<=``, ``<``, ``>=``, ``>``, ``==``.
Metrics:

* ``<hist>_p<q>_ms`` / ``<hist>_max_ms`` / ``<hist>_mean_ms`` for any histogram of the
  registry (``ttft``, ``ack``, ``itl``, ``tpot``, ``e2e``, ``ttft_intended``,
  ``e2e_intended``, ``schedule_lag``, ``emit_to_recv``, ``rate_limited``, …), e.g.
  ``itl_p99.9_ms<=40``;
* any number in the summary addressed by its flat name: ``error_rate``,
  ``output_tokens_per_s``, ``rate_limit_accuracy``, ``rate_limit_share``,
  ``retry_after_correct``, ``fairness_jain``, ``rate_limited_p99_ms``, … (see
  :func:`observables`).

A metric name that no run can produce (``ttft_p99`` for ``ttft_p99_ms``) is refused when the
rule is parsed, before anything runs, with the close matches in the message
(:class:`UnknownMetricError`). A rule whose metric exists but was not measured in this run
**fails** ("not measured"): a gate must never pass because the thing it guards did not happen.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from relaygate.load.histogram import Histogram

__all__ = [
    "SLORule",
    "SLOSyntaxError",
    "UnknownMetricError",
    "check_line",
    "evaluate",
    "known_metrics",
    "observables",
    "parse_rule",
    "validate_metric",
]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}
_RULE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*?)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+)\s*$")
_PCT_RE = re.compile(r"^(?P<hist>[a-z_.]+?)_(?:p(?P<q>\d+(?:\.\d+)?)|(?P<agg>max|mean|min))_ms$")


class SLOSyntaxError(ValueError):
    """A ``--slo`` rule does not parse; the message shows the expected form."""


class UnknownMetricError(SLOSyntaxError):
    """A ``--slo`` rule names a metric no run produces; the message lists close matches."""


# Summary blocks whose keys depend on the run (the prober's phases, status codes seen, the
# overhead scenario, the self-check): any flat name under them is accepted.
_OPEN_PREFIXES = ("rate_limit_", "relay_overhead_", "requests_by_status_", "self_check_", "pacer_")
_AGGREGATES = ("p50", "p90", "p95", "p99", "p99.9", "max", "mean", "min")


@dataclasses.dataclass(frozen=True, slots=True)
class SLORule:
    metric: str
    op: str
    threshold: float
    text: str

    def check(self, observed: float | None) -> bool:
        return observed is not None and _OPS[self.op](observed, self.threshold)


def parse_rule(text: str) -> SLORule:
    """``"ttft_p95_ms<=500"`` -> :class:`SLORule`."""
    match = _RULE_RE.match(text)
    if not match:
        raise SLOSyntaxError(
            f"SLO rule {text!r} must look like METRIC<=NUMBER, e.g. ttft_p95_ms<=500 "
            "or error_rate<=0.01 (operators: <= < >= > ==)"
        )
    metric, op, number = match.groups()
    try:
        threshold = float(number)
    except ValueError:
        raise SLOSyntaxError(f"SLO rule {text!r}: {number!r} is not a number") from None
    try:
        validate_metric(metric)
    except UnknownMetricError as exc:
        raise UnknownMetricError(f"SLO rule {text.strip()!r}: {exc}") from None
    return SLORule(metric, op, threshold, f"{metric}{op}{number}")


@functools.cache
def known_metrics() -> tuple[str, ...]:
    """The metric names a run can report: every histogram aggregate (``ttft_p95_ms``, …) and
    every number of a summary. Names under the run-dependent blocks (``rate_limit_…``) are
    represented by the ones every summary has."""
    # Lazy: the summary module pulls in the load client; `relaygate gate` parses rules too.
    from relaygate.load.metrics import HISTOGRAMS, SCOPES, Registry
    from relaygate.load.summary import build_summary

    names: set[str] = set()
    empty = build_summary(Registry(), host=None, users=0, duration_s=1.0, scenario=(), target_rps=1)
    _leaf_names("", empty, names)  # an empty run leaves many numbers None: keep their names
    names.update(
        f"{scope}{hist}_{agg}_ms" for scope in SCOPES for hist in HISTOGRAMS for agg in _AGGREGATES
    )
    return tuple(sorted(names))


def validate_metric(metric: str) -> None:
    """Raise :class:`UnknownMetricError` unless some run can report ``metric``."""
    from relaygate.load.metrics import HISTOGRAMS, SCOPES

    match = _PCT_RE.match(metric)
    if match:
        hist = match.group("hist")
        stem = next((hist[len(s) :] for s in SCOPES if s and hist.startswith(s)), hist)
        q = match.group("q")
        if stem in HISTOGRAMS and (q is None or 0 < float(q) <= 100):
            return
    if metric in known_metrics() or metric.startswith(_OPEN_PREFIXES):
        return
    close = difflib.get_close_matches(metric, known_metrics(), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UnknownMetricError(
        f"unknown metric {metric!r}; {hint}metrics: <histogram>_p<q>_ms, _max_ms, _mean_ms "
        "(ttft, itl, e2e, …) or a number of the summary (error_rate, …); see docs/load.md"
    )


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, bool):
        out[prefix] = 1.0 if value else 0.0
    elif isinstance(value, (int, float)):
        out[prefix] = float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}_{key}" if prefix else str(key), item, out)


def _leaf_names(prefix: str, value: Any, out: set[str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _leaf_names(f"{prefix}_{key}" if prefix else str(key), item, out)
    elif value is None or isinstance(value, (int, float)):
        out.add(prefix)


def observables(summary: Mapping[str, Any]) -> dict[str, float]:
    """Every number of the summary by flat name: ``rate_limit.accuracy`` is
    ``rate_limit_accuracy``.

    Percentile blocks are also reachable as ``ttft_p50_ms`` (the summary stores
    ``ttft_ms: {"p50": …}``), so rules read the way operators say them.
    """
    out: dict[str, float] = {}
    _flatten("", summary, out)
    for key, value in summary.items():
        if key.endswith("_ms") and isinstance(value, Mapping):
            stem = key[: -len("_ms")]
            for agg, number in value.items():
                if isinstance(number, (int, float)) and not isinstance(number, bool):
                    out[f"{stem}_{agg}_ms"] = float(number)
    return out


def observe(
    metric: str, summary: Mapping[str, Any], hists: Mapping[str, Histogram]
) -> float | None:
    """The observed value of ``metric``; percentiles come from the merged histograms."""
    match = _PCT_RE.match(metric)
    if match:
        hist = hists.get(f"{match.group('hist')}_ms")
        if hist is not None and hist.count:
            if match.group("q") is not None:
                return hist.percentile(float(match.group("q")))
            agg = match.group("agg")
            return hist.max if agg == "max" else hist.min if agg == "min" else hist.mean
    return observables(summary).get(metric)


def evaluate(
    rules: list[SLORule], summary: Mapping[str, Any], hists: Mapping[str, Histogram]
) -> list[dict[str, Any]]:
    """``[{"rule", "observed", "threshold", "passed"}]`` in rule order."""
    results = []
    for rule in rules:
        observed = observe(rule.metric, summary, hists)
        results.append(
            {
                "rule": rule.text,
                "observed": None if observed is None else round(observed, 6),
                "threshold": rule.threshold,
                "passed": rule.check(observed),
            }
        )
    return results


def check_line(rule: str, observed: float | None, threshold: float, passed: bool) -> str:
    """``CHECK PASSED rule: observed X (threshold Y)`` - the line a run (and the gate) prints."""
    seen = "not measured" if observed is None else f"{observed:g}"
    verdict = "CHECK PASSED" if passed else "CHECK FAILED"
    return f"{verdict} {rule}: observed {seen} (threshold {threshold:g})"
