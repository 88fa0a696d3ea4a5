"""Reading the reports the gate judges: a file to JSON, and a check that it has the shape the
judging relies on (one-line :class:`GateInputError` otherwise)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

from relaygate.gate.verdict import GateInputError

__all__ = ["check_conformance", "check_load", "is_number", "load_report"]


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
    check = check_conformance if kind == "conformance" else check_load
    try:
        check(doc)
    except GateInputError as exc:
        raise GateInputError(f"{where}: {exc}") from None
    return doc


def check_conformance(doc: Mapping[str, Any]) -> None:
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


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_load(doc: Mapping[str, Any]) -> None:
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
            and is_number(result.get("threshold"))
            and (result.get("observed") is None or is_number(result.get("observed")))
        ):
            raise GateInputError(
                f"slo[{index}] is not {{rule: str, observed: number|null, threshold: number, "
                "passed: bool}"
            )
    if not isinstance(doc.get("latency_valid", True), bool):
        raise GateInputError('"latency_valid" is not true/false')
