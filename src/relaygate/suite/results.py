"""Per-case results and the report files: ``conformance.json``, ``conformance.html`` and the
customer's ``audit.md`` (:mod:`relaygate.report.audit`).

``conformance.json`` keys added since 0.1 (old readers ignore them): ``run_mode`` (which
ground truth the run had, :class:`RunMode`), ``relaygate_version``, per case ``evidence`` (a
failure's structured evidence, :class:`relaygate.suite.failures.Evidence`), and, when the run
was given them, ``models`` and the ``extra`` keys (``live_cost``). ``mode`` stays ``"mock"``
(a journal) or ``"live"`` (none), as before.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from relaygate.keys import mask_secrets
from relaygate.suite.failures import parse_evidence

__all__ = [
    "AREAS",
    "GROUND_TRUTH",
    "RUN_MODES",
    "SKIP_CLASSES",
    "CaseMeta",
    "CaseResult",
    "RunMode",
    "run_mode",
    "skip_class",
    "write_reports",
]

# Categories are data (STYLE.md): area id -> title, in report order.
AREAS: dict[str, str] = {
    "auth": "Authentication (F15, F5)",
    "quota": "Quota and billing (F6, F9, F11, F14, F20, F21)",
    "models": "Model names and routing (F8, F17)",
    "max_tokens": "max_tokens and context limits (F22)",
    "streaming": "Streaming (F4)",
    "usage": "Usage honesty and the model served (F8, F9, F10)",
    "errors": "Error statuses and bodies (F5, F7, F12, F18)",
    "rate_limits": "Rate limits (429)",
    "security": "Security (keys never leak)",
    "sdk": "Official OpenAI SDK",
    "properties": "Generated requests (property-based)",
    "params": "Request parameters honoured (stop, n, temperature, formats, tools)",
    "shape": 'Answer objects as OpenAI\'s (no vendor fields, null never "None")',
}
LEVELS = ("MUST", "SHOULD")

# What a run can rely on besides the relay's own answers: key -> (short name, what it gives).
GROUND_TRUTH: dict[str, tuple[str, str]] = {
    "relay_key": ("a funded key", "--relay-key: the requests a customer can send"),
    "admin_api": (
        "the admin API",
        "--relay-admin-token: keys in every state (exhausted, expired, ...), ratios, channels",
    ),
    "upstream_journal": (
        "the mock upstream's journal",
        "--upstream-url: exact token counts and what the relay forwarded upstream",
    ),
}
# run_mode name -> what it means
RUN_MODES: dict[str, str] = {
    "mock": "ground truth: the relaygate mock upstream behind the relay and its admin API",
    "partial": "part of the ground truth: the cases that need the rest are skipped",
    "live": "URL + key only, what a relay's customer has: ground-truth cases are skipped",
}


@dataclasses.dataclass(frozen=True)
class RunMode:
    """Which mode ran and what it had: ``ground_truth`` (available), ``missing`` (not) and
    ``unknown`` (the run did not record it), each a list of :data:`GROUND_TRUTH` keys."""

    name: str
    ground_truth: tuple[str, ...]
    missing: tuple[str, ...]
    unknown: tuple[str, ...] = ()
    embedded: bool = False

    def describe(self) -> str:
        """One line: the mode and what it had, e.g. ``live: had a funded key; without the
        admin API, the mock upstream's journal``."""

        def names(keys: tuple[str, ...]) -> str:
            return ", ".join(GROUND_TRUTH[k][0] if k in GROUND_TRUTH else k for k in keys)

        parts = [f"had {names(self.ground_truth)}"] if self.ground_truth else []
        if self.missing:
            parts.append(f"without {names(self.missing)}")
        if self.unknown:
            parts.append(f"not recorded: {names(self.unknown)}")
        where = " (the embedded stack)" if self.embedded else ""
        return f"{self.name}{where}: {'; '.join(parts)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ground_truth": list(self.ground_truth),
            "missing": list(self.missing),
            **({"unknown": list(self.unknown)} if self.unknown else {}),
            "embedded": self.embedded,
            "summary": self.describe(),
        }


def run_mode(
    *, relay_key: bool, admin_api: bool, upstream_journal: bool, embedded: bool = False
) -> RunMode:
    """The mode of a run given what it had: ``mock`` (journal and admin API), ``live``
    (neither: URL + key only) or ``partial`` (one of them)."""
    have = {"relay_key": relay_key, "admin_api": admin_api, "upstream_journal": upstream_journal}
    name = "mock" if admin_api and upstream_journal else "live"
    if admin_api != upstream_journal:
        name = "partial"
    return RunMode(
        name=name,
        ground_truth=tuple(k for k in GROUND_TRUTH if have[k]),
        missing=tuple(k for k in GROUND_TRUTH if not have[k]),
        embedded=embedded,
    )


def _guessed_mode(mode: str, relay_url: str, results: Sequence[CaseResult]) -> RunMode:
    """A run that passed only ``mode``: the journal is known from it; a missing key or admin
    API from the skips that name them; the rest is marked unknown."""
    if relay_url == "embedded":  # the embedded stack always has all three
        return run_mode(relay_key=True, admin_api=True, upstream_journal=True, embedded=True)
    reasons = [_reason_text(r.reason) for r in results if r.outcome == "skipped"]
    have: dict[str, bool | None] = {
        "relay_key": False if any(r.startswith("needs a funded key") for r in reasons) else None,
        "admin_api": False if any(_NO_ADMIN.search(r) for r in reasons) else None,
        "upstream_journal": mode == "mock",
    }
    missing = tuple(k for k in GROUND_TRUTH if have[k] is False)
    name = mode
    if mode == "mock" and "admin_api" in missing:
        name = "partial"
    return RunMode(
        name=name,
        ground_truth=tuple(k for k in GROUND_TRUTH if have[k]),
        missing=missing,
        unknown=tuple(k for k in GROUND_TRUTH if have[k] is None),
    )


# Why a case could not be verified, as a class the gate can allow (``--allow-skip CLASS``):
SKIP_CLASSES: dict[str, str] = {
    "live": "needs ground truth the run did not have (mock upstream journal, admin API)",
    "key": "needs a key the run could not get (--relay-key, a provisioned key state)",
    "profile": "the relay's profile documents that the feature is absent",
    "inconclusive": (
        "live: the model's own answers could not decide the rule (not deterministic, too fast "
        "to time, did not follow the probe's instruction, no 429 provoked)"
    ),
    "other": "any other reason",
}
# (class, reason prefixes), first match wins; the texts are the suite's ``pytest.skip`` reasons
# (conformance/, suite/checks.py, pytest_plugin.py, provision/ via key_in_state).
_SKIP_PREFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("profile", ("profile:", "profile reads balances from", "profile tolerance")),
    (
        "key",
        (
            "needs a funded key",
            "cannot provision the key this case needs",
            "the restricted key allows no model",
            "the key is not served",
            "the key's balance does not cover",
        ),
    ),
    (
        "inconclusive",
        (
            "the model did not repeat",
            "the model answered the same twice",
            "the model answers a bare json object",
            "the model answers this request differently",
            "the answer came too fast",
            "the rate-limited key got no 429",
            "the rate-limited key is still refused after an earlier case's 429",
            "no complete error answer to judge the connection after",
            "the follow-up answer was cut",
            "none of the listed ids",
        ),
    ),
    (
        "live",
        (
            "needs ground truth",
            "needs the mock upstream's journal",
            "the relay exposes no balance this suite can read",
            "no admin token",
            "needs an admin",
        ),
    ),
)
# "the static adapter cannot configure a group ratio and a channel": no admin API in this run.
_NO_ADMIN_API = re.compile(r"^the \S+ adapter cannot configure ")
# Skips that only a run without an admin token writes (provision/, pytest_plugin.py).
_NO_ADMIN = re.compile(
    r"give an admin token|^no admin token|^needs an admin|^the static adapter cannot", re.I
)


def _reason_text(reason: str) -> str:
    """A skip reason without pytest's ``Skipped:`` prefix."""
    return reason.strip().removeprefix("Skipped: ").strip()


def skip_class(reason: str) -> str:
    """The class (a key of :data:`SKIP_CLASSES`) of a skip reason the suite wrote."""
    lowered = _reason_text(reason).lower()
    for name, prefixes in _SKIP_PREFIXES:
        if lowered.startswith(prefixes):
            return name
    if _NO_ADMIN_API.match(lowered):
        return "live"
    return "other"


@dataclasses.dataclass(frozen=True)
class CaseMeta:
    """What a case checks: its permanent id, title, area, FAQ clauses and level."""

    id: str
    title: str
    area: str
    faq: tuple[str, ...] = ()
    level: str = "MUST"
    spec: str | None = None

    def __post_init__(self) -> None:
        if self.area not in AREAS:
            raise ValueError(f"case {self.id}: unknown area {self.area!r}; known: {list(AREAS)}")
        if self.level not in LEVELS:
            raise ValueError(f"case {self.id}: level must be one of {LEVELS}")


@dataclasses.dataclass
class CaseResult:
    meta: CaseMeta
    outcome: str  # passed | failed | skipped | deviation
    reason: str
    duration_s: float
    details: str = ""

    def to_json(self) -> dict[str, Any]:
        evidence = parse_evidence(self.details) if self.details else None
        return {
            "id": self.meta.id,
            "title": self.meta.title,
            "area": self.meta.area,
            "faq": list(self.meta.faq),
            "level": self.meta.level,
            "outcome": self.outcome,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 4),
            **({"skip_class": skip_class(self.reason)} if self.outcome == "skipped" else {}),
            **({"spec": self.meta.spec} if self.meta.spec else {}),
            **({"details": self.details} if self.details else {}),
            **({"evidence": evidence} if evidence else {}),
        }


def _summary(results: list[CaseResult]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "deviations": 0}
    for result in results:
        key = "deviations" if result.outcome == "deviation" else result.outcome
        counts[key] = counts.get(key, 0) + 1
    return counts


def write_reports(
    report_dir: Path,
    results: list[CaseResult],
    *,
    relay_url: str,
    profile: str,
    mode: str,
    started_at: dt.datetime,
    duration_s: float,
    secrets: tuple[str | None, ...] = (),
    mode_detail: RunMode | None = None,
    models: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``conformance.json``, ``conformance.html`` and ``audit.md``; return the JSON path.

    ``mode_detail`` says what ground truth the run had (:func:`run_mode`); without it the
    report records what ``mode`` alone tells and marks the rest ``unknown``. ``models``: the
    models the run asked for. ``extra``: further top-level keys, e.g. ``live_cost`` (what a
    live run spent; the audit report prints it).
    """
    from relaygate import __version__
    from relaygate.report.audit import write_audit

    report_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(results, key=lambda r: (list(AREAS).index(r.meta.area), r.meta.id))
    detail = mode_detail or _guessed_mode(mode, relay_url, ordered)
    doc = {
        "relay_url": mask_secrets(relay_url, *secrets),
        "profile": profile,
        "mode": mode,
        "run_mode": detail.to_json(),
        "relaygate_version": __version__,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 3),
        **({"models": list(models)} if models else {}),
        "summary": _summary(ordered),
        "cases": [r.to_json() for r in ordered],
        **(extra or {}),
    }
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
    text = mask_secrets(text, *secrets)
    json_path = report_dir / "conformance.json"
    json_path.write_text(text + "\n", encoding="utf-8")
    (report_dir / "conformance.html").write_text(
        mask_secrets(_html(doc), *secrets), encoding="utf-8"
    )
    write_audit(report_dir / "audit.md", orjson.loads(text), secrets=secrets)
    return json_path


_COLORS = {"passed": "#1a7f37", "failed": "#cf222e", "skipped": "#9a6700", "deviation": "#8250df"}


def _html(doc: dict[str, Any]) -> str:
    esc = html.escape
    rows = []
    order = {"failed": 0, "deviation": 1, "skipped": 2, "passed": 3}
    by_area: dict[str, list[dict[str, Any]]] = {}
    for case in doc["cases"]:
        by_area.setdefault(case["area"], []).append(case)
    for area, cases in by_area.items():
        rows.append(f'<tr class="area"><th colspan="5">{esc(AREAS.get(area, area))}</th></tr>')
        for case in sorted(cases, key=lambda c: (order.get(c["outcome"], 9), c["id"])):
            color = _COLORS.get(case["outcome"], "#000")
            detail = case.get("details") or case.get("reason") or ""
            rows.append(
                "<tr>"
                f"<td><code>{esc(case['id'])}</code></td>"
                f"<td>{esc(case['title'])}</td>"
                f"<td>{esc(', '.join(case['faq']))} {esc(case['level'])}</td>"
                f'<td style="color:{color};font-weight:600">{esc(case["outcome"])}</td>'
                f"<td><pre>{esc(detail)}</pre></td>"
                "</tr>"
            )
    s = doc["summary"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>relaygate conformance</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328}}
table{{border-collapse:collapse;width:100%}}
td,th{{border-bottom:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}}
tr.area th{{background:#f6f8fa;font-size:1.05rem}}
pre{{white-space:pre-wrap;margin:0;font-size:.8rem}}
</style></head><body>
<h1>relaygate conformance</h1>
<p>Relay <code>{esc(doc["relay_url"])}</code> &middot; profile <code>{esc(doc["profile"])}</code>
&middot; mode {esc(doc["run_mode"]["summary"])} &middot; {esc(doc["started_at"])}
&middot; {doc["duration_s"]} s</p>
<p><b>{s["passed"]}</b> passed &middot; <b>{s["failed"]}</b> failed &middot;
<b>{s["deviations"]}</b> deviations &middot; <b>{s["skipped"]}</b> skipped</p>
<table><thead><tr><th>case</th><th>title</th><th>source</th><th>outcome</th><th>details</th>
</tr></thead><tbody>
{"".join(rows)}
</tbody></table></body></html>
"""
