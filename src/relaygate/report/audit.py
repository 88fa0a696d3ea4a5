"""The customer's audit report: ``reports/audit.md`` and the page's "Audit" section.

Built from ``conformance.json`` alone, so it can be made again from a saved report::

    python -m relaygate.report.audit reports/conformance.json [-o reports/audit.md]

It is written for a relay's customer to send to the relay's support: the relay is named by
its host only, every finding carries its requirement, the reproducing request (a curl, keys
masked), the answer, the numbers the case recorded (local count vs reported vs billed), a
severity (how much it matters: the case's level and area) and a confidence (how sure the
finding is: exact, statistical, heuristic) kept apart. What was checked and held, what the
profile documents as different and what was *not tested* (with why) are three separate lists:
a skipped case is never counted as clean.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relaygate.keys import mask_secrets

__all__ = [
    "SEVERITIES",
    "Audit",
    "Finding",
    "build_audit",
    "main",
    "relay_host",
    "render_markdown",
    "severity",
    "write_audit",
]

# severity -> what it means for the customer, in report order
SEVERITIES: dict[str, str] = {
    "high": "a MUST rule about money, the model served, the answer's size or key safety",
    "medium": "a MUST rule elsewhere (errors, streaming, limits, SDK compatibility)",
    "low": "a SHOULD rule",
}
# Areas where a broken MUST rule costs the customer money or swaps the product they paid for.
_HIGH_AREAS = frozenset({"quota", "usage", "models", "max_tokens", "security"})
_DEFAULT_CONFIDENCE = "exact"
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_MODEL_IN_BODY = re.compile(r'"model"\s*:\s*"([^"\\]{1,100})"')


def severity(level: str, area: str) -> str:
    """``high`` / ``medium`` / ``low`` for a failed case of this level and area."""
    if level != "MUST":
        return "low"
    return "high" if area in _HIGH_AREAS else "medium"


def relay_host(url: str) -> str:
    """The relay named by host (and port) only: a path or query can carry a key or a tenant."""
    if not url or url == "embedded":
        return "the embedded stack"
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


@dataclasses.dataclass(frozen=True)
class Finding:
    """A failed case as the audit shows it."""

    id: str
    title: str
    area: str
    level: str
    faq: str
    severity: str
    confidence: str
    confidence_stated: bool
    requirement: str
    expected: str
    actual: str
    curl: str
    counts: tuple[tuple[str, Any], ...]
    excerpt: str
    model_requested: str
    model_served: str
    method: str


@dataclasses.dataclass(frozen=True)
class Audit:
    """Everything the audit report shows, from one ``conformance.json``."""

    relay: str
    date: str
    mode: str
    mode_name: str
    models: tuple[str, ...]
    models_recorded: bool
    version: str
    profile: str
    findings: tuple[Finding, ...]
    clean: tuple[tuple[str, tuple[str, ...]], ...]  # (area title, passed ids)
    deviations: tuple[tuple[str, str], ...]  # (id, what the profile says)
    not_tested: tuple[tuple[str, str, tuple[str, ...]], ...]  # (skip class, reason, ids)
    cost: tuple[tuple[str, str], ...]
    cost_note: str
    total: int

    @property
    def severity_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SEVERITIES, 0)
        for finding in self.findings:
            counts[finding.severity] += 1
        return counts

    @property
    def clean_count(self) -> int:
        return sum(len(ids) for _, ids in self.clean)

    @property
    def not_tested_count(self) -> int:
        return sum(len(ids) for _, _, ids in self.not_tested)


def _mode(doc: Mapping[str, Any]) -> tuple[str, str]:
    from relaygate.suite.results import RUN_MODES

    detail = doc.get("run_mode")
    if isinstance(detail, Mapping) and detail.get("summary"):
        name = str(detail.get("name") or doc.get("mode") or "?")
        # The mode's general meaning only when the run recorded everything it had.
        known = name in RUN_MODES and not detail.get("unknown")
        meaning = f" — {RUN_MODES[name]}" if known else ""
        return name, f"{detail['summary']}{meaning}"
    name = str(doc.get("mode") or "?")
    return name, f"{name} (this report does not say what ground truth the run had)"


def _finding(case: Mapping[str, Any]) -> Finding:
    from relaygate.report.page import split_failure

    view = split_failure(case)
    raw = case.get("evidence")
    evidence: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    counts = evidence.get("counts")
    confidence = evidence.get("confidence")
    area, level = str(case.get("area", "")), str(case.get("level", "MUST"))
    return Finding(
        id=view.id,
        title=view.title,
        area=area,
        level=level,
        faq=view.faq,
        severity=severity(level, area),
        confidence=str(confidence or _DEFAULT_CONFIDENCE),
        confidence_stated=bool(confidence),
        requirement=view.requirement,
        expected=view.expected,
        actual=view.actual,
        curl=view.curl,
        counts=tuple(counts.items()) if isinstance(counts, Mapping) else (),
        excerpt=str(evidence.get("excerpt") or ""),
        model_requested=str(evidence.get("model_requested") or ""),
        model_served=str(evidence.get("model_served") or ""),
        method=str(evidence.get("method") or ""),
    )


def _models(doc: Mapping[str, Any], findings: Sequence[Finding]) -> tuple[tuple[str, ...], bool]:
    recorded = doc.get("models")
    if isinstance(recorded, list) and recorded:
        return tuple(str(m) for m in recorded), True
    seen: dict[str, None] = {}
    for finding in findings:
        for name in (finding.model_requested, *_MODEL_IN_BODY.findall(finding.curl)):
            if name:
                seen[name] = None
    return tuple(seen), False


def _cost(doc: Mapping[str, Any], mode_name: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """``live_cost`` as (label, value) rows; or a note on why there is none."""
    cost = doc.get("live_cost")
    if isinstance(cost, Mapping):
        rows: list[tuple[str, str]] = []
        if isinstance(cost.get("usd"), int | float):
            rows.append(("spent", f"{cost['usd']:.6f} USD ({cost.get('quota', '?')} quota)"))
        if isinstance(cost.get("requests"), int):
            refused = cost.get("refused_requests")
            rows.append(("requests", f"{cost['requests']} ({refused} refused)"))
        if isinstance(cost.get("prompt_tokens"), int):
            tokens = f"{cost['prompt_tokens']} prompt + {cost.get('completion_tokens', '?')}"
            rows.append(("tokens", f"{tokens} completion"))
        if isinstance(cost.get("budget_usd"), int | float):
            rows.append(("budget", f"{cost['budget_usd']:.6f} USD"))
        if cost.get("stopped_by_budget"):
            rows.append(("stopped", "at the budget: the cases after it were not tested"))
        if cost.get("priced_with"):
            rows.append(("priced with", str(cost["priced_with"])))
        shown = {"usd", "quota", "requests", "refused_requests", "prompt_tokens"}
        shown |= {"completion_tokens", "budget_usd", "stopped_by_budget", "priced_with"}
        rows += [(str(k), str(v)) for k, v in cost.items() if k not in shown and v is not None]
        return tuple(rows), ""
    if cost is not None:
        return (("total", str(cost)),), ""
    if mode_name == "mock" or doc.get("relay_url") == "embedded":
        return (), "nothing: the upstream was the relaygate mock (no provider was paid)"
    return (), "not recorded by this run"


def build_audit(doc: Mapping[str, Any]) -> Audit:
    """The audit of one ``conformance.json`` document."""
    from relaygate.suite.results import AREAS, skip_class

    cases = [c for c in doc.get("cases") or [] if isinstance(c, Mapping)]
    order = list(SEVERITIES)
    findings = sorted(
        (_finding(c) for c in cases if c.get("outcome") == "failed"),
        key=lambda f: (order.index(f.severity), f.area, f.id),
    )
    clean: dict[str, list[str]] = {}
    not_tested: dict[tuple[str, str], list[str]] = {}
    deviations: list[tuple[str, str]] = []
    for case in cases:
        outcome, cid = case.get("outcome"), str(case.get("id", "?"))
        if outcome == "passed":
            area = str(case.get("area", "?"))
            clean.setdefault(AREAS.get(area, area), []).append(cid)
        elif outcome == "skipped":
            reason = str(case.get("reason", ""))
            klass = str(case.get("skip_class") or skip_class(reason))
            not_tested.setdefault((klass, reason), []).append(cid)
        elif outcome == "deviation":
            deviations.append((cid, str(case.get("reason", ""))))
    mode_name, mode = _mode(doc)
    models, models_recorded = _models(doc, findings)
    cost, cost_note = _cost(doc, mode_name)
    return Audit(
        relay=relay_host(str(doc.get("relay_url") or "")),
        date=str(doc.get("started_at") or "?"),
        mode=mode,
        mode_name=mode_name,
        models=models,
        models_recorded=models_recorded,
        version=str(doc.get("relaygate_version") or "not recorded"),
        profile=str(doc.get("profile") or "?"),
        findings=tuple(findings),
        clean=tuple((area, tuple(ids)) for area, ids in clean.items()),
        deviations=tuple(deviations),
        not_tested=tuple(
            (klass, reason, tuple(ids))
            for (klass, reason), ids in sorted(not_tested.items(), key=lambda kv: -len(kv[1]))
        ),
        cost=cost,
        cost_note=cost_note,
        total=len(cases),
    )


def _fence(text: str, lang: str = "") -> list[str]:
    # A fence longer than any backtick run inside, so an answer cannot close it early.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{lang}", text, fence]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ids(ids: Sequence[str]) -> str:
    return ", ".join(f"`{i}`" for i in ids)


def render_markdown(audit: Audit) -> str:
    """The audit as Markdown (unmasked: :func:`write_audit` masks)."""
    sev = audit.severity_counts
    models = ", ".join(audit.models)
    if not audit.models_recorded:
        models = (
            f"{models} (the run did not record its models; these are the ones its findings name)"
            if models
            else "not recorded by this run"
        )
    lines = [
        f"# Relay audit: {audit.relay}",
        "",
        "| | |",
        "|---|---|",
        f"| relay | {_cell(audit.relay)} |",
        f"| date | {_cell(audit.date)} |",
        f"| mode | {_cell(audit.mode)} |",
        f"| models tested | {_cell(models)} |",
        f"| tool | relaygate {_cell(audit.version)}, profile {_cell(audit.profile)} |",
        f"| audit cost | {_cell(audit.cost_note or '; '.join(f'{k} {v}' for k, v in audit.cost))}"
        " |",
        "",
        "## Summary",
        "",
        f"{audit.total} checks: **{_plural(len(audit.findings), 'finding')}** "
        f"({sev['high']} high, "
        f"{sev['medium']} medium, {sev['low']} low) · {audit.clean_count} checked and clean · "
        f"{len(audit.deviations)} documented differences · "
        f"**{audit.not_tested_count} not tested**.",
        "",
        "Severity says how much a finding matters (the rule's level and area); confidence says "
        "how sure it is: *exact* (counted or compared: no doubt), *statistical* (a sample with "
        "a stated bound), *heuristic* (a sign, not a proof). Not tested is not clean.",
        "",
        "## Findings",
        "",
    ]
    if not audit.findings:
        lines += ["None: every rule that was checked held.", ""]
    for n, f in enumerate(audit.findings, 1):
        stated = "" if f.confidence_stated else " (a direct comparison)"
        lines += [
            f"### {n}. {f.title or f.id}",
            "",
            f"- **severity {f.severity}** ({f.level}, {f.area}) · **confidence {f.confidence}**"
            f"{stated} · case `{f.id}`{f' · FAQ {f.faq}' if f.faq else ''}",
            f"- requirement: {f.requirement}",
        ]
        for label, value in (("expected", f.expected), ("actual", f.actual)):
            if value:  # continuation lines indented: they stay inside the bullet
                lines.append(f"- {label}: " + value.replace("\n", "\n  "))
        if f.model_requested or f.model_served:
            lines.append(
                f"- model: asked for `{f.model_requested or '?'}`, served `{f.model_served or '?'}`"
            )
        if f.method:
            lines.append(f"- method: {f.method}")
        if f.counts:
            lines += ["", "| measure | value |", "|---|---|"]
            lines += [f"| {_cell(k)} | {'–' if v is None else v} |" for k, v in f.counts]
        if f.excerpt:
            lines += ["", "Answer excerpt:", "", *_fence(f.excerpt)]
        if f.curl:
            lines += ["", "Reproduce (key masked: put yours back):", "", *_fence(f.curl, "sh")]
        lines.append("")
    lines += ["## Checked and clean", ""]
    if not audit.clean:
        lines += ["Nothing: no rule was checked and found to hold.", ""]
    lines += [f"- {area} ({len(ids)}): {_ids(ids)}" for area, ids in audit.clean]
    lines += ["", "## Documented differences (the profile accepts them)", ""]
    lines += [f"- `{cid}`: {reason}" for cid, reason in audit.deviations] or ["None."]
    lines += [
        "",
        "## Not tested, and why",
        "",
        "These rules were not checked in this run; nothing here says the relay keeps them.",
        "",
    ]
    if not audit.not_tested:
        lines.append("None: every case ran.")
    for klass, reason, ids in audit.not_tested:
        lines.append(f"- **{len(ids)} × [{klass}]** {reason}: {_ids(ids)}")
    lines += [
        "",
        "---",
        "Made by relaygate (docs/live-audit.md says how each check works and what a relay "
        "could still hide).",
        "",
    ]
    return "\n".join(lines)


def write_audit(path: Path, doc: Mapping[str, Any], *, secrets: Sequence[str | None] = ()) -> Path:
    """Write ``audit.md`` for ``doc`` (a ``conformance.json`` document), keys masked."""
    text = render_markdown(build_audit(doc))
    text = mask_secrets(_USERINFO.sub("", text), *secrets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m relaygate.report.audit CONFORMANCE_JSON [-o AUDIT_MD]``."""
    parser = argparse.ArgumentParser(
        prog="python -m relaygate.report.audit",
        description="Write the customer's audit report (Markdown) from a saved conformance.json.",
    )
    parser.add_argument("conformance", type=Path, help="a conformance.json the suite wrote")
    parser.add_argument(
        "-o", "--out", type=Path, default=None, help="where to write (default: audit.md beside it)"
    )
    args = parser.parse_args(argv)
    from relaygate import gate

    try:
        doc = gate.load_report(args.conformance, "conformance")
    except gate.GateInputError as exc:
        print(f"relaygate audit: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.conformance.with_name("audit.md")
    try:
        write_audit(out, doc)
    except OSError as exc:
        print(f"relaygate audit: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"audit: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
