"""How a case fails: h2spec-style requirement / expected / actual, plus a curl to reproduce.

Exceptions:

* :class:`CaseFailure` (an ``AssertionError``): the relay broke the rule the case checks.
* :func:`deviation` marks behaviour the profile accepts although it differs from the FAQ or
  OpenAI; it is reported as ``deviation``, never as ``passed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, NoReturn

import pytest

from relaygate.keys import mask_secrets

__all__ = ["DEVIATION_PREFIX", "CaseFailure", "deviation", "fail", "mask_report", "require"]

DEVIATION_PREFIX = "deviation: "
README_FAILURES = "README.md#reading-a-failure"


class CaseFailure(AssertionError):
    """A conformance failure, formatted for a relay operator."""


def _fmt(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 1500 else text[:1500] + f"… ({len(text)} chars)"


def fail(
    requirement: str,
    expected: Any,
    actual: Any,
    curl: str | None = None,
    secrets: tuple[str | None, ...] = (),
) -> NoReturn:
    __tracebackhide__ = True
    lines = [
        f"-> {requirement}",
        f"   Expected: {_fmt(expected)}",
        f"     Actual: {_fmt(actual)}",
    ]
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
) -> None:
    """Fail the case with a readable message unless ``condition`` holds."""
    __tracebackhide__ = True
    if not condition:
        fail(requirement, expected, actual, curl, secrets)


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
