"""Detection matrix: the conformance suite passes against the reference relay, and every
fault switch makes exactly the case instances that check the broken rule fail.

The expected table is data: ``tests/data/detection_matrix.json`` maps each fault to the full
ids (``area.name[param]``, as conformance.json records them) of the instances it must fail. A
detection is the case's own assertion failing (``require``'s CaseFailure, or an
``AssertionError`` raised in the case body), never a setup error, a crash or a skip: see
``tests/matrix_runner.py``. Every instance the suite runs must be detected by some fault.

Speed: ``WORKERS`` embedded stacks, each serving one pytest session (``-p matrix_runner``) that
imports and collects the suite once and runs it once per fault of its share, switching the
fault and restoring the relay's state through the admin API between runs.

When the table is out of date (a case or a fault was added or changed), the failure message
names a file holding the observed table: review it, then copy it over the data file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
from matrix_runner import BASELINE, ROOT, Results, run_matrix
from matrix_runner import detected as _detected
from matrix_runner import errors as _errors

from relaygate.reference.faults import FAULTS

TABLE = Path(__file__).parent / "data" / "detection_matrix.json"
#: Sessions in parallel: cases wait on timers (Retry-After, stream gaps) as much as they use
#: CPU, so four sessions keep two cores busy.
WORKERS = 4

#: Runs that may differ from the table and get a second try (timing under load).
MAX_RERUNS = 3

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("RELAYGATE_SKIP_MATRIX") == "1", reason="RELAYGATE_SKIP_MATRIX=1"
    ),
    # The first test pays for every suite run (the module fixture).
    # A backstop only (each session has its own bound): on four xdist workers the matrix shares
    # two cores with the rest of the tests.
    pytest.mark.timeout(2400),
    pytest.mark.long(210),  # under xdist: started first (conftest.py)
]


def _expected() -> dict[str, set[str]]:
    table: dict[str, list[str]] = json.loads(TABLE.read_text())
    return {fault: set(ids) for fault, ids in table.items()}


DETECTS = _expected()


class Matrix(NamedTuple):
    results: Results
    #: The detections observed, in the data file's format (to refresh it after review).
    observed_path: Path


def _as_expected(run: str, cases: dict[str, tuple[str, str]]) -> bool:
    wanted = set() if run == BASELINE else DETECTS.get(run, set())
    return _detected(cases) == wanted and not _errors(cases)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    runs = [BASELINE, *sorted(FAULTS)]
    folder = tmp_path_factory.mktemp("matrix")
    results = run_matrix(runs, WORKERS, folder)
    # Timing cases can miss under a loaded machine: a run that differs from the table gets one
    # more try, alone; it must then match exactly. Many differing runs mean a stale table.
    again = [run for run in runs if not _as_expected(run, results[run])]
    if 0 < len(again) <= MAX_RERUNS:
        results.update(run_matrix(again, 1, folder / "rerun"))
    observed = {
        fault: sorted(_detected(results[fault])) for fault in sorted(FAULTS) if fault in results
    }
    # Outside pytest's basetemp, which other sessions on this machine rotate away.
    observed_path = Path(tempfile.mkdtemp(prefix="relaygate-matrix-")) / TABLE.name
    observed_path.write_text(json.dumps(observed, indent=2) + "\n")
    return Matrix(results, observed_path)


def test_every_fault_has_an_expected_detection() -> None:
    assert set(DETECTS) == set(FAULTS), "faults without a row / rows without a fault"


def test_reference_relay_passes(matrix: Matrix) -> None:
    cases = matrix.results[BASELINE]
    bad = {c: detail for c, (status, detail) in cases.items() if status in ("failed", "error")}
    assert not bad, f"the reference relay fails or errors: {bad}"
    skipped = {c: detail for c, (status, detail) in cases.items() if status == "skipped"}
    assert all(skipped.values()), f"skips without a reason: {skipped}"


def test_every_case_is_caught_by_some_fault(matrix: Matrix) -> None:
    """A case instance that no faulty relay makes fail is a case that cannot fail."""
    instances = set(matrix.results[BASELINE])
    caught = set().union(*(_detected(matrix.results[fault]) for fault in FAULTS))
    uncaught = sorted(instances - caught)
    assert not uncaught, (
        f"no fault switch makes these case instances fail: {uncaught}; add a fault switch "
        "(src/relaygate/reference/faults.py) that breaks the rule they check"
    )
    named = set().union(*DETECTS.values())
    unknown = sorted(named - instances)
    assert not unknown, f"the table names instances the suite does not run: {unknown}"


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_detected_by_exactly_its_cases(fault: str, matrix: Matrix) -> None:
    cases = matrix.results[fault]
    errors = _errors(cases)
    assert not errors, f"fault {fault}: cases errored instead of judging: {errors}"
    failed = _detected(cases)
    expected = DETECTS.get(fault, set())
    assert failed == expected, (
        f"fault {fault} ({FAULTS[fault]}): unexpected failures {sorted(failed - expected)}, "
        f"missed detections {sorted(expected - failed)}; observed table: "
        f"{matrix.observed_path} (review it, then copy it to {TABLE.relative_to(ROOT)})"
    )
