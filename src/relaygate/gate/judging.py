"""Judging: a conformance report and/or a load summary to a :class:`~relaygate.gate.Verdict`
(what fails the gate is listed in :mod:`relaygate.gate`)."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

from relaygate.gate.reports import check_conformance, check_load, is_number
from relaygate.gate.verdict import (
    CaseLine,
    ConformanceVerdict,
    GateInputError,
    LoadVerdict,
    SkipGroup,
    SLOLine,
    UncheckedArea,
    Verdict,
    plural,
)
from relaygate.keys import mask_secrets

__all__ = ["check_allow_skips", "evaluate", "relay_mismatch", "same_relay"]

_COUNT_ORDER = ("passed", "failed", "deviation", "skipped")
# A case id or an fnmatch glob over ids: "auth.*", "quota.formula[gpt-4]", "*.retry-after".
_ID_PATTERN = re.compile(r"^[\w*?\[\]-]+\.\S+$")
# "relaygate.suite.failures.CaseFailure: " / "AssertionError: " in front of a failure reason.
_EXC_PREFIX = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Failure): ")
_RULE_METRIC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*?)\s*(?:<=|>=|==|<|>)")
_HIST_AGG = re.compile(r"^(?P<hist>[a-z_.]+?)_(?P<agg>p\d+(?:\.\d+)?|max|mean|min)_ms$")


def check_allow_skips(values: Sequence[str]) -> None:
    """Raise :class:`GateInputError` for an ``--allow-skip`` value that is no area, skip class
    or case id pattern (for callers that validate their input before running anything)."""
    _Allow.parse(values, [])


def evaluate(
    conformance: Mapping[str, Any] | None,
    load: Mapping[str, Any] | None,
    *,
    slos: Sequence[str] = (),
    allow_deviations: bool = False,
    allow_skips: Sequence[str] = (),
) -> Verdict:
    """Judge a conformance report and/or a load summary (as loaded JSON); see the module doc.

    ``slos`` are extra rules (``--slo`` syntax) evaluated against the load summary's numbers.
    ``allow_skips`` (``--allow-skip``) are areas, skip classes or case id globs whose skipped
    MUST cases do not fail the gate (they are still listed).
    Raises :class:`GateInputError` when neither report is given, a report has the wrong
    shape, ``slos`` are given without a load summary, ``allow_skips`` without a conformance
    report, a rule does not parse, or an ``allow_skips`` value is no area, class or id pattern.
    """
    if conformance is None and load is None:
        raise GateInputError("nothing to judge: give a conformance report and/or a load summary")
    if slos and load is None:
        raise GateInputError("--slo rules need a load summary (--load)")
    if allow_skips and conformance is None:
        raise GateInputError("--allow-skip needs a conformance report (--conformance)")
    reasons: list[str] = []
    notes: list[str] = []
    conformance_verdict = None
    load_verdict = None
    if conformance is not None:
        check_conformance(conformance)
        conformance_verdict = _judge_conformance(conformance, allow_skips)
        failed = len(conformance_verdict.failed)
        if conformance_verdict.total == 0:
            reasons.append("the conformance report holds no case")
        elif conformance_verdict.executed == 0:
            reasons.append(
                f"nothing was checked: all {conformance_verdict.total} conformance cases "
                "were skipped"
            )
        if failed:
            reasons.append(f"{failed} conformance case{'s' if failed != 1 else ''} failed")
        reasons += _skip_reasons(conformance_verdict)
        deviations = len(conformance_verdict.deviations)
        if deviations and not allow_deviations:
            reasons.append(
                f"{deviations} deviation{'s' if deviations != 1 else ''} "
                "(--allow-deviations accepts documented deviations)"
            )
    if load is not None:
        check_load(load)
        load_verdict = _judge_load(load, slos)
        failed_slos = [s for s in load_verdict.slos if not s.passed]
        if not load_verdict.slos:
            reasons.append("no SLO judged the load run (locust --slo, or --slo here)")
        if failed_slos:
            reasons.append(
                f"{len(failed_slos)} of {len(load_verdict.slos)} SLO"
                f"{'s' if len(load_verdict.slos) != 1 else ''} failed"
            )
        if not load_verdict.latency_valid:
            latency_rules = [s.rule for s in load_verdict.slos if _is_latency_metric(s.rule)]
            if latency_rules:
                reasons.append(
                    "latency percentiles are invalid (the load generator was the bottleneck): "
                    f"{plural(len(latency_rules), 'latency SLO')} cannot be trusted"
                )
            else:
                notes.append(
                    "latency percentiles are invalid (the load generator was the bottleneck); "
                    "no latency SLO is judged, so the gate does not fail on it"
                )
    if conformance_verdict is not None and load_verdict is not None:
        mismatch = relay_mismatch(conformance_verdict.relay_url, load_verdict.host)
        if mismatch:
            notes.append(mismatch)
    return Verdict(
        passed=not reasons,
        reasons=tuple(reasons),
        notes=tuple(notes),
        allow_deviations=allow_deviations,
        conformance=conformance_verdict,
        load=load_verdict,
        allow_skips=tuple(allow_skips),
    )


def same_relay(url_a: str, url_b: str) -> bool:
    """Whether two base URLs name one relay (``/v1``, a trailing ``/`` and case aside)."""

    def base(url: str) -> str:
        return url.strip().rstrip("/").removesuffix("/v1").rstrip("/").lower()

    return base(url_a) == base(url_b)


def relay_mismatch(relay_url: str, load_host: str) -> str | None:
    """One line saying the two reports are about different relays, or None when they agree."""
    if not relay_url or not load_host or "?" in (relay_url, load_host):
        return None
    if same_relay(relay_url, load_host):
        return None
    return (
        f"the load run targeted {load_host}, not the relay the conformance suite checked "
        f"({relay_url}): the two results are about different relay instances"
    )


def _skip_reasons(c: ConformanceVerdict) -> list[str]:
    """The gate's reasons about skips: MUST cases not verified, areas where nothing ran."""
    reasons = []
    if c.not_verified:
        by_class: dict[str, int] = {}
        for group in c.not_verified:
            key = group.skip_class or "other"
            by_class[key] = by_class.get(key, 0) + len(group.ids)
        classes = ", ".join(f"{n} {name}" for name, n in by_class.items())
        reasons.append(
            f"{plural(c.not_verified_count, 'MUST case')} not verified (skipped: {classes}; "
            "--allow-skip accepts an expected skip)"
        )
    failing = [a.area for a in c.unchecked_areas if a.allowed_by is None]
    if failing and c.executed:
        reasons.append(
            f"nothing checked in {plural(len(failing), 'area')}: {', '.join(failing)} "
            "(every case skipped; --allow-skip AREA accepts an area)"
        )
    return reasons


def _text(value: Any) -> str:
    """A report value as masked text (reports are masked when written; this is a backstop)."""
    return mask_secrets("" if value is None else str(value))


def _clean_reason(reason: str) -> str:
    reason = _EXC_PREFIX.sub("", reason.strip(), count=1)
    return reason.removeprefix("-> ").strip()


def _expected_actual(details: str) -> tuple[str | None, str | None]:
    """The ``Expected:`` / ``Actual:`` lines of a failure (suite/failures.py writes them)."""
    expected = actual = None
    for line in details.splitlines():
        stripped = line.strip()
        if expected is None and stripped.startswith("Expected:"):
            expected = stripped.removeprefix("Expected:").strip()
        elif actual is None and stripped.startswith("Actual:"):
            actual = stripped.removeprefix("Actual:").strip()
    return expected, actual


@dataclasses.dataclass(frozen=True)
class _Allow:
    """The ``--allow-skip`` values, sorted by kind (validated against the report's areas)."""

    areas: tuple[str, ...]
    classes: tuple[str, ...]
    patterns: tuple[str, ...]

    @classmethod
    def parse(cls, values: Sequence[str], report_areas: Sequence[str]) -> _Allow:
        from relaygate.suite.results import AREAS, SKIP_CLASSES

        known_areas = {*AREAS, *report_areas}
        areas: list[str] = []
        classes: list[str] = []
        patterns: list[str] = []
        for raw in values:
            value = raw.strip()
            if value in known_areas:
                areas.append(value)
            elif value in SKIP_CLASSES:
                classes.append(value)
            elif _ID_PATTERN.match(value):
                patterns.append(value)
            else:
                raise GateInputError(
                    f"--allow-skip {raw!r} is no area ({', '.join(AREAS)}), skip class "
                    f"({', '.join(SKIP_CLASSES)}) or case id pattern (e.g. 'auth.*')"
                )
        return cls(tuple(areas), tuple(classes), tuple(patterns))

    def allowing(self, case_id: str, area: str, skip_class: str) -> str | None:
        """The value that allows this skipped case, or None."""
        if area in self.areas:
            return area
        if skip_class in self.classes:
            return skip_class
        bare = case_id.split("[", 1)[0]
        for pattern in self.patterns:
            # Exact first: "[...]" in an id would read as a character set to fnmatch.
            if pattern in (case_id, bare) or any(
                fnmatch.fnmatchcase(name, pattern) for name in (case_id, bare)
            ):
                return pattern
        return None


def _case_area(case: Mapping[str, Any]) -> str:
    area = case.get("area")
    return str(area) if area else str(case["id"]).split(".", 1)[0]


def _case_skip_class(case: Mapping[str, Any], reason: str) -> str:
    """The report's ``skip_class``; reports written before it existed: from the reason."""
    from relaygate.suite.results import SKIP_CLASSES, skip_class

    recorded = case.get("skip_class")
    return recorded if recorded in SKIP_CLASSES else skip_class(reason)


def _groups(
    skips: Mapping[tuple[str, str, str | None], list[str]],
) -> tuple[SkipGroup, ...]:
    from relaygate.suite.results import SKIP_CLASSES

    groups = [
        SkipGroup(reason, tuple(ids), skip_class, allowed_by)
        for (skip_class, reason, allowed_by), ids in skips.items()
    ]
    # The classes in SKIP_CLASSES' order (every class the suite can write), "other" last.
    order = [c for c in SKIP_CLASSES if c != "other"] + ["other"]
    return tuple(
        sorted(
            groups,
            key=lambda g: (
                order.index(g.skip_class) if g.skip_class in order else len(order),
                -len(g.ids),
                g.reason,
            ),
        )
    )


def _judge_conformance(
    doc: Mapping[str, Any], allow_skips: Sequence[str] = ()
) -> ConformanceVerdict:
    counts: dict[str, int] = dict.fromkeys(_COUNT_ORDER, 0)
    failed: list[CaseLine] = []
    deviations: list[CaseLine] = []
    skipped: dict[str, list[str]] = {}
    not_verified: dict[tuple[str, str, str | None], list[str]] = {}
    allowed: dict[tuple[str, str, str | None], list[str]] = {}
    should: dict[tuple[str, str, str | None], list[str]] = {}
    # area -> (executed, skipped, skip classes seen), in report order
    areas: dict[str, tuple[int, int, set[str]]] = {}
    allow = _Allow.parse(allow_skips, [_case_area(case) for case in doc["cases"]])
    for case in doc["cases"]:
        outcome = case["outcome"]
        counts[outcome] = counts.get(outcome, 0) + 1
        case_id = _text(case["id"])
        area = _case_area(case)
        title = _text(case.get("title"))
        reason = _clean_reason(_text(case.get("reason")))
        executed, skips, classes = areas.get(area, (0, 0, set()))
        if outcome == "skipped":
            areas[area] = (executed, skips + 1, classes)
        else:
            areas[area] = (executed + 1, skips, classes)
        if outcome == "passed":
            continue
        if outcome == "skipped":
            shown = reason or "no reason given"
            skipped.setdefault(shown, []).append(case_id)
            skip_class = _case_skip_class(case, reason)
            classes.add(skip_class)
            if case.get("level", "MUST") == "SHOULD":
                should.setdefault((skip_class, shown, None), []).append(case_id)
                continue
            allowed_by = allow.allowing(case_id, area, skip_class)
            if allowed_by is None:
                not_verified.setdefault((skip_class, shown, None), []).append(case_id)
            else:
                allowed.setdefault((skip_class, shown, allowed_by), []).append(case_id)
        elif outcome == "deviation":
            deviations.append(CaseLine(case_id, title, outcome, reason))
        else:
            expected, actual = _expected_actual(_text(case.get("details")))
            failed.append(CaseLine(case_id, title, outcome, reason, expected, actual))
    groups = sorted(
        (SkipGroup(reason, tuple(ids)) for reason, ids in skipped.items()),
        key=lambda g: (-len(g.ids), g.reason),
    )
    unchecked = []
    for area, (executed, skips, classes) in areas.items():
        if executed:
            continue
        allowed_by = area if area in allow.areas else "profile" if classes == {"profile"} else None
        unchecked.append(UncheckedArea(_text(area), skips, allowed_by))
    return ConformanceVerdict(
        relay_url=_text(doc.get("relay_url")) or "?",
        profile=_text(doc.get("profile")) or "?",
        mode=_text(doc.get("mode")) or "?",
        counts=counts,
        failed=tuple(failed),
        deviations=tuple(deviations),
        skipped=tuple(groups),
        not_verified=_groups(not_verified),
        allowed_skips=_groups(allowed),
        should_skips=_groups(should),
        unchecked_areas=tuple(unchecked),
        mode_summary=_mode_summary(doc),
    )


def _mode_summary(doc: Mapping[str, Any]) -> str:
    detail = doc.get("run_mode")
    return _text(detail.get("summary")) if isinstance(detail, Mapping) else ""


def _is_latency_metric(rule_text: str) -> bool:
    """A rule on a time in ms: the percentiles the self-check can invalidate."""
    match = _RULE_METRIC.match(rule_text)
    return (match.group(1) if match else rule_text.strip()).endswith("_ms")


def _not_measured_note(metric: str, summary: Mapping[str, Any]) -> str:
    match = _HIST_AGG.match(metric)
    block = summary.get(f"{match.group('hist')}_ms") if match else None
    if match and isinstance(block, Mapping):
        kept = ", ".join(k for k in block if k != "count")
        if block.get("count"):
            return (
                f"the summary keeps {kept} of {match.group('hist')}_ms, not "
                f"{match.group('agg')}: give this rule to locust --slo"
            )
        return f"no {match.group('hist')}_ms sample in this run"
    return "no such number in the summary"


def _judge_load(summary: Mapping[str, Any], extra: Sequence[str]) -> LoadVerdict:
    from relaygate.load import slo

    try:
        rules = [slo.parse_rule(text) for text in extra]
    except slo.SLOSyntaxError as exc:
        raise GateInputError(str(exc)) from None
    lines = [
        SLOLine(
            rule=_text(result["rule"]),
            observed=None if result.get("observed") is None else float(result["observed"]),
            threshold=float(result["threshold"]),
            passed=result["passed"],
            source="run",
        )
        for result in summary["slo"]
    ]
    already = {line.rule for line in lines}
    # The run's own result wins over re-evaluating the same rule from the rounded summary.
    fresh = [rule for rule in rules if rule.text not in already]
    for rule, result in zip(fresh, slo.evaluate(fresh, summary, {}), strict=True):
        observed = result["observed"]
        lines.append(
            SLOLine(
                rule=result["rule"],
                observed=observed,
                threshold=result["threshold"],
                passed=result["passed"],
                source="gate",
                note="" if observed is not None else _not_measured_note(rule.metric, summary),
            )
        )
    self_check = summary.get("self_check")
    reasons = self_check.get("reasons") if isinstance(self_check, Mapping) else None
    requests = summary.get("requests")
    total = requests.get("total") if isinstance(requests, Mapping) else None
    users = summary.get("users")
    duration = summary.get("duration_s")
    return LoadVerdict(
        host=_text(summary.get("host")) or "?",
        scenario=_text(summary.get("scenario")) or "?",
        users=users if isinstance(users, int) and not isinstance(users, bool) else None,
        duration_s=round(float(duration), 3) if is_number(duration) else None,
        requests=total if isinstance(total, int) and not isinstance(total, bool) else None,
        latency_valid=summary.get("latency_valid", True) is not False,
        latency_reasons=tuple(_text(r) for r in reasons) if isinstance(reasons, list) else (),
        slos=tuple(lines),
    )
