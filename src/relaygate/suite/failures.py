"""How a case fails: h2spec-style requirement / expected / actual, plus a curl to reproduce.

Exceptions:

* :class:`CaseFailure` (an ``AssertionError``): the relay broke the rule the case checks.
* :func:`deviation` marks behaviour the profile accepts although it differs from the FAQ or
  OpenAI; it is reported as ``deviation``, never as ``passed``.

Evidence (optional, for the customer's audit report ``reports/audit.md``): a case may pass
``evidence=`` to :func:`require`/:func:`fail`, an :class:`Evidence` mapping. It travels in the
failure text as one ``Evidence: {json}`` line (so it reaches ``conformance.json`` through the
same masked path as the rest of the message) and comes out as the case's ``evidence`` key.
Keys, all optional:

``confidence``
    ``exact`` (a count or a byte compared: no doubt), ``statistical`` (a sample with a stated
    error bound, e.g. timing, fingerprints over N answers) or ``heuristic`` (a sign, not a
    proof). A finding without it is shown as ``exact``: a case that samples or guesses must
    say so.
``counts``
    label -> number, in the order to show, e.g. ``{"local prompt tokens": 12,
    "reported prompt_tokens": 40, "billed quota": 600, "formula quota": 180}``.
``excerpt``
    the part of the relay's answer that shows the problem (cut to 500 characters).
``model_requested`` / ``model_served``
    the model named in the request and the one the answer (or a fingerprint) points to.
``method``
    one line: how the number was established (``"tiktoken o200k_base"``, ``"20 samples"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NoReturn, TypedDict

import orjson
import pytest

from relaygate.keys import mask_secrets

__all__ = [
    "CONFIDENCES",
    "DEVIATION_PREFIX",
    "EVIDENCE_LABEL",
    "CaseFailure",
    "Evidence",
    "deviation",
    "fail",
    "mask_report",
    "parse_evidence",
    "require",
]

DEVIATION_PREFIX = "deviation: "
README_FAILURES = "README.md#reading-a-failure"
EVIDENCE_LABEL = "Evidence:"
CONFIDENCES = ("exact", "statistical", "heuristic")
_EXCERPT_CHARS = 500
_EVIDENCE_CHARS = 4000


class Evidence(TypedDict, total=False):
    """What a failure rests on, for the audit report (see the module docstring)."""

    confidence: Literal["exact", "statistical", "heuristic"]
    counts: Mapping[str, int | float | None]
    excerpt: str
    model_requested: str
    model_served: str
    method: str


class CaseFailure(AssertionError):
    """A conformance failure, formatted for a relay operator."""


def _fmt(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 1500 else text[:1500] + f"… ({len(text)} chars)"


def _evidence_line(evidence: Mapping[str, Any]) -> str:
    """``Evidence: {json}`` on one line, bounded; unknown keys and bad values are dropped so a
    slip in a case never hides its failure."""
    clean: dict[str, Any] = {}
    confidence = evidence.get("confidence")
    if confidence in CONFIDENCES:
        clean["confidence"] = confidence
    counts = evidence.get("counts")
    if isinstance(counts, Mapping):
        clean["counts"] = {
            str(k)[:80]: v
            for k, v in counts.items()
            if v is None or (isinstance(v, int | float) and not isinstance(v, bool))
        }
    for key in ("model_requested", "model_served", "method"):
        if isinstance(evidence.get(key), str):
            clean[key] = evidence[key][:200]
    excerpt = evidence.get("excerpt")
    if isinstance(excerpt, str):
        cut = len(excerpt) > _EXCERPT_CHARS
        clean["excerpt"] = excerpt[:_EXCERPT_CHARS] + (f"… ({len(excerpt)} chars)" if cut else "")
    text = orjson.dumps(clean).decode()
    if len(text) > _EVIDENCE_CHARS:
        clean.pop("excerpt", None)
        text = orjson.dumps(clean).decode()[:_EVIDENCE_CHARS]
    return f"   {EVIDENCE_LABEL} {text}"


def parse_evidence(details: str) -> dict[str, Any] | None:
    """The :class:`Evidence` a failure text carries (its ``Evidence:`` line), or None."""
    for line in details.splitlines():
        stripped = line.strip()
        if stripped.startswith(EVIDENCE_LABEL):
            try:
                value = orjson.loads(stripped.removeprefix(EVIDENCE_LABEL).strip())
            except orjson.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def fail(
    requirement: str,
    expected: Any,
    actual: Any,
    curl: str | None = None,
    secrets: tuple[str | None, ...] = (),
    *,
    evidence: Evidence | Mapping[str, Any] | None = None,
) -> NoReturn:
    __tracebackhide__ = True
    lines = [
        f"-> {requirement}",
        f"   Expected: {_fmt(expected)}",
        f"     Actual: {_fmt(actual)}",
    ]
    if evidence:
        lines.append(_evidence_line(evidence))
    if curl:
        lines.append(f"  Reproduce: {curl}")
    lines.append(f"  (how to read this: {README_FAILURES})")
    raise CaseFailure(mask_secrets("\n".join(lines), *secrets))


def require(
    condition: bool,
    requirement: str,
    expected: Any,
    actual: Any,
    curl: str | None = None,
    secrets: tuple[str | None, ...] = (),
    *,
    evidence: Evidence | Mapping[str, Any] | None = None,
) -> None:
    """Fail the case with a readable message unless ``condition`` holds; ``evidence`` (optional)
    is what the audit report shows beside it (module docstring)."""
    __tracebackhide__ = True
    if not condition:
        fail(requirement, expected, actual, curl, secrets, evidence=evidence)


def deviation(reason: str) -> NoReturn:
    """The relay differs from the FAQ/OpenAI in a way its profile documents and accepts."""
    pytest.xfail(DEVIATION_PREFIX + reason)


def mask_report(report: pytest.TestReport, secrets: Iterable[str | None]) -> None:
    """Mask ``secrets`` and key-shaped text in everything ``report`` carries out of the process:
    the traceback with its locals (``-l``), the crash line, captured output. The terminal,
    JUnit XML and our reports all print from these, so this is the one boundary to guard."""
    known = tuple(secrets)
    report.longrepr = _masked(report.longrepr, known, 0)
    report.sections = [(title, mask_secrets(text, *known)) for title, text in report.sections]


def _masked(value: Any, secrets: tuple[str | None, ...], depth: int) -> Any:
    # pytest's traceback reprs are trees of small dataclasses (ReprEntry, ReprLocals, ...)
    # holding strings, lists and tuples: walk them and mask every string in place.
    if isinstance(value, str):
        return mask_secrets(value, *secrets)
    if depth > 12:
        return value
    if isinstance(value, tuple):
        return tuple(_masked(v, secrets, depth + 1) for v in value)
    if isinstance(value, list):
        value[:] = [_masked(v, secrets, depth + 1) for v in value]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            current = getattr(value, field.name)
            masked = _masked(current, secrets, depth + 1)
            if masked is not current:
                object.__setattr__(value, field.name, masked)
    return value
