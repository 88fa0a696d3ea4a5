"""``relaygate gate``: judge saved reports and answer with an exit code a CI job can use.

::

    relaygate gate --conformance reports/conformance.json --load reports/load-summary.json \\
                   [--slo 'ttft_p99_ms<=800' ...] [--allow-deviations] [--json]

Exit codes: 0 the gate passed, 1 it failed, 2 the input was unusable (no report given, a file
missing, not JSON or not a relaygate report, an ``--slo`` rule that does not parse).

What fails the gate (each is a line of :attr:`Verdict.reasons`):

* a conformance case whose outcome is anything but ``passed``, ``skipped`` or ``deviation``
  (``failed``, and any outcome this version does not know, e.g. an error);
* a ``deviation`` (behaviour the profile documents as different from the FAQ/OpenAI) unless
  ``allow_deviations``; skipped cases never fail, they are counted and listed by reason;
* a conformance report without a single case;
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
import re
import sys
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
    "Verdict",
    "add_arguments",
    "evaluate",
    "load_report",
    "render",
    "run",
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
_WIDTH = 100
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
    """Skipped cases that share one reason."""

    reason: str
    ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "count": len(self.ids), "ids": list(self.ids)}


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

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "relay_url": self.relay_url,
            "profile": self.profile,
            "mode": self.mode,
            "total": self.total,
            "counts": dict(self.counts),
            "failed": [c.to_json() for c in self.failed],
            "deviations": [c.to_json() for c in self.deviations],
            "skipped": [g.to_json() for g in self.skipped],
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
        for key in ("title", "reason", "details"):
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


def evaluate(
    conformance: Mapping[str, Any] | None,
    load: Mapping[str, Any] | None,
    *,
    slos: Sequence[str] = (),
    allow_deviations: bool = False,
) -> Verdict:
    """Judge a conformance report and/or a load summary (as loaded JSON); see the module doc.

    ``slos`` are extra rules (``--slo`` syntax) evaluated against the load summary's numbers.
    Raises :class:`GateInputError` when neither report is given, a report has the wrong
    shape, ``slos`` are given without a load summary, or a rule does not parse.
    """
    if conformance is None and load is None:
        raise GateInputError("nothing to judge: give a conformance report and/or a load summary")
    if slos and load is None:
        raise GateInputError("--slo rules need a load summary (--load)")
    reasons: list[str] = []
    notes: list[str] = []
    conformance_verdict = None
    load_verdict = None
    if conformance is not None:
        _check_conformance(conformance)
        conformance_verdict = _judge_conformance(conformance)
        failed = len(conformance_verdict.failed)
        if conformance_verdict.total == 0:
            reasons.append("the conformance report holds no case")
        if failed:
            reasons.append(f"{failed} conformance case{'s' if failed != 1 else ''} failed")
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
    return Verdict(
        passed=not reasons,
        reasons=tuple(reasons),
        notes=tuple(notes),
        allow_deviations=allow_deviations,
        conformance=conformance_verdict,
        load=load_verdict,
    )


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


def _judge_conformance(doc: Mapping[str, Any]) -> ConformanceVerdict:
    counts: dict[str, int] = dict.fromkeys(_COUNT_ORDER, 0)
    failed: list[CaseLine] = []
    deviations: list[CaseLine] = []
    skipped: dict[str, list[str]] = {}
    for case in doc["cases"]:
        outcome = case["outcome"]
        counts[outcome] = counts.get(outcome, 0) + 1
        case_id = _text(case["id"])
        title = _text(case.get("title"))
        reason = _clean_reason(_text(case.get("reason")))
        if outcome == "passed":
            continue
        if outcome == "skipped":
            skipped.setdefault(reason or "no reason given", []).append(case_id)
        elif outcome == "deviation":
            deviations.append(CaseLine(case_id, title, outcome, reason))
        else:
            expected, actual = _expected_actual(_text(case.get("details")))
            failed.append(CaseLine(case_id, title, outcome, reason, expected, actual))
    groups = sorted(
        (SkipGroup(reason, tuple(ids)) for reason, ids in skipped.items()),
        key=lambda g: (-len(g.ids), g.reason),
    )
    return ConformanceVerdict(
        relay_url=_text(doc.get("relay_url")) or "?",
        profile=_text(doc.get("profile")) or "?",
        mode=_text(doc.get("mode")) or "?",
        counts=counts,
        failed=tuple(failed),
        deviations=tuple(deviations),
        skipped=tuple(groups),
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


def _clip(text: str, width: int = _WIDTH) -> str:
    """One line of at most ``width`` characters; the indentation is kept, newlines folded."""
    indent = text[: len(text) - len(text.lstrip(" "))]
    text = indent + " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _id_list(ids: Sequence[str], *, indent: str, width: int = _WIDTH) -> str:
    """As many whole ids as fit on one line, then ``+N more``."""
    line = indent
    for index, case_id in enumerate(ids):
        rest = len(ids) - index
        piece = case_id if index == 0 else f", {case_id}"
        tail = f", +{rest - 1} more" if rest > 1 else ""
        if len(line) + len(piece) + len(tail) > width and index > 0:
            return f"{line}, +{rest} more"
        line += piece
    return _clip(line, width)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render(verdict: Verdict) -> str:
    """The verdict for a terminal: one screen, header ``GATE PASSED`` or ``GATE FAILED``."""
    header = "GATE PASSED" if verdict.passed else "GATE FAILED"
    lines = [header]
    lines += [_clip(f"  - {reason}") for reason in verdict.reasons]
    if verdict.conformance is not None:
        lines += _render_conformance(verdict.conformance, verdict.allow_deviations)
    if verdict.load is not None:
        lines += _render_load(verdict.load)
    lines += [_clip(f"note: {note}") for note in verdict.notes]
    return mask_secrets("\n".join(lines))


def _render_conformance(c: ConformanceVerdict, allow_deviations: bool) -> list[str]:
    counts = ", ".join(
        _plural(n, "deviation") if outcome == "deviation" else f"{n} {outcome}"
        for outcome, n in c.counts.items()
    )
    lines = [
        _clip(f"conformance: {c.total} cases ({counts}); profile {c.profile}, mode {c.mode}"),
        _clip(f"  relay {c.relay_url}"),
    ]
    for case in c.failed[:_MAX_FAILED]:
        label = "FAILED" if case.outcome == "failed" else f"FAILED ({case.outcome})"
        lines.append(_clip(f"{label} {case.id}: {case.title or case.reason}"))
        if case.expected is not None or case.actual is not None:
            expected, actual = case.expected or "?", case.actual or "?"
            lines.append(_clip(f"    expected {expected} | actual {actual}"))
        elif case.reason:
            lines.append(_clip(f"    {case.reason}"))
    if len(c.failed) > _MAX_FAILED:
        lines.append(f"... {len(c.failed) - _MAX_FAILED} more failed (conformance.json/.html)")
    label = "DEVIATION (allowed)" if allow_deviations else "DEVIATION"
    for case in c.deviations[:_MAX_DEVIATIONS]:
        lines.append(_clip(f"{label} {case.id}: {case.reason}"))
    if len(c.deviations) > _MAX_DEVIATIONS:
        lines.append(f"... {len(c.deviations) - _MAX_DEVIATIONS} more deviations")
    for group in c.skipped[:_MAX_SKIP_GROUPS]:
        lines.append(_clip(f"SKIPPED {len(group.ids)}x {group.reason}"))
        lines.append(_id_list(group.ids, indent="    "))
    if len(c.skipped) > _MAX_SKIP_GROUPS:
        rest = sum(len(g.ids) for g in c.skipped[_MAX_SKIP_GROUPS:])
        lines.append(f"... {rest} more skipped for other reasons")
    return lines


def _render_load(load: LoadVerdict) -> list[str]:
    facts = [load.scenario]
    if load.requests is not None:
        facts.append(_plural(load.requests, "request"))
    if load.users is not None:
        facts.append(_plural(load.users, "user"))
    if load.duration_s is not None:
        facts.append(f"{load.duration_s:g} s")
    lines = [_clip(f"load: {', '.join(facts)}; host {load.host}")]
    for result in load.slos:
        suffix = " [gate]" if result.source == "gate" else ""
        lines.append(_clip(result.check_line + suffix))
        if result.note:
            lines.append(_clip(f"    {result.note}"))
    if not load.latency_valid:
        for reason in load.latency_reasons or ("the self-check gave no reason",):
            lines.append(_clip(f"self-check: latency percentiles INVALID - {reason}"))
    return lines


# ---------------------------------------------------------------------------------------------
# CLI


def _slo_rule(text: str) -> str:
    from relaygate.load.slo import SLOSyntaxError, parse_rule

    try:
        return parse_rule(text).text
    except SLOSyntaxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``relaygate gate`` (cheap: the judging code is imported by :func:`run`)."""
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
        verdict = evaluate(conformance, load, slos=args.slo, allow_deviations=args.allow_deviations)
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
