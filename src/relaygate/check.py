"""``relaygate check``: run the conformance suite (``pytest conformance``) from anywhere.

In a checkout it runs ``conformance/``; from an installed wheel, the copy shipped inside the
package. Every argument after ``check`` goes to pytest, e.g.::

    relaygate check --relay-url http://relay:3000 --relay-key sk-… --relay-profile one-api
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "conformance_dir", "run", "run_pytest"]


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
    """``pytest <the suite> -p no:cacheprovider <pytest_args>``; pytest's exit code.

    pytest runs in a child process: in this one relaygate is already imported, so pytest could
    not rewrite the plugin's asserts (and says so with a warning).
    """
    import subprocess
    import sys

    suite = conformance_dir()
    command = [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider"]
    return subprocess.call([*command, *pytest_args])
