"""The run summary (``reports/load-summary.json``) and the metrics CSV, built on the master.

Keys of the summary (percentile blocks are ms floats, ``None`` when nothing was measured)::

    host, users, duration_s, scenario,
    requests: {<every outcome class of relaygate.load.outcomes: ok, truncated, …,
               request_timeout, oversize, overrun, client_exception, incomplete>,
               total, by_status: {code: n}},
    error_rate,                      # 1 - ok / total (429s and incomplete requests included)
    ttft_ms, ack_ms, itl_ms, tpot_ms, e2e_ms, schedule_lag_ms,
    ttft_intended_ms, e2e_intended_ms, emit_to_recv_ms, first_token_emit_to_recv_ms,
    itl_stamp_error_ms, recv_lag_ms,
                                     # each {p50, p90, p95, p99, p99.9, max, mean, count}
    output_tokens_per_s, output_tokens, output_tokens_source,
    pacer: {target_rps, achieved_rps, late_slots, max_late_ms} | None,
    rate_limit: {...},               # prober analysis, or 429 stats of the run
    relay_overhead: {...} | None,    # RelayOverheadUser: relay minus direct
    self_check: {loop_lag_ms, cpu_percent, latency_valid, reasons},
    latency_valid,
    slo: [{rule, observed, threshold, passed}]
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from relaygate.keys import mask_secrets
from relaygate.load import outcomes, selfcheck
from relaygate.load.metrics import Registry
from relaygate.load.prober import summarize_stream_429s

__all__ = ["build_summary", "mask_url", "write_metrics_csv", "write_summary"]

SUMMARY_FILE = "load-summary.json"
LATENCY_BLOCKS = (
    "ttft_ms",
    "ack_ms",
    "itl_ms",
    "tpot_ms",
    "e2e_ms",
    "schedule_lag_ms",
    "ttft_intended_ms",
    "e2e_intended_ms",
    "emit_to_recv_ms",
    "first_token_emit_to_recv_ms",
    "itl_stamp_error_ms",
    "recv_lag_ms",
)
_QS = (50, 90, 99)
# Percentiles kept per histogram in load-summary.json (p95 and p99.9 added to the issue's
# p50/p90/p99 so that saved summaries can be gated on them).
_SUMMARY_QS = (50, 90, 95, 99, 99.9)


def mask_url(url: str | None) -> str | None:
    """Drop ``user:password@`` and mask key-shaped strings (e.g. in a query)."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    if parts.username or parts.password:
        netloc = f"***@{netloc}"
    return mask_secrets(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")))


def _block(registry: Registry, name: str) -> dict[str, Any]:
    hist = registry.hists.get(name)
    if hist is None or not hist.count:
        return {f"p{q:g}": None for q in _SUMMARY_QS} | {"max": None, "mean": None, "count": 0}
    return hist.summary(_SUMMARY_QS)


def build_summary(
    registry: Registry,
    *,
    host: str | None,
    users: int | None,
    duration_s: float,
    scenario: Sequence[str],
    target_rps: float | None = None,
) -> dict[str, Any]:
    c = registry.counters
    requests: dict[str, Any] = {
        name: int(c.get(f"outcome.{name}", 0)) for name in outcomes.OUTCOMES
    }
    total = int(c.get("requests", 0))
    requests["total"] = total
    requests["by_status"] = {
        key.split(".", 1)[1]: int(value)
        for key, value in sorted(c.items())
        if key.startswith("status.")
    }
    summary: dict[str, Any] = {
        "host": mask_url(host),
        "users": users,
        "duration_s": round(duration_s, 3),
        "scenario": ",".join(scenario),
        "requests": requests,
        "error_rate": round(1.0 - requests[outcomes.OK] / total, 6) if total else None,
    }
    for name in LATENCY_BLOCKS:
        summary[name] = _block(registry, name)
    tokens = c.get("output_tokens", 0)
    summary["output_tokens"] = int(tokens)
    summary["output_tokens_per_s"] = round(tokens / duration_s, 3) if duration_s > 0 else None
    without_usage = int(c.get("output_tokens_without_usage", 0))
    summary["output_tokens_source"] = (
        "usage" if not without_usage else f"token events for {without_usage} streams without usage"
    )
    if target_rps:
        summary["pacer"] = {
            "target_rps": target_rps,
            "achieved_rps": round(total / duration_s, 3) if duration_s > 0 else None,
            "late_slots": int(c.get("pacer.late", 0)),
            "max_late_ms": round(float(registry.extras.get("pacer_max_late_ms", 0.0)), 3),
        }
    else:
        summary["pacer"] = None
    analysis = registry.extras.get("rate_limit_analysis")
    if isinstance(analysis, Mapping):
        summary["rate_limit"] = dict(analysis)
    else:
        summary["rate_limit"] = summarize_stream_429s(
            requests[outcomes.RATE_LIMITED],
            total,
            int(c.get("rate_limited.retry_after_present", 0)),
            registry.hists.get("rate_limited_ms"),
        )
    summary["relay_overhead"] = _overhead(registry)
    check = selfcheck.verdict(registry.hists.get("loop_lag_ms"), registry.hists.get("cpu_percent"))
    summary["self_check"] = check
    summary["latency_valid"] = check["latency_valid"]
    summary["slo"] = []
    return summary


def _overhead(registry: Registry) -> dict[str, Any] | None:
    """Relay minus direct-to-upstream, per percentile (RelayOverheadUser)."""
    if not registry.counters.get("direct.requests"):
        return None
    out: dict[str, Any] = {"direct_requests": int(registry.counters["direct.requests"])}
    for name in ("ttft_ms", "ack_ms", "e2e_ms", "itl_ms", "emit_to_recv_ms"):
        relay = registry.hists.get(name)
        direct = registry.hists.get(f"direct.{name}")
        if relay is None or direct is None or not relay.count or not direct.count:
            continue
        stem = name[: -len("_ms")]
        for q in (50, 99):
            r, d = relay.percentile(q), direct.percentile(q)
            if r is not None and d is not None:
                out[f"{stem}_p{q}_added_ms"] = round(r - d, 3)
        out[f"direct_{name}"] = direct.summary(_SUMMARY_QS)
    return out


def write_summary(summary: Mapping[str, Any], report_dir: str | os.PathLike[str]) -> Path:
    path = Path(report_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    tmp.replace(path)  # never leave a half-written summary behind on Ctrl-C
    return path


def write_metrics_csv(registry: Registry, path: str | os.PathLike[str]) -> Path:
    """One row per histogram: name, count, p50, p90, p95, p99, p99.9, max, mean (ms)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    qs = (50, 90, 95, 99, 99.9)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "count", "p50", "p90", "p95", "p99", "p99.9", "max", "mean"])
        for name in sorted(registry.hists):
            hist = registry.hists[name]
            if not hist.count:
                continue
            pcts = hist.percentiles(qs)
            writer.writerow(
                [name, hist.count] + [_fmt(pcts[q]) for q in qs] + [_fmt(hist.max), _fmt(hist.mean)]
            )
    return out


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def format_table(registry: Registry) -> str:
    """The terminal table printed at the end of a run (ms)."""
    rows = [f"{'relaygate metric':<32}{'count':>9}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}"]
    for name in sorted(registry.hists):
        hist = registry.hists[name]
        if not hist.count or not re.search(r"_ms$", name):
            continue
        p = hist.percentiles(_QS)
        rows.append(
            f"{name:<32}{hist.count:>9}"
            + "".join(f"{(p[q] or 0):>10.2f}" for q in _QS)
            + f"{hist.max:>10.2f}"
        )
    return "\n".join(rows)
