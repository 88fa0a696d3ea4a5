"""``reports/index.html``: one self-contained page joining conformance and load results.

Self-contained means no network fetch of any kind: CSS inline, plots embedded as ``data:``
PNGs, no scripts from anywhere (the page has no script at all; ``<details>`` does the folding).
Everything taken from a report is HTML-escaped by Jinja2's autoescape and passed through
:func:`relaygate.keys.mask_secrets` first, so a key that slipped into a report is masked here.

Nothing is left out silently: skipped MUST cases the gate did not accept are listed as "not
verified" right after failures; the 429 prober's traffic, which is not in the load users'
outcome counts, has its own row; two different relay addresses in the two reports are named.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import platform
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from relaygate.keys import mask_secrets

__all__ = ["PLOTS", "FailureView", "render_page", "split_failure", "write_page"]

# (file name, caption) in page order
PLOTS: tuple[tuple[str, str], ...] = (
    ("load-ttft-itl-cdf.png", "TTFT and inter-token latency CDFs (ok streams)"),
    ("load-over-time.png", "Outcomes and TTFT over time"),
    ("load-rate-limit.png", "Accepted rate and 429 share vs offered rate (429 prober)"),
)
_LATENCY = (
    ("ttft_ms", "TTFT", "request sent → first token event (content, reasoning or tool call)"),
    ("ack_ms", "ack", "request sent → first SSE event of any kind"),
    ("itl_ms", "ITL", "gap between consecutive token events"),
    ("tpot_ms", "TPOT", "(last token − first token) / (tokens − 1), per request"),
    ("e2e_ms", "e2e", "request sent → end of the stream"),
    ("schedule_lag_ms", "schedule lag", "intended send → actual send"),
)
_FIELD = re.compile(r"^\s*(Expected|Actual|Evidence|Reproduce):\s?(.*)$")


@dataclasses.dataclass(frozen=True)
class FailureView:
    """A failed or deviating case, split into the parts a relay operator reads."""

    id: str
    title: str
    area: str
    faq: str
    level: str
    outcome: str
    requirement: str
    expected: str
    actual: str
    curl: str
    raw: str


def split_failure(case: Mapping[str, Any]) -> FailureView:
    """A failed case's ``details`` split into requirement / expected / actual / curl (the
    ``Evidence:`` line is left to the case's structured ``evidence`` key)."""
    text = str(case.get("details") or case.get("reason") or "")
    text = re.sub(r"^(?:[A-Za-z_]\w*\.)*\w+(?:Error|Failure): ", "", text).removeprefix("-> ")
    parts: dict[str, list[str]] = {"Expected": [], "Actual": [], "Evidence": [], "Reproduce": []}
    requirement: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        match = _FIELD.match(line)
        if match:
            current = parts[match.group(1)]
            current.append(match.group(2))
        elif line.strip().startswith("(how to read this"):
            continue
        elif current is None:
            requirement.append(line.strip())
        else:
            current.append(line.strip())
    return FailureView(
        id=str(case.get("id", "?")),
        title=str(case.get("title", "")),
        area=str(case.get("area", "")),
        faq=", ".join(str(f) for f in case.get("faq", []) or []),
        level=str(case.get("level", "")),
        outcome=str(case.get("outcome", "")),
        requirement=" ".join(r for r in requirement if r) or str(case.get("reason", "")),
        expected="\n".join(parts["Expected"]),
        actual="\n".join(parts["Actual"]),
        curl="\n".join(parts["Reproduce"]),
        raw=text,
    )


def _mode_line(conformance: Mapping[str, Any] | None) -> str:
    """Which mode ran, and what ground truth it had (``run_mode``), else the bare ``mode``."""
    if conformance is None:
        return "–"
    detail = conformance.get("run_mode")
    if isinstance(detail, Mapping) and detail.get("summary"):
        return str(detail["summary"])
    return str(conformance.get("mode", "–"))


def _plot_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _skip_classes() -> dict[str, str]:
    from relaygate.suite.results import SKIP_CLASSES

    return SKIP_CLASSES


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("relaygate", "locust", "pytest"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


def _areas(cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    from relaygate.suite.results import AREAS

    rows: dict[str, dict[str, Any]] = {}
    for case in cases:
        area = str(case.get("area", "?"))
        row = rows.setdefault(
            area,
            {
                "area": area,
                "title": AREAS.get(area, area),
                "passed": 0,
                "failed": 0,
                "deviation": 0,
                "skipped": 0,
            },
        )
        outcome = str(case.get("outcome", "skipped"))
        row[outcome if outcome in row else "failed"] += 1
    order = list(AREAS)
    return sorted(
        rows.values(),
        key=lambda r: (-r["failed"], order.index(r["area"]) if r["area"] in order else 99),
    )


def _skips(cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[str]] = {}
    for case in cases:
        if case.get("outcome") == "skipped":
            groups.setdefault(str(case.get("reason", "")), []).append(str(case.get("id")))
    return [
        {"reason": reason, "ids": ids}
        for reason, ids in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]


def _judged(conformance: Mapping[str, Any] | None, verdict: Any) -> Mapping[str, Any] | None:
    """The gate's view of the conformance report: the verdict's, or judged with no allowance."""
    from relaygate import gate

    if verdict is not None:
        judged = verdict.to_json().get("conformance")
        return judged if isinstance(judged, Mapping) else None
    if conformance is None:
        return None
    try:
        judged = gate.evaluate(conformance, None).to_json()["conformance"]
    except gate.GateInputError:
        return None
    return judged if isinstance(judged, Mapping) else None


def _area_not_verified(judged: Mapping[str, Any] | None, areas: list[dict[str, Any]]) -> None:
    """Add each area's count of not verified cases (the area table's column)."""
    ids = {i for g in (judged or {}).get("not_verified", []) for i in g.get("ids", [])}
    for row in areas:
        row["not_verified"] = 0
    by_area = {row["area"]: row for row in areas}
    for case_id in ids:
        area_row = by_area.get(case_id.split(".", 1)[0])
        if area_row is not None:
            area_row["not_verified"] += 1


def _prober(load: Mapping[str, Any]) -> dict[str, Any] | None:
    """The 429 prober's own traffic: it is not in the load users' ``requests`` counts."""
    rl = load.get("rate_limit")
    if not isinstance(rl, Mapping) or not isinstance(rl.get("requests"), int):
        return None
    return {"requests": rl["requests"], "rate_limited": rl.get("rate_limited")}


def _rate_limit(load: Mapping[str, Any]) -> dict[str, Any] | None:
    rl = load.get("rate_limit")
    if not isinstance(rl, Mapping) or not (rl.get("steps") or rl.get("discovered")):
        return None
    return dict(rl)


def render_page(
    conformance: Mapping[str, Any] | None,
    load: Mapping[str, Any] | None,
    *,
    plots_dir: Path | None = None,
    verdict: Any = None,
    title: str = "relaygate report",
    secrets: Sequence[str | None] = (),
    generated_at: dt.datetime | None = None,
) -> str:
    """The page as a string. ``verdict`` is a :class:`relaygate.gate.Verdict` (or None)."""
    import jinja2

    from relaygate.gate import relay_mismatch
    from relaygate.report.audit import SEVERITIES, build_audit

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ms"] = lambda v: "–" if not isinstance(v, int | float) else f"{v:,.2f}"
    env.filters["num"] = lambda v: "–" if not isinstance(v, int | float) else f"{v:,.4g}"
    env.filters["pct"] = lambda v: "–" if not isinstance(v, int | float) else f"{v:.0%}"
    cases = list((conformance or {}).get("cases") or [])
    failures = [split_failure(c) for c in cases if c.get("outcome") == "failed"]
    deviations = [split_failure(c) for c in cases if c.get("outcome") == "deviation"]
    judged = _judged(conformance, verdict)
    areas = _areas(cases)
    _area_not_verified(judged, areas)
    prober = _prober(load) if load is not None else None
    plots = []
    if load is not None and plots_dir is not None:
        for name, caption in PLOTS:
            uri = _plot_uri(plots_dir / name)
            if uri and name == "load-over-time.png" and prober is not None:
                caption += (
                    f" - load users only: the 429 prober's {prober['requests']} requests "
                    f"({prober['rate_limited']} answered 429) are in the rate-limit plot"
                )
            if uri:
                plots.append({"name": name, "caption": caption, "uri": uri})
    conformance_url = str((conformance or {}).get("relay_url") or "")
    load_host = str((load or {}).get("host") or "")
    relay_url = conformance_url or load_host or "?"
    # Two reports about two different relays must not read as one; say so in one line.
    mismatch = relay_mismatch(conformance_url, load_host)
    verdict_json = verdict.to_json() if verdict is not None else None
    if verdict_json is not None and mismatch:
        # shown once, as the page's own warning above the verdict
        verdict_json["notes"] = [n for n in verdict_json["notes"] if n != mismatch]
    html = env.get_template("index.html.j2").render(
        title=title,
        verdict=verdict_json,
        meta={
            "relay_url": relay_url,
            "profile": (conformance or {}).get("profile", "–"),
            "mode": _mode_line(conformance),
            "generated_at": (generated_at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
            "suite_started_at": (conformance or {}).get("started_at", "–"),
            "versions": _versions(),
        },
        conformance=conformance,
        audit=build_audit(conformance) if conformance is not None else None,
        severities=SEVERITIES,
        summary=(conformance or {}).get("summary") or {},
        areas=areas,
        failures=failures,
        deviations=deviations,
        skips=_skips(cases),
        judged=judged,
        skip_classes=_skip_classes(),
        relay_mismatch=mismatch,
        prober=prober,
        cases=cases,
        load=load,
        latency=[
            (key, name, doc, (load or {}).get(key) or {})
            for key, name, doc in _LATENCY
            if load is not None
        ],
        rate_limit=_rate_limit(load) if load is not None else None,
        plots=plots,
    )
    return mask_secrets(html, *secrets)


def write_page(
    path: Path,
    conformance: Mapping[str, Any] | None,
    load: Mapping[str, Any] | None,
    **kwargs: Any,
) -> Path:
    """Render and write the page (UTF-8); the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(conformance, load, **kwargs), encoding="utf-8")
    return path
