"""Live detection matrix: the suite as a relay customer runs it (only ``--relay-url`` and
``--relay-key``: no upstream journal, no admin token) passes against the reference relay, and
each fault switch a customer can see makes exactly the case instances that check its rule fail.

The expected table is data: ``tests/data/live_detection_matrix.json`` maps each fault switch
to the full ids (``area.name[param]``) of the instances it must fail in live mode. Only the
switches in the table are run (with the baseline), to keep this fast; every switch in
:data:`CUSTOMER_VISIBLE` must have a row, and a row may only name an instance whose case checks
the rule that switch breaks (the table is reviewed by hand, not copied from what happens to
fail). A detection is the case's own assertion failing, never a setup error or a skip: see
``tests/matrix_runner.py``, whose :func:`~matrix_runner.run_matrix` drives both matrices (one
embedded stack per worker, faults switched through the admin API between runs).

When the table is out of date, the failure message names a file holding the observed table.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
from matrix_runner import BASELINE, ROOT, Results, detected, errors, run_matrix

from relaygate.reference.faults import FAULTS

TABLE = Path(__file__).parent / "data" / "live_detection_matrix.json"
#: Sessions in parallel (stream timing waits as much as it computes: 4 keep 2 cores busy).
WORKERS = 4
#: Runs that may differ from the table and get a second try, alone (timing under load).
MAX_RERUNS = 3

#: The switches a customer holding only a key must be able to catch (issue #12): fraud on the
#: bill, the prompt, the model and the parameters, and the streaming/max_tokens cheats.
CUSTOMER_VISIBLE = frozenset(
    {
        "inflate_usage",
        "inject_system_prompt",
        "truncate_history",
        "swap_model_family",
        "clamp_max_tokens",
        "double_bill",
        "hidden_fee",
        "bill_refused",
        "drop_stop",
        "drop_n",
        "drop_temperature",
        "drop_response_format",
        "drop_logprobs",
        "drop_tools",
        "buffer_streams",
        "rewrite_model_field",
        # Answer objects with vendor fields or "None" strings (issue #13).
        "extra_response_fields",
        "none_strings",
    }
)

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("RELAYGATE_SKIP_MATRIX") == "1", reason="RELAYGATE_SKIP_MATRIX=1"
    ),
    pytest.mark.timeout(2400),  # a backstop, as in test_detection_matrix.py
    pytest.mark.long(225),  # under xdist: started first (conftest.py)
]


def _expected() -> dict[str, set[str]]:
    table: dict[str, list[str]] = json.loads(TABLE.read_text())
    return {fault: set(ids) for fault, ids in table.items()}


DETECTS = _expected()


class LiveMatrix(NamedTuple):
    results: Results
    #: The detections observed, in the data file's format (to review against the table).
    observed_path: Path


def _as_expected(run: str, cases: dict[str, tuple[str, str]]) -> bool:
    wanted = set() if run == BASELINE else DETECTS.get(run, set())
    return detected(cases) == wanted and not errors(cases)


@pytest.fixture(scope="module")
def live_matrix(tmp_path_factory: pytest.TempPathFactory) -> LiveMatrix:
    runs = [BASELINE, *sorted(DETECTS)]
    folder = tmp_path_factory.mktemp("live-matrix")
    results = run_matrix(runs, WORKERS, folder, live=True)
    again = [run for run in runs if not _as_expected(run, results[run])]
    if 0 < len(again) <= MAX_RERUNS:
        results.update(run_matrix(again, 1, folder / "rerun", live=True))
    observed = {fault: sorted(detected(results[fault])) for fault in sorted(DETECTS)}
    observed_path = Path(tempfile.mkdtemp(prefix="relaygate-live-matrix-")) / TABLE.name
    observed_path.write_text(json.dumps(observed, indent=2) + "\n")
    return LiveMatrix(results, observed_path)


def test_table_rows_are_fault_switches_and_cover_the_customer_visible_ones() -> None:
    assert set(DETECTS) <= set(FAULTS), f"rows without a fault: {set(DETECTS) - set(FAULTS)}"
    missing = sorted(CUSTOMER_VISIBLE - set(DETECTS))
    assert not missing, f"customer-visible switches without a live row: {missing}"


def test_reference_relay_passes_live(live_matrix: LiveMatrix) -> None:
    cases = live_matrix.results[BASELINE]
    bad = {c: detail for c, (status, detail) in cases.items() if status in ("failed", "error")}
    assert not bad, f"the reference relay fails or errors in live mode: {bad}"
    skipped = {c: detail for c, (status, detail) in cases.items() if status == "skipped"}
    assert all(skipped.values()), f"skips without a reason: {skipped}"
    instances = set(cases)
    unknown = sorted(set().union(*DETECTS.values()) - instances)
    assert not unknown, f"the table names instances the live suite does not run: {unknown}"


@pytest.mark.parametrize("fault", sorted(DETECTS))
def test_fault_is_detected_live_by_exactly_its_cases(fault: str, live_matrix: LiveMatrix) -> None:
    cases = live_matrix.results[fault]
    errored = errors(cases)
    assert not errored, f"fault {fault}: cases errored instead of judging: {errored}"
    failed = detected(cases)
    expected = DETECTS[fault]
    assert failed == expected, (
        f"fault {fault} ({FAULTS[fault]}): unexpected failures {sorted(failed - expected)}, "
        f"missed detections {sorted(expected - failed)}; observed table: "
        f"{live_matrix.observed_path} (review it against {TABLE.relative_to(ROOT)})"
    )
