"""Repository-wide test settings (not shipped: the suite's own conftest is conformance/conftest.py).

The README's test command runs on four pytest-xdist workers (``pytest -n 4``): most tests wait
on real servers, load runs and timeouts far more than they compute, so four workers keep two
cores busy. Tests are spread one by one, except where sharing matters:

- the conformance suite's cases stay together on one worker: one embedded stack, one session;
- tests that use a module-scoped fixture (an expensive demo run, a stack, a whole matrix) stay
  with the other tests of their module, so the fixture is built once;
- the two detection matrices (each four suite sessions at once) share one worker, one after the
  other: side by side they starved each other and everything else of the two cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_CONFORMANCE = Path(__file__).parent / "conformance"
_SHARED_SCOPES = {"module", "package", "class"}
_MATRICES = {"test_detection_matrix.py", "test_live_detection_matrix.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """``-n N`` alone distributes by the groups below (``--dist loadgroup``)."""
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", "no") == "no":
        option.dist = "loadgroup"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if getattr(config.option, "dist", "no") != "loadgroup":
        return
    for item in items:
        path = Path(str(item.path))
        if _CONFORMANCE in path.parents:
            item.add_marker(pytest.mark.xdist_group("conformance"))
            continue
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if path.name in _MATRICES:
            item.add_marker(pytest.mark.xdist_group("detection-matrices"))
        elif any(d[-1].scope in _SHARED_SCOPES for d in defs if d):
            item.add_marker(pytest.mark.xdist_group(path.name))
