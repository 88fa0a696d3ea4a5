"""The conformance matrix: rows = cases, columns = relay configurations
(``reports/relays/matrix.md|html``).

Reads ``<report dir>/<row>/conformance.json`` (and ``load-summary.json``, ``run.json``) for each
run (``litellm``, ``litellm:quickstart``, …) and joins them. Per column it shows the version, the
exact configuration run (its description and the documentation that shows it), the findings
(failed MUST and SHOULD cases), the deviations with the documentation they cite and the skips
with their reasons. A configuration whose suite did not run at all gets a column of ``not run``
with the reason from ``run.json`` — never an empty, green-looking column.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MatrixColumn", "load_column", "render_html", "render_markdown", "write_matrix"]

OUTCOMES = ("passed", "failed", "deviation", "skipped")
_SYMBOL = {"passed": "pass", "failed": "**FAIL**", "deviation": "dev", "skipped": "skip"}
_COLOR = {
    "passed": "#1a7f37",
    "failed": "#cf222e",
    "deviation": "#8250df",
    "skipped": "#9a6700",
    "not run": "#57606a",
}


@dataclasses.dataclass(frozen=True)
class MatrixColumn:
    """One relay's results."""

    name: str
    version: str
    profile: str
    cases: Mapping[str, Mapping[str, Any]]  # case id -> case record of conformance.json
    counts: Mapping[str, int]
    load: Mapping[str, Any] | None
    run: Mapping[str, Any]

    @property
    def configuration(self) -> str:
        """What was deployed, and the documentation that shows it ("" for the reference)."""
        conf = self.run.get("configuration")
        if not isinstance(conf, dict):
            return ""
        return f"{conf.get('description', '')} (docs: {conf.get('docs', '')})"

    def findings(self, level: str) -> list[Mapping[str, Any]]:
        """The failed cases of one level (``MUST`` or ``SHOULD``)."""
        return [
            c
            for c in self.cases.values()
            if c.get("outcome") == "failed" and c.get("level", "MUST") == level
        ]

    @property
    def error(self) -> str | None:
        if self.cases:
            return None
        err = self.run.get("error") or "the suite did not run"
        return str(err)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_column(relay_dir: Path) -> MatrixColumn:
    run = _read(relay_dir / "run.json") or {}
    conf = _read(relay_dir / "conformance.json") or {}
    cases = {str(c["id"]): c for c in conf.get("cases", []) if isinstance(c, dict) and "id" in c}
    counts = {o: 0 for o in OUTCOMES}
    for case in cases.values():
        counts[case.get("outcome", "skipped")] = counts.get(case.get("outcome", "skipped"), 0) + 1
    return MatrixColumn(
        name=str(run.get("relay", relay_dir.name)),
        version=str(run.get("version", "?")),
        profile=str(run.get("profile", conf.get("profile", "?"))),
        cases=cases,
        counts=counts,
        load=_read(relay_dir / "load-summary.json"),
        run=run,
    )


def _rows(columns: Sequence[MatrixColumn]) -> list[tuple[str, str, str]]:
    """(case id, title, area) in the suite's order, union over all columns."""
    seen: dict[str, tuple[str, str, str]] = {}
    for col in columns:
        for cid, case in col.cases.items():
            seen.setdefault(cid, (cid, str(case.get("title", "")), str(case.get("area", ""))))
    return list(seen.values())


def _first_line(text: str, limit: int = 160) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _pct(load: Mapping[str, Any] | None, metric: str, q: str) -> str:
    if not load:
        return "–"
    value = (load.get(metric) or {}).get(q)
    return f"{value:.1f}" if isinstance(value, int | float) else "–"


def _load_line(load: Mapping[str, Any] | None) -> str:
    if not load:
        return "no load run"
    req = load.get("requests") or {}
    ok = req.get("ok", 0)
    bad = sum(v for k, v in req.items() if k not in ("ok", "total") and isinstance(v, int))
    line = (
        f"{ok} ok / {bad} not ok; TTFT p50 {_pct(load, 'ttft_ms', 'p50')} ms, "
        f"p99 {_pct(load, 'ttft_ms', 'p99')} ms; ITL p50 {_pct(load, 'itl_ms', 'p50')} ms"
    )
    rl = load.get("rate_limit") or {}
    if rl.get("steps") or rl.get("discovered"):
        limit = rl.get("limit") or {}
        ra = rl.get("retry_after") or {}
        accuracy = rl.get("accuracy")
        share = rl.get("retry_after_present_share")
        if ra.get("correct"):
            retry = "Retry-After correct"
        elif ra.get("present") is False or share == 0:
            retry = "no Retry-After"
        elif ra.get("error") and isinstance(share, int | float):
            retry = f"Retry-After on {share:.0%} of 429s, not verified ({ra['error']})"
        elif ra.get("error"):
            retry = f"Retry-After not verified ({ra['error']})"
        else:
            retry = "Retry-After wrong" if ra else "Retry-After not probed"
        line += (
            f"; 429 prober: limit {limit.get('requests', '?')}/{limit.get('window_s', '?')} s, "
            f"accuracy {accuracy if accuracy is not None else '–'}, {retry}"
        )
    return line


def render_markdown(columns: Sequence[MatrixColumn]) -> str:
    out = ["# relaygate conformance matrix", ""]
    out.append(
        "Each relay installed at the pinned version, pointed at the relaygate mock upstream on "
        "127.0.0.1 and checked with its profile (`fixtures/profiles/<name>.toml`). "
        "`dev` = a deviation the profile documents (from the relay's own docs); "
        "`skip` = the case could not verify its rule (reason below)."
    )
    out.append(
        "A row per documented configuration: `litellm` is the relay's default configuration, "
        "`litellm:quickstart` another deployment its documentation shows (`relaygate relay list`)."
    )
    out += [
        "",
        "| relay | version | profile | passed | failed MUST | failed SHOULD | deviation | "
        "skipped | load |",
    ]
    out.append("|---|---|---|---|---|---|---|---|---|")
    for col in columns:
        c = col.counts
        if col.error:
            out.append(
                f"| {col.name} | {col.version} | {col.profile} | – | – | – | – | – | "
                f"not run: {_first_line(col.error)} |"
            )
            continue
        out.append(
            f"| {col.name} | {col.version} | {col.profile} | {c['passed']} | "
            f"{len(col.findings('MUST'))} | {len(col.findings('SHOULD'))} | "
            f"{c['deviation']} | {c['skipped']} | {_load_line(col.load)} |"
        )
    out += ["", "## Cases", ""]
    out.append("| case | " + " | ".join(col.name for col in columns) + " |")
    out.append("|---|" + "---|" * len(columns))
    for cid, _title, _area in _rows(columns):
        cells = []
        for col in columns:
            case = col.cases.get(cid)
            cells.append("not run" if case is None else _SYMBOL.get(case["outcome"], "?"))
        out.append(f"| `{cid}` | " + " | ".join(cells) + " |")
    for col in columns:
        out += ["", f"## {col.name} {col.version}", ""]
        if col.configuration:
            out += [f"Configuration: {col.configuration}; profile `{col.profile}`.", ""]
        if col.error:
            out += [f"Not run: {col.error}", ""]
            continue
        sections = (
            ("Findings: failed MUST cases", col.findings("MUST"), 160),
            ("Findings: failed SHOULD cases", col.findings("SHOULD"), 160),
            # A deviation's reason ends with the documentation it cites: never cut it.
            ("Documented deviations", _with_outcome(col, "deviation"), 600),
            ("Skipped", _with_outcome(col, "skipped"), 160),
        )
        for heading, picked, limit in sections:
            if not picked:
                continue
            out += [f"### {heading} ({len(picked)})", ""]
            for case in picked:
                reason = _first_line(str(case.get("reason") or case.get("details") or ""), limit)
                out.append(f"- `{case['id']}` — {case.get('title', '')}: {reason}")
            out.append("")
        out.append(f"Load: {_load_line(col.load)}")
    return "\n".join(out) + "\n"


def _with_outcome(col: MatrixColumn, outcome: str) -> list[Mapping[str, Any]]:
    return [c for c in col.cases.values() if c.get("outcome") == outcome]


def render_html(columns: Sequence[MatrixColumn]) -> str:
    esc = html.escape
    head = "".join(
        f'<th><a href="{esc(col.name)}/index.html">{esc(col.name)}</a>'
        f"<br><small>{esc(col.version)}</small></th>"
        for col in columns
    )
    summary = []
    for col in columns:
        c = col.counts
        status = (
            f"<td colspan=4>not run: {esc(_first_line(col.error))}</td>"
            if col.error
            else "".join(
                f'<td style="color:{_COLOR[o]}">{c[o]}</td>'
                for o in ("passed", "failed", "deviation", "skipped")
            )
        )
        summary.append(
            f'<tr><th><a href="{esc(col.name)}/index.html">{esc(col.name)}</a>'
            f"<br><small>{esc(col.configuration)}</small></th>"
            f"<td>{esc(col.version)}</td>"
            f"<td><code>{esc(col.profile)}</code></td>{status}"
            f"<td>{esc(_load_line(col.load))}</td></tr>"
        )
    rows = []
    for cid, title, area in _rows(columns):
        cells = []
        for col in columns:
            case = col.cases.get(cid)
            outcome = "not run" if case is None else str(case["outcome"])
            detail = "" if case is None else str(case.get("details") or case.get("reason") or "")
            cells.append(
                f'<td class="o" style="color:{_COLOR.get(outcome, "#000")}" '
                f'title="{esc(detail)}">{esc(outcome)}</td>'
            )
        rows.append(
            f"<tr><td><code>{esc(cid)}</code><br><small>{esc(title)} · {esc(area)}</small></td>"
            + "".join(cells)
            + "</tr>"
        )
    details = []
    for col in columns:
        bad = [c for c in col.cases.values() if c.get("outcome") in ("failed", "deviation")]
        if not bad:
            continue
        details.append(f"<h3>{esc(col.name)}: failures and deviations</h3>")
        for case in sorted(bad, key=lambda c: (c["outcome"] != "failed", c["id"])):
            body = str(case.get("details") or case.get("reason") or "")
            details.append(
                f'<details><summary><b style="color:{_COLOR[case["outcome"]]}">'
                f"{esc(case['outcome'])}</b> <code>{esc(case['id'])}</code> "
                f"{esc(str(case.get('title', '')))}</summary><pre>{esc(body)}</pre></details>"
            )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>relaygate conformance matrix</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328}}
table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #d0d7de;padding:.25rem .5rem;
text-align:left;vertical-align:top}} td.o{{font-weight:600;text-align:center}}
pre{{white-space:pre-wrap;font-size:.8rem;background:#f6f8fa;padding:.5rem}}
small{{color:#57606a}}
</style></head><body>
<h1>relaygate conformance matrix</h1>
<table><thead><tr><th>relay</th><th>version</th><th>profile</th><th>passed</th><th>failed</th>
<th>deviation</th><th>skipped</th><th>load</th></tr></thead><tbody>{"".join(summary)}</tbody>
</table>
<h2>Cases</h2>
<table><thead><tr><th>case</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
<h2>Details</h2>
{"".join(details)}
</body></html>
"""


def write_matrix(report_dir: Path, names: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write ``matrix.md`` and ``matrix.html`` from the relay dirs under ``report_dir``."""
    dirs = sorted(p for p in report_dir.iterdir() if p.is_dir()) if report_dir.is_dir() else []
    if names is not None:
        wanted = list(names)
        dirs = [report_dir / n for n in wanted if (report_dir / n).is_dir()]
    columns = [load_column(d) for d in dirs]
    md = report_dir / "matrix.md"
    page = report_dir / "matrix.html"
    report_dir.mkdir(parents=True, exist_ok=True)
    md.write_text(render_markdown(columns), encoding="utf-8")
    page.write_text(render_html(columns), encoding="utf-8")
    return md, page
