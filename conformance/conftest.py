"""The conformance suite. Options, fixtures and reports come from the relaygate pytest plugin
(``relaygate.pytest_plugin``, loaded through its ``pytest11`` entry point); the suite adds the
session's :class:`~relaygate.suite.checks.Baseline`, the evidence cases establish first."""

from __future__ import annotations

import pytest

from relaygate.suite.checks import Baseline


@pytest.fixture(scope="session")
def baseline(client, _journal, relay) -> Baseline:
    """What the relay demonstrably does for the funded key (each probe runs once, lazily)."""
    return Baseline(client, _journal, relay.key, relay.secrets)
