"""How a case fails: h2spec-style requirement / expected / actual, plus a curl to reproduce.

Exceptions:

* :class:`CaseFailure` (an ``AssertionError``): the relay broke the rule the case checks.
* :func:`deviation` marks behaviour the profile accepts although it differs from the FAQ or
  OpenAI; it is reported as ``deviation``, never as ``passed``.
"""

from __future__ import annotations

from typing import Any, NoReturn

import pytest

from relaygate.keys import mask_secrets

__all__ = ["DEVIATION_PREFIX", "CaseFailure", "deviation", "fail", "require"]

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
