"""``relaygate check``: run the conformance suite (``pytest conformance``) from anywhere.

In a checkout it runs ``conformance/``; from an installed wheel, the copy shipped inside the
package. Every argument after ``check`` goes to pytest, e.g.::

    relaygate check --relay-url http://relay:3000 --relay-key sk-… --relay-profile one-api

Each case gets a timeout of ``CASE_TIMEOUT_S`` (120 s; ``--timeout N`` overrides it): an
installed wheel has no pytest ini to carry one. Before the first case the plugin checks that the
relay answers and accepts the key (see :mod:`relaygate.preflight`).

Exit codes: 0 every case passed, 1 a case failed, 2 unusable input (a bad option, unknown
profile, unreachable relay, refused key: one line says which), 130 interrupted; any other
code is pytest's own (3 internal error, 5 no case collected).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["CASE_TIMEOUT_S", "add_arguments", "conformance_dir", "run", "run_pytest"]

CASE_TIMEOUT_S = 120


def conformance_dir() -> Path:
    """The conformance suite's folder: the checkout's, else the wheel's bundled copy."""
    from relaygate.shipped import shipped_dir

    return shipped_dir("conformance", "_conformance", "conftest.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pytest_args",
        nargs=argparse.REMAINDER,
        help="passed to pytest (--relay-url, --relay-key, --relay-profile, --junitxml, -k, …)",
    )


def run(args: argparse.Namespace) -> int:
    return run_pytest(list(args.pytest_args))


def run_pytest(pytest_args: list[str]) -> int:
    """``pytest <the suite> -p no:cacheprovider --timeout 120 <pytest_args>``; the exit code
    (pytest's, with its usage error 4 as our 2 and interrupted as 130).

    pytest runs in a child process: in this one relaygate is already imported, so pytest could
    not rewrite the plugin's asserts (and says so with a warning).
    """
    import subprocess
    import sys

    import pytest

    suite = conformance_dir()
    command = [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider"]
    # First, so that a --timeout among pytest_args wins.
    command += ["--timeout", str(CASE_TIMEOUT_S)]
    code = subprocess.call([*command, *pytest_args])
    ours = {int(pytest.ExitCode.USAGE_ERROR): 2, int(pytest.ExitCode.INTERRUPTED): 130}
    return ours.get(code, code)
