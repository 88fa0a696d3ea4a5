"""Repository-wide test settings (not shipped: the suite's own conftest is conformance/conftest.py).

The README's test command runs on four pytest-xdist workers (``pytest -n 4``): most tests wait
on real servers, load runs and timeouts far more than they compute (the live audit's honesty
run: 180 s of wall time for 10 CPU-s), so four workers keep two cores busy. Tests are spread
one by one, except where sharing matters:

- the conformance suite's cases stay together on one worker: one embedded stack, one session;
- tests that use a module-scoped fixture (an expensive demo run, a stack, a whole matrix) stay
  with the other tests of their module, so the fixture is built once;
- the tests marked ``long(seconds)`` (a matrix, a live run: minutes of mostly waiting) start
  first, longest first, so that none of them begins late and becomes the run's tail;
- the tests marked ``serial`` (they judge timing: load runs, latency self-checks, pacing) run
  last, on one worker, alone: :class:`SerialLastScheduling` starts them only after every other
  worker has finished and left. So nothing else needs to be kept apart: the two detection
  matrices (each four suite sessions at once) run side by side, which slows the tests beside
  them but judges nothing by time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

_CONFORMANCE = Path(__file__).parent / "conformance"
_SHARED_SCOPES = {"module", "package", "class"}
#: The group of the tests marked ``serial``.
SERIAL = "serial"
#: The mark of a test with a long wall time, and its seconds on this machine (a hint).
LONG = "long"
#: ``workerinput`` key: where a worker writes the groups of the tests it collected.
_GROUPS_INPUT = "relaygate_groups_file"
_GROUPS_DIR = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "serial: judges timing (a load run, a latency self-check, pacing); under xdist it runs "
        "last and alone, after every other test",
    )
    config.addinivalue_line(
        "markers",
        "long(seconds): waits long (a matrix, a live run; seconds: its wall time here, a hint); "
        "under xdist its group starts first, longest first",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """``-n N`` alone distributes by the groups below (``--dist loadgroup``)."""
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", "no") == "no":
        option.dist = "loadgroup"


# The groups travel in a file, not in xdist's ``nodeid@group`` suffix: under pytest 9.2 a node
# id is no longer the attribute pytest-xdist 3.8 rewrites, so its ``xdist_group`` mark has no
# effect (every test was scheduled on its own).


def pytest_configure_node(node: Any) -> None:
    """xdist controller: give each worker a file to write its groups to."""
    config: pytest.Config = node.config
    if config.getvalue("dist") != "loadgroup":
        return
    if _GROUPS_DIR not in config.stash:
        config.stash[_GROUPS_DIR] = Path(tempfile.mkdtemp(prefix="relaygate-xdist-"))
    node.workerinput[_GROUPS_INPUT] = str(config.stash[_GROUPS_DIR] / f"{node.gateway.id}.json")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _GROUPS_DIR in config.stash:
        shutil.rmtree(config.stash[_GROUPS_DIR], ignore_errors=True)


def _group(item: pytest.Item) -> str | None:
    path = Path(str(item.path))
    if item.get_closest_marker(SERIAL) is not None:
        return SERIAL
    if _CONFORMANCE in path.parents:
        return "conformance"
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    if any(d[-1].scope in _SHARED_SCOPES for d in defs if d):
        return path.name
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """xdist worker: write the group of each test that shares (the controller reads it)."""
    target = getattr(config, "workerinput", {}).get(_GROUPS_INPUT)
    if not target:
        return
    groups = {item.nodeid: group for item in items if (group := _group(item)) is not None}
    weights: dict[str, float] = {}
    for item in items:
        mark = item.get_closest_marker(LONG)
        if mark is not None and _group(item) != SERIAL:
            group = groups.get(item.nodeid, item.nodeid)
            seconds = float(mark.args[0]) if mark.args else 60.0
            weights[group] = max(weights.get(group, 0.0), seconds)
    partial = f"{target}.partial"
    Path(partial).write_text(json.dumps({"groups": groups, "long": weights}), encoding="utf-8")
    os.replace(partial, target)  # whole or absent: the controller never reads half a file


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` with the ``serial`` group held back until it can run alone."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return _serial_last_scheduling()(config, log)


def _serial_last_scheduling() -> type:
    from xdist.scheduler import LoadGroupScheduling

    class SerialLastScheduling(LoadGroupScheduling):  # type: ignore[misc]
        """xdist's ``loadgroup`` scheduling with our groups (read from the files the workers
        wrote, see ``pytest_collection_modifyitems``), and the ``serial`` group: once it is the
        only work left, the worker asking for work first keeps it (the *keeper*) and every
        other worker is shut down; when the last of them has left, the keeper gets the group
        (a worker holds its last test until it is sent more, so nothing else runs by then)."""

        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            self.keeper: Any = None
            self._groups: dict[str, str] | None = None
            self._long: dict[str, float] = {}
            self._ordered = False

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                # Called first once every worker has collected, so each has written its file.
                folder = self.config.stash.get(_GROUPS_DIR, None)
                files = sorted(folder.glob("*.json")) if folder is not None else []
                written = json.loads(files[0].read_text("utf-8")) if files else {}
                self._groups = dict(written.get("groups", {}))
                self._long = {k: float(v) for k, v in written.get("long", {}).items()}
            return self._groups.get(nodeid, nodeid)

        def _long_first(self) -> None:
            """Once: the long groups to the front of the queue, longest first (the rest keep
            xdist's order), so the run does not end waiting on a long group begun late."""
            if self._ordered:
                return
            self._ordered = True
            present = [g for g in self._long if g in self.workqueue]
            for group in sorted(present, key=lambda g: self._long[g]):
                self.workqueue.move_to_end(group, last=False)

        def _only_serial_left(self) -> bool:
            return list(self.workqueue) == [SERIAL]

        def _runs_long(self, node: Any) -> bool:
            """True while ``node`` has a test of a long group still to finish."""
            work = self.assigned_work.get(node, {})
            return any(g in self._long and not all(t.values()) for g, t in work.items())

        def _assign_work_unit(self, node: Any) -> None:
            self._long_first()
            if SERIAL in self.workqueue and not self._only_serial_left():
                self.workqueue.move_to_end(SERIAL)
            if self._only_serial_left():
                self._serial_phase(node)
                return
            if self._runs_long(node):
                # A worker runs a test only once it knows the next one: behind a long test
                # goes the smallest unit (xdist keeps those last), not the next long group.
                follower = next(
                    (g for g in reversed(self.workqueue) if g != SERIAL and g not in self._long),
                    None,
                )
                if follower is not None:
                    self.workqueue.move_to_end(follower, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if self._only_serial_left():
                self._serial_phase(node)
                return
            if self._runs_long(node) and self._pending_of(self.assigned_work[node]) >= 2:
                return  # nothing more queues behind a long test than it needs to run
            super()._reschedule(node)

        def _serial_phase(self, node: Any) -> None:
            if self.keeper is None:
                self.keeper = node
            if node is not self.keeper:
                node.shutdown()
                return
            others = [other for other in self.assigned_work if other is not node]
            for other in others:
                if not other.shutting_down:
                    other.shutdown()
            if not others:
                super()._assign_work_unit(node)  # the serial group, the last unit
                node.shutdown()

        def remove_node(self, node: Any) -> str | None:
            crashed: str | None = super().remove_node(node)
            if node is self.keeper:
                self.keeper = None  # crashed: a restarted worker becomes the keeper
            elif self.keeper is not None and self._only_serial_left():
                self._serial_phase(self.keeper)
            return crashed

    return SerialLastScheduling
