"""``relaygate gate``: judge saved reports and answer with an exit code a CI job can use.

::

    relaygate gate --conformance reports/conformance.json --load reports/load-summary.json \\
                   [--slo 'ttft_p99_ms<=800' ...] [--allow-deviations] \\
                   [--allow-skip AREA|CLASS|ID-GLOB ...] [--json]

Exit codes: 0 the gate passed, 1 it failed, 2 the input was unusable (no report given, a file
missing, not JSON or not a relaygate report, an ``--slo`` rule that does not parse, an
``--allow-skip`` value that is no area, skip class or case id pattern, ``--slo`` without a load
summary or ``--allow-skip`` without a conformance report).

A pass needs evidence: a skipped case was not verified. What fails the gate (each is a line of
:attr:`Verdict.reasons`):

* a conformance case whose outcome is anything but ``passed``, ``skipped`` or ``deviation``
  (``failed``, and any outcome this version does not know, e.g. an error);
* a ``deviation`` (behaviour the profile documents as different from the FAQ/OpenAI) unless
  ``allow_deviations``;
* a skipped MUST-level case ("not verified") unless ``allow_skips`` names its area, its skip
  class (``live``, ``key``, ``profile``, ``other``: see
  :data:`relaygate.suite.results.SKIP_CLASSES`) or matches its id (fnmatch on the full
  parametrised id or the bare id); skipped SHOULD-level cases never fail, they are listed;
* an area of the report in which no case was executed (passed, failed or deviation) unless
  ``allow_skips`` names the area or every skip in it is of class ``profile`` (the relay has no
  such feature);
* a conformance report without a single case, or without a single executed case ("nothing was
  checked"), whatever ``allow_skips`` says;
* an SLO result of the load run (the summary's ``slo`` list) that did not pass, and an extra
  rule (``slos``) that does not hold against the summary's numbers; a metric the summary does
  not hold fails ("not measured"), as it does in Locust;
* latency percentiles the load run's self-check marked invalid (the harness was the
  bottleneck) when any latency rule (a metric in ms) is judged;
* a load report with no SLO to judge it by (neither in the summary nor given here).

Other code calls :func:`evaluate` and :func:`render` (the demo, the report page); the CLI is a
thin shell around them. Everything echoed from a report goes through
:func:`relaygate.keys.mask_secrets`.

Exceptions: :class:`GateInputError` (a ``ValueError``) - unusable input; the CLI exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import re
import shutil
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from relaygate.keys import mask_secrets

__all__ = [
    "EXIT_FAILED",
    "EXIT_PASSED",
    "EXIT_USAGE",
    "CaseLine",
    "ConformanceVerdict",
    "GateInputError",
    "LoadVerdict",
    "SLOLine",
    "SkipGroup",
    "UncheckedArea",
    "Verdict",
    "add_arguments",
    "check_allow_skips",
    "evaluate",
    "load_report",
    "relay_mismatch",
    "render",
    "run",
    "same_relay",
    "terminal_width",
]

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Outcomes that never fail the gate by themselves (``deviation`` fails unless allowed).
_NOT_FAILING = frozenset({"passed", "skipped", "deviation"})
_COUNT_ORDER = ("passed", "failed", "deviation", "skipped")
# What the render shows at most (the JSON verdict has everything).
_MAX_FAILED = 5
_MAX_DEVIATIONS = 4
_MAX_SKIP_GROUPS = 3
_MAX_OTHER_SKIP_GROUPS = 2
# Width of the render when stdout is no terminal (CI logs); a terminal's own width otherwise.
_WIDTH = 100
_MIN_WIDTH = 40
_SKIP_CLASS_ORDER = ("live", "key", "profile", "other")
# A case id or an fnmatch glob over ids: "auth.*", "quota.formula[gpt-4]", "*.retry-after".
_ID_PATTERN = re.compile(r"^[\w*?\[\]-]+\.\S+$")
# "relaygate.suite.failures.CaseFailure: " / "AssertionError: " in front of a failure reason.
_EXC_PREFIX = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Failure): ")
_RULE_METRIC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*?)\s*(?:<=|>=|==|<|>)")
_HIST_AGG = re.compile(r"^(?P<hist>[a-z_.]+?)_(?P<agg>p\d+(?:\.\d+)?|max|mean|min)_ms$")


class GateInputError(ValueError):
    """A report is missing, unreadable or not the expected shape, or an SLO rule is invalid."""


# ---------------------------------------------------------------------------------------------
# The verdict


@dataclasses.dataclass(frozen=True)
class CaseLine:
    """A conformance case the verdict shows: failed or a deviation."""

    id: str
    title: str
    outcome: str
    reason: str
    expected: str | None = None
    actual: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SkipGroup:
    """Skipped cases that share one reason (and class, and what allowed them, when judged)."""

    reason: str
    ids: tuple[str, ...]
    skip_class: str | None = None
    allowed_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.skip_class is not None:
            doc["class"] = self.skip_class
        doc |= {"reason": self.reason, "count": len(self.ids), "ids": list(self.ids)}
        if self.allowed_by is not None:
            doc["allowed_by"] = self.allowed_by
        return doc


@dataclasses.dataclass(frozen=True)
class UncheckedArea:
    """An area of the report in which every case was skipped.

    ``allowed_by`` is the ``--allow-skip`` value that accepts it, ``"profile"`` when every skip
    in it is of class ``profile``, or None: then it fails the gate.
    """

    area: str
    skipped: int
    allowed_by: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SLOLine:
    """One SLO result: from the load run itself (``source="run"``) or an extra gate rule."""

    rule: str
    observed: float | None
    threshold: float
    passed: bool
    source: str
    note: str = ""

    @property
    def check_line(self) -> str:
        """``CHECK PASSED rule: observed X (threshold Y)``, as Locust prints it at exit."""
        from relaygate.load.slo import check_line

        return check_line(self.rule, self.observed, self.threshold, self.passed)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ConformanceVerdict:
    relay_url: str
    profile: str
    mode: str
    counts: Mapping[str, int]
    failed: tuple[CaseLine, ...]
    deviations: tuple[CaseLine, ...]
    skipped: tuple[SkipGroup, ...]
    # MUST-level skips no --allow-skip accepts: each fails the gate.
    not_verified: tuple[SkipGroup, ...] = ()
    # MUST-level skips an --allow-skip accepts, and SHOULD-level skips: listed, never failing.
    allowed_skips: tuple[SkipGroup, ...] = ()
    should_skips: tuple[SkipGroup, ...] = ()
    unchecked_areas: tuple[UncheckedArea, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def executed(self) -> int:
        """Cases that ran to a verdict: every outcome but ``skipped``."""
        return self.total - self.counts.get("skipped", 0)

    @property
    def not_verified_count(self) -> int:
        return sum(len(g.ids) for g in self.not_verified)

    def to_json(self) -> dict[str, Any]:
        return {
            "relay_url": self.relay_url,
            "profile": self.profile,
            "mode": self.mode,
            "total": self.total,
            "counts": dict(self.counts),
            "not_verified_count": self.not_verified_count,
            "failed": [c.to_json() for c in self.failed],
            "not_verified": [g.to_json() for g in self.not_verified],
            "deviations": [c.to_json() for c in self.deviations],
            "skipped": [g.to_json() for g in self.skipped],
            "allowed_skips": [g.to_json() for g in self.allowed_skips],
            "should_skips": [g.to_json() for g in self.should_skips],
            "unchecked_areas": [a.to_json() for a in self.unchecked_areas],
        }


@dataclasses.dataclass(frozen=True)
class LoadVerdict:
    host: str
    scenario: str
    users: int | None
    duration_s: float | None
    requests: int | None
    latency_valid: bool
    latency_reasons: tuple[str, ...]
    slos: tuple[SLOLine, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "scenario": self.scenario,
            "users": self.users,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "latency_valid": self.latency_valid,
            "latency_reasons": list(self.latency_reasons),
            "slo": [s.to_json() for s in self.slos],
        }


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The gate's answer: ``passed``, the ``reasons`` it failed, and what it looked at."""

    passed: bool
    reasons: tuple[str, ...]
    notes: tuple[str, ...]
    allow_deviations: bool
    conformance: ConformanceVerdict | None
    load: LoadVerdict | None
    allow_skips: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return EXIT_PASSED if self.passed else EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "GATE PASSED" if self.passed else "GATE FAILED",
            "passed": self.passed,
            "exit_code": self.exit_code,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "allow_deviations": self.allow_deviations,
            "allow_skips": list(self.allow_skips),
            "conformance": self.conformance.to_json() if self.conformance else None,
            "load": self.load.to_json() if self.load else None,
        }


# ---------------------------------------------------------------------------------------------
# Reading reports


def load_report(path: str | Path, kind: str) -> dict[str, Any]:
    """Read one report (``kind`` is ``"conformance"`` or ``"load"``) and check its shape.

    Raises :class:`GateInputError` with a one-line message naming the file and the problem.
    """
    import orjson

    where = f"--{kind} {path}"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        hint = "run the suite first" if kind == "conformance" else "run locust -f loadtests first"
        raise GateInputError(f"{where}: no such file ({hint})") from None
    except IsADirectoryError:
        raise GateInputError(f"{where}: is a directory, expected a JSON file") from None
    except OSError as exc:
        raise GateInputError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise GateInputError(
            f"{where}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(doc, dict):
        raise GateInputError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    check = _check_conformance if kind == "conformance" else _check_load
    try:
        check(doc)
    except GateInputError as exc:
        raise GateInputError(f"{where}: {exc}") from None
    return doc


def _check_conformance(doc: Mapping[str, Any]) -> None:
    cases = doc.get("cases")
    if not isinstance(cases, list):
        hint = " (this looks like a load summary: pass it with --load)" if "slo" in doc else ""
        raise GateInputError(f'not a relaygate conformance report: no "cases" list{hint}')
    for index, case in enumerate(cases):
        if not (
            isinstance(case, dict)
            and isinstance(case.get("id"), str)
            and isinstance(case.get("outcome"), str)
        ):
            raise GateInputError(f'cases[{index}] has no string "id" and "outcome"')
        for key in ("title", "reason", "details", "area", "level", "skip_class"):
            if not isinstance(case.get(key, ""), str):
                raise GateInputError(f"cases[{index}].{key} is not a string")


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_load(doc: Mapping[str, Any]) -> None:
    results = doc.get("slo")
    if not isinstance(results, list):
        hint = " (this looks like a conformance report: pass it with --conformance)"
        raise GateInputError(
            f'not a relaygate load summary: no "slo" list{hint if "cases" in doc else ""}'
        )
    for index, result in enumerate(results):
        if not (
            isinstance(result, dict)
            and isinstance(result.get("rule"), str)
            and isinstance(result.get("passed"), bool)
            and _is_number(result.get("threshold"))
            and (result.get("observed") is None or _is_number(result.get("observed")))
        ):
            raise GateInputError(
                f"slo[{index}] is not {{rule: str, observed: number|null, threshold: number, "
                "passed: bool}"
            )
    if not isinstance(doc.get("latency_valid", True), bool):
        raise GateInputError('"latency_valid" is not true/false')


# ---------------------------------------------------------------------------------------------
# Judging


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
        _check_conformance(conformance)
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
        _check_load(load)
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
                    f"{_plural(len(latency_rules), 'latency SLO')} cannot be trusted"
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
            f"{_plural(c.not_verified_count, 'MUST case')} not verified (skipped: {classes}; "
            "--allow-skip accepts an expected skip)"
        )
    failing = [a.area for a in c.unchecked_areas if a.allowed_by is None]
    if failing and c.executed:
        reasons.append(
            f"nothing checked in {_plural(len(failing), 'area')}: {', '.join(failing)} "
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
    groups = [
        SkipGroup(reason, tuple(ids), skip_class, allowed_by)
        for (skip_class, reason, allowed_by), ids in skips.items()
    ]
    return tuple(
        sorted(
            groups,
            key=lambda g: (
                _SKIP_CLASS_ORDER.index(g.skip_class or "other"),
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
    )


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
        duration_s=round(float(duration), 3) if _is_number(duration) else None,
        requests=total if isinstance(total, int) and not isinstance(total, bool) else None,
        latency_valid=summary.get("latency_valid", True) is not False,
        latency_reasons=tuple(_text(r) for r in reasons) if isinstance(reasons, list) else (),
        slos=tuple(lines),
    )


# ---------------------------------------------------------------------------------------------
# Rendering


def _wrap(text: str, width: int) -> list[str]:
    """``text`` folded into lines of at most ``width`` characters; nothing is cut off.

    The indentation is kept and continuation lines are indented 4 more; a word longer than a
    line (a URL, a curl) stays whole rather than being broken.
    """
    indent = text[: len(text) - len(text.lstrip(" "))]
    words = " ".join(text.split())
    if not words:
        return [indent.rstrip()]
    return textwrap.wrap(
        words,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + "    ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _id_list(ids: Sequence[str], *, indent: str, width: int) -> list[str]:
    """As many whole ids as fit on one line, then ``+N more`` (the JSON verdict has them all)."""
    line = indent
    for index, case_id in enumerate(ids):
        rest = len(ids) - index
        piece = case_id if index == 0 else f", {case_id}"
        tail = f", +{rest - 1} more" if rest > 1 else ""
        if len(line) + len(piece) + len(tail) > width and index > 0:
            return [f"{line}, +{rest} more"]
        line += piece
    return [line]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def terminal_width() -> int:
    """Columns of the terminal stdout is (``COLUMNS`` wins); 100 when it is no terminal."""
    return max(_MIN_WIDTH, shutil.get_terminal_size((_WIDTH, 24)).columns)


def render(verdict: Verdict, *, width: int | None = None) -> str:
    """The verdict for a terminal, header ``GATE PASSED`` or ``GATE FAILED``.

    Long lines wrap at ``width`` (default: :func:`terminal_width`); no text is cut off. Long
    lists end in ``... N more`` pointing at the JSON verdict and the report page.
    """
    width = max(_MIN_WIDTH, width or terminal_width())
    lines = ["GATE PASSED" if verdict.passed else "GATE FAILED"]
    for reason in verdict.reasons:
        lines += _wrap(f"  - {reason}", width)
    if verdict.conformance is not None:
        lines += _render_conformance(verdict.conformance, verdict.allow_deviations, width)
    if verdict.load is not None:
        lines += _render_load(verdict.load, width)
    for note in verdict.notes:
        lines += _wrap(f"note: {note}", width)
    return mask_secrets("\n".join(lines))


def _skip_label(group: SkipGroup) -> str:
    return f"{len(group.ids)}x [{group.skip_class or 'other'}] {group.reason}"


def _render_conformance(c: ConformanceVerdict, allow_deviations: bool, width: int) -> list[str]:
    counts = ", ".join(
        _plural(n, "deviation") if outcome == "deviation" else f"{n} {outcome}"
        for outcome, n in c.counts.items()
    )
    if c.not_verified:
        counts += f"; {c.not_verified_count} NOT VERIFIED"
    lines = _wrap(
        f"conformance: {c.total} cases ({counts}); profile {c.profile}, mode {c.mode}", width
    )
    lines += _wrap(f"  relay {c.relay_url}", width)
    for case in c.failed[:_MAX_FAILED]:
        label = "FAILED" if case.outcome == "failed" else f"FAILED ({case.outcome})"
        lines += _wrap(f"{label} {case.id}: {case.title or case.reason}", width)
        if case.expected is not None or case.actual is not None:
            expected, actual = case.expected or "?", case.actual or "?"
            lines += _wrap(f"    expected {expected} | actual {actual}", width)
        elif case.reason:
            lines += _wrap(f"    {case.reason}", width)
    if len(c.failed) > _MAX_FAILED:
        lines.append(f"... {len(c.failed) - _MAX_FAILED} more failed (conformance.json/.html)")
    # Not verified comes right after failures: it fails the gate just the same.
    for group in c.not_verified[:_MAX_SKIP_GROUPS]:
        lines += _wrap(f"NOT VERIFIED {_skip_label(group)}", width)
        lines += _id_list(group.ids, indent="    ", width=width)
    if len(c.not_verified) > _MAX_SKIP_GROUPS:
        rest = sum(len(g.ids) for g in c.not_verified[_MAX_SKIP_GROUPS:])
        lines.append(f"... {rest} more not verified for other reasons (--json lists them)")
    label = "DEVIATION (allowed)" if allow_deviations else "DEVIATION"
    for case in c.deviations[:_MAX_DEVIATIONS]:
        lines += _wrap(f"{label} {case.id}: {case.reason}", width)
    if len(c.deviations) > _MAX_DEVIATIONS:
        lines.append(f"... {len(c.deviations) - _MAX_DEVIATIONS} more deviations")
    for area in c.unchecked_areas:
        if area.allowed_by is not None:
            why = "all profile skips" if area.allowed_by == "profile" else "allowed"
            lines += _wrap(f"UNCHECKED AREA {area.area} ({why}: {area.allowed_by})", width)
    others = [(g, f"allowed: {g.allowed_by}") for g in c.allowed_skips]
    others += [(g, "SHOULD") for g in c.should_skips]
    for group, why in others[:_MAX_OTHER_SKIP_GROUPS]:
        lines += _wrap(f"SKIPPED ({why}) {_skip_label(group)}", width)
        lines += _id_list(group.ids, indent="    ", width=width)
    if len(others) > _MAX_OTHER_SKIP_GROUPS:
        rest = sum(len(g.ids) for g, _ in others[_MAX_OTHER_SKIP_GROUPS:])
        lines.append(f"... {rest} more skipped (allowed or SHOULD; --json lists them)")
    return lines


def _render_load(load: LoadVerdict, width: int) -> list[str]:
    facts = [load.scenario]
    if load.requests is not None:
        facts.append(_plural(load.requests, "request"))
    if load.users is not None:
        facts.append(_plural(load.users, "user"))
    if load.duration_s is not None:
        facts.append(f"{load.duration_s:g} s")
    lines = _wrap(f"load: {', '.join(facts)}; host {load.host}", width)
    for result in load.slos:
        suffix = " [gate]" if result.source == "gate" else ""
        lines += _wrap(result.check_line + suffix, width)
        if result.note:
            lines += _wrap(f"    {result.note}", width)
    if not load.latency_valid:
        for reason in load.latency_reasons or ("the self-check gave no reason",):
            lines += _wrap(f"self-check: latency percentiles INVALID - {reason}", width)
    return lines


# ---------------------------------------------------------------------------------------------
# CLI


def _slo_rule(text: str) -> str:
    from relaygate.load.slo import SLOSyntaxError, parse_rule

    try:
        return parse_rule(text).text
    except SLOSyntaxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_EPILOG = """\
A pass needs evidence: a skipped MUST case fails the gate ("not verified") unless an
--allow-skip accepts it, and an area where every case was skipped fails unless
--allow-skip AREA names it or all its skips are of class profile. A report in which
nothing was executed always fails. Skip classes: live (no ground truth: --upstream-url,
admin API), key (a key the run could not get), profile (the profile says the relay has
no such feature), other. See docs/gating.md.

exit codes:
  0  the gate passed
  1  the gate failed (a failed case, a deviation, a MUST case not verified, an area or
     report where nothing was checked, a failed or unmeasured SLO)
  2  unusable input (no report, a missing or malformed file, a bad --slo rule or
     --allow-skip value)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``relaygate gate`` (cheap: the judging code is imported by :func:`run`)."""
    parser.description = "judge saved conformance/load reports: exit 0 pass, 1 fail, 2 bad input"
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--conformance",
        metavar="FILE",
        help="conformance report written by the suite (reports/conformance.json)",
    )
    parser.add_argument(
        "--load",
        metavar="FILE",
        help="load summary written by locust -f loadtests (reports/load-summary.json)",
    )
    parser.add_argument(
        "--slo",
        metavar="RULE",
        action="append",
        default=[],
        type=_slo_rule,
        help="extra SLO rule checked against the load summary (repeatable), e.g. "
        "error_rate<=0.01 or ttft_p99_ms<=800; same syntax as locust --slo",
    )
    parser.add_argument(
        "--allow-deviations",
        action="store_true",
        help="accept deviations the relay profile documents (they are still listed)",
    )
    parser.add_argument(
        "--allow-skip",
        metavar="X",
        action="append",
        default=[],
        help="accept skipped MUST cases (repeatable; they are still listed): an area "
        "(quota), a skip class (live, key, profile, other) or a case id glob matched on the "
        "full or bare id (auth.*, quota.formula[gpt-4])",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def run(args: argparse.Namespace) -> int:
    """Read the reports, judge them, print the verdict; 0 passed, 1 failed, 2 bad input."""
    if not args.conformance and not args.load:
        print(
            "relaygate gate: error: give --conformance FILE and/or --load FILE "
            "(e.g. reports/conformance.json, reports/load-summary.json)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        conformance = load_report(args.conformance, "conformance") if args.conformance else None
        load = load_report(args.load, "load") if args.load else None
        verdict = evaluate(
            conformance,
            load,
            slos=args.slo,
            allow_deviations=args.allow_deviations,
            allow_skips=args.allow_skip,
        )
    except GateInputError as exc:
        print(f"relaygate gate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        import orjson

        text = orjson.dumps(verdict.to_json(), option=orjson.OPT_INDENT_2).decode()
        print(mask_secrets(text))
    else:
        print(render(verdict))
    return verdict.exit_code
