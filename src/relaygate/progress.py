"""A pytest plugin that reports progress to a file, for ``relaygate demo``'s progress display.

Loaded with ``-p relaygate.progress`` and ``RELAYGATE_PROGRESS_FILE=<path>``: one line per
event, ``total N`` after collection and ``<outcome> <nodeid>`` per finished test (outcome one
of passed, failed, skipped, xfailed). Without the variable it registers nothing.
"""

from __future__ import annotations

import os
from typing import IO

import pytest


class _Progress:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.out.write(f"total {len(session.items)}\n")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # One line per test: its call, or the setup/teardown that failed or skipped it.
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
            self.out.write(f"{outcome} {report.nodeid}\n")
        elif report.when == "teardown" and report.failed:
            self.out.write(f"failed {report.nodeid}\n")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.out.close()


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get("RELAYGATE_PROGRESS_FILE")
    if path:
        out = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed at unconfigure
        config.pluginmanager.register(_Progress(out), "relaygate-progress")
