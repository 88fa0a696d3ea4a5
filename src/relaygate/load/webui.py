"""A "relaygate" tab in Locust's web UI: our fine histograms, live, beside Locust's own stats.

Uses Locust's documented extension points (``examples/extend_web_ui.py``): ``extended_tabs`` /
``extended_tables`` / ``extended_csv_files`` in the web UI's template arguments, and an
``extended_stats`` entry added to every ``/stats/requests`` answer the page polls. On the
master the registry holds the merged worker reports, so the tab shows the whole run.

Also ``GET /relaygate/metrics.csv`` (the same table as ``load-metrics.csv``) and
``GET /relaygate/metrics.json``.

Every text answer of the web UI leaves with the run's keys and header values masked: Locust
embeds the run's options (``--relay-key`` …) in its page, and a password field hides them
from the eye only, not from the page source.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from relaygate.keys import mask_secrets
from relaygate.load.metrics import Registry

__all__ = ["TAB_KEY", "install", "metric_rows"]

TAB_KEY = "relaygate"
_QS = (50, 90, 95, 99)
_COLUMNS = [
    {"key": "metric", "title": "relaygate metric (ms)"},
    {"key": "count", "title": "count"},
    *({"key": f"p{q}", "title": f"p{q}"} for q in _QS),
    {"key": "max", "title": "max"},
    {"key": "mean", "title": "mean"},
]


def metric_rows(registry: Registry) -> list[dict[str, Any]]:
    """One row per non-empty histogram, values in ms rounded to 0.01 (10 µs resolution)."""
    rows = []
    for name in sorted(registry.hists):
        hist = registry.hists[name]
        if not hist.count or not name.endswith("_ms"):
            continue
        pcts = hist.percentiles(_QS)
        row: dict[str, Any] = {"metric": name, "safe_name": name, "count": hist.count}
        for q in _QS:
            value = pcts[q]
            row[f"p{q}"] = None if value is None else round(value, 2)
        row["max"] = round(hist.max, 2)
        row["mean"] = round(hist.sum / hist.count, 2)
        rows.append(row)
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv

    out = io.StringIO()
    writer = csv.writer(out)
    keys = [c["key"] for c in _COLUMNS]
    writer.writerow(keys)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else row[k] for k in keys])
    return out.getvalue()


_TEXT_TYPES = ("text/html", "text/csv", "text/plain", "application/json")


def install(
    web_ui: Any,
    registry_of: Callable[[], Registry],
    secrets_of: Callable[[], tuple[str, ...]] = tuple,
) -> None:
    """Add the tab, the ``extended_stats`` feed and the CSV/JSON routes to Locust's web UI,
    and mask ``secrets_of()`` in every text answer."""
    from flask import Response, request

    web_ui.template_args["extended_tabs"] = [{"title": "relaygate", "key": TAB_KEY}]
    web_ui.template_args["extended_tables"] = [{"key": TAB_KEY, "structure": _COLUMNS}]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "/relaygate/metrics.csv", "title": "Download relaygate metrics CSV"}
    ]
    app = web_ui.app

    # Registered first, so Flask (which runs after_request hooks last-in first-out) masks
    # last, after every other hook has added its text.
    @app.after_request  # type: ignore[untyped-decorator]
    def _mask_secrets(response: Any) -> Any:
        secrets = secrets_of()
        if response.direct_passthrough or not response.mimetype.startswith(_TEXT_TYPES):
            return response
        text = response.get_data(as_text=True)
        masked = mask_secrets(text, *secrets)
        if masked != text:
            response.set_data(masked)
        return response

    @app.after_request  # type: ignore[untyped-decorator]
    def _extend_stats(response: Any) -> Any:
        if request.path != "/stats/requests" or response.status_code != 200:
            return response
        data = response.get_json(silent=True)
        if isinstance(data, dict):
            data["extended_stats"] = [{"key": TAB_KEY, "data": metric_rows(registry_of())}]
            response.set_data(json.dumps(data))
        return response

    def metrics_csv() -> Any:
        return Response(
            _csv(metric_rows(registry_of())),
            mimetype="text/csv",
            headers={"Content-Disposition": "attachment;filename=relaygate_metrics.csv"},
        )

    def metrics_json() -> Any:
        return Response(json.dumps(metric_rows(registry_of())), mimetype="application/json")

    app.add_url_rule("/relaygate/metrics.csv", "relaygate_metrics_csv", metrics_csv)
    app.add_url_rule("/relaygate/metrics.json", "relaygate_metrics_json", metrics_json)
