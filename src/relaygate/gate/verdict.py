"""The gate's verdict as data: what it judged, what failed it, and the exit code it means.

Exceptions: :class:`GateInputError` (a ``ValueError``) - unusable input; the CLI exits 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

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
    "plural",
]

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class GateInputError(ValueError):
    """A report is missing, unreadable or not the expected shape, or an SLO rule is invalid."""


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


def plural(n: int, word: str) -> str:
    """``1 case``, ``2 cases``: a count with its word."""
    return f"{n} {word}{'' if n == 1 else 's'}"
