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

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
from matrix_runner import BASELINE

from relaygate.reference.faults import FAULTS
from relaygate.stack import EmbeddedStack

ROOT = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).parent / "data" / "detection_matrix.json"
#: Sessions in parallel: cases wait on timers (Retry-After, stream gaps) as much as they use
#: CPU, so four sessions keep two cores busy.
WORKERS = 4

#: Runs that may differ from the table and get a second try (timing under load).
MAX_RERUNS = 3

#: run -> full case id -> (status, detail); see matrix_runner for the statuses.
Results = dict[str, dict[str, tuple[str, str]]]

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("RELAYGATE_SKIP_MATRIX") == "1", reason="RELAYGATE_SKIP_MATRIX=1"
    ),
    # The first test pays for every suite run (the module fixture).
    pytest.mark.timeout(900),
]


def _expected() -> dict[str, set[str]]:
    table: dict[str, list[str]] = json.loads(TABLE.read_text())
    return {fault: set(ids) for fault, ids in table.items()}


DETECTS = _expected()


def _session(stack: EmbeddedStack, runs: list[str], out: Path) -> Results:
    """One pytest session on ``stack`` running the suite once per run."""
    info = stack.info
    assert info is not None
    out.parent.mkdir(parents=True)
    args = [sys.executable, "-m", "pytest", str(ROOT / "conformance"), "-q"]
    args += ["-p", "no:cacheprovider", "-p", "matrix_runner", "--report-dir", str(out.parent)]
    args += ["--relay-url", info.relay_url, "--relay-key", info.relay_key]
    args += ["--relay-admin-token", info.admin_token, "--upstream-url", info.upstream_url]
    # An oversized body that a faulty relay accepts is tokenised whole (seconds): no timeout.
    args += ["--matrix-out", str(out), "--relay-timeout", "120"]
    for run in runs:
        args += ["--matrix-run", run]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGATE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    results: Results = {}
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            results.setdefault(row["run"], {})[row["id"]] = (row["status"], row["detail"])
    missing = [run for run in runs if run not in results]
    if missing:
        output = proc.stdout[-3000:] + "\n" + proc.stderr[-2000:]
        pytest.fail(f"the matrix session recorded no results for {missing}:\n{output}")
    return results


def _run_all(runs: list[str], workers: int, folder: Path) -> Results:
    """Every run, spread over ``workers`` stacks (one session each)."""
    shares = [runs[i::workers] for i in range(workers) if runs[i::workers]]
    stacks = [EmbeddedStack() for _ in shares]
    results: Results = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(shares)) as pool:
            list(pool.map(EmbeddedStack.start, stacks))
            futures = [
                pool.submit(_session, stack, share, folder / f"worker{i}" / "matrix.jsonl")
                for i, (stack, share) in enumerate(zip(stacks, shares, strict=True))
            ]
            for future in futures:
                results.update(future.result())
    finally:
        for stack in stacks:
            stack.stop()
    return results


def _detected(cases: dict[str, tuple[str, str]]) -> set[str]:
    return {case for case, (status, _) in cases.items() if status == "failed"}


def _errors(cases: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {case: detail for case, (status, detail) in cases.items() if status == "error"}


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
    results = _run_all(runs, WORKERS, folder)
    # Timing cases can miss under a loaded machine: a run that differs from the table gets one
    # more try, alone; it must then match exactly. Many differing runs mean a stale table.
    again = [run for run in runs if not _as_expected(run, results[run])]
    if 0 < len(again) <= MAX_RERUNS:
        results.update(_run_all(again, 1, folder / "rerun"))
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
