"""The repository's xdist scheduling (conftest.py), checked on a small project of its own.

Grouping once failed silently: pytest 9.2 changed how a node id is stored, so xdist 3.8's
``xdist_group`` marks stopped having any effect and every test was spread on its own. These
tests run ``pytest -n 3`` on a throwaway project that uses the same conftest and read, from
what each test wrote down, which worker ran it and when.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_RECORD = """
import json, os, time
from pathlib import Path

def record(name, started):
    out = Path(os.environ["GROUPS_OUT"]) / f"{name}.json"
    out.write_text(json.dumps({
        "worker": os.environ.get("PYTEST_XDIST_WORKER"), "start": started, "end": time.time(),
    }))
"""

_PLAIN = """
import time, pytest
from record import record

@pytest.mark.parametrize("n", range(6))
def test_plain(n):
    started = time.time()
    time.sleep(0.4)
    record(f"plain{n}", started)
"""

_SHARED = """
import time, pytest
from record import record

@pytest.fixture(scope="module")
def expensive():
    return object()

@pytest.mark.parametrize("n", range(4))
def test_shared(expensive, n):
    started = time.time()
    time.sleep(0.1)
    record(f"shared{n}", started)
"""

_SERIAL = """
import time, pytest
from record import record

pytestmark = pytest.mark.serial

@pytest.mark.parametrize("n", range(3))
def test_serial(n):
    started = time.time()
    time.sleep(0.2)
    record(f"serial{n}", started)
"""

_LONG = """
import time, pytest
from record import record

@pytest.mark.long(10)
def test_longer():
    started = time.time()
    time.sleep(1.2)
    record("long10", started)

@pytest.mark.long(5)
def test_long():
    started = time.time()
    time.sleep(0.8)
    record("long5", started)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    project = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "conftest.py", project / "conftest.py")
    (project / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (project / "record.py").write_text(_RECORD)
    for name, body in (
        ("plain", _PLAIN),
        ("shared", _SHARED),
        ("serial", _SERIAL),
        ("zlong", _LONG),
    ):
        (project / f"test_{name}.py").write_text(body)
    out = project / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "3", "-q", "-p", "xdist", str(project)],
        cwd=project,
        env={"GROUPS_OUT": str(out), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def test_every_test_ran_on_a_worker(runs: dict[str, dict[str, object]]) -> None:
    assert len(runs) == 15
    assert all(str(r["worker"]).startswith("gw") for r in runs.values())


def test_a_module_fixture_keeps_its_tests_on_one_worker(
    runs: dict[str, dict[str, object]],
) -> None:
    assert len({runs[f"shared{n}"]["worker"] for n in range(4)}) == 1


def test_serial_tests_run_last_alone_on_one_worker(runs: dict[str, dict[str, object]]) -> None:
    serial = [runs[f"serial{n}"] for n in range(3)]
    others = [r for name, r in runs.items() if not name.startswith("serial")]
    assert len({r["worker"] for r in serial}) == 1
    first_serial = min(float(r["start"]) for r in serial)  # type: ignore[arg-type]
    last_other = max(float(r["end"]) for r in others)  # type: ignore[arg-type]
    assert first_serial >= last_other
    # The plain tests were spread over the workers (the scheduling is still parallel).
    assert len({runs[f"plain{n}"]["worker"] for n in range(6)}) >= 2


def test_long_tests_start_first_each_on_its_own_worker(
    runs: dict[str, dict[str, object]],
) -> None:
    """Collected last, the two ``long`` tests still start before any plain test has ended,
    on two workers: neither waits behind the other or behind a unit queued before it."""
    long = [runs["long10"], runs["long5"]]
    assert len({r["worker"] for r in long}) == 2
    plain_ends = [float(r["end"]) for n, r in runs.items() if n.startswith("plain")]  # type: ignore[arg-type]
    assert all(float(r["start"]) < min(plain_ends) for r in long)  # type: ignore[arg-type]
