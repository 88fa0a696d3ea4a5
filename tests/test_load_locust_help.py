"""`locust -f loadtests --help` lists our options (issue #14), and the hook that makes it so
costs other interpreters nothing.

Each test runs a fresh interpreter of this venv: the hook is a ``.pth`` line that runs at
start-up, and Locust's import monkey-patches the process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relaygate.load import loadtests_dir
from relaygate.locust_help import _running_locust
from relaygate.options import LOCUST, options_for

BIN = Path(sys.executable).parent
TIMEOUT_S = 60


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _option_lines(help_text: str, flag: str) -> list[str]:
    """The help's lines that describe ``flag`` (not the usage line that also names it)."""
    return [line for line in help_text.splitlines() if line.strip().startswith(f"{flag} ")]


def _assert_lists_our_options(help_text: str) -> None:
    # argparse wraps long help: the env var is checked on the whole text, once per option
    flat = " ".join(help_text.split())
    missing = [o.flag for o in options_for(LOCUST) if len(_option_lines(help_text, o.flag)) != 1]
    assert not missing, f"not listed exactly once in locust --help: {missing}\n{help_text}"
    for option in options_for(LOCUST):
        assert f"[env {option.env}]" in flat, option.flag


@pytest.mark.parametrize("program", ["script", "module"])
def test_locust_help_lists_our_options_with_env_vars(program: str) -> None:
    command = [BIN / "locust"] if program == "script" else [sys.executable, "-m", "locust"]
    done = _run(*command, "-f", loadtests_dir(), "--help")
    assert done.returncode == 0, done.stderr
    assert "relaygate load scenarios" in done.stdout
    _assert_lists_our_options(done.stdout)
    assert "Error processing line" not in done.stderr  # site.py's words for a failing .pth


@pytest.mark.parametrize(
    ("argv", "orig_argv", "expected"),
    [
        (["/venv/bin/locust", "--help"], ["/venv/bin/python", "/venv/bin/locust", "--help"], True),
        (["locust.exe", "-h"], ["locust.exe", "-h"], True),
        (["-m", "--help"], ["python", "-X", "dev", "-m", "locust", "--help"], True),
        (["-m", "-h"], ["python", "-mlocust", "-h"], True),
        (["-m", "--help"], ["python", "-m", "pytest", "--help"], False),
        (["/venv/bin/pytest", "--help"], ["python", "/venv/bin/pytest", "--help"], False),
        (["-c", "--help"], ["python", "-c", "pass", "--help"], False),
        (["/work/locust/run.py", "-h"], ["python", "/work/locust/run.py", "-h"], False),
    ],
)
def test_the_hook_acts_for_locust_only(
    argv: list[str], orig_argv: list[str], expected: bool
) -> None:
    assert _running_locust(argv, orig_argv) is expected


def test_registration_is_idempotent() -> None:
    """The hook and the locustfile's import both register: the options appear once."""
    script = (
        "import locust, relaygate.load.locust_options as o; "
        "o.listen(locust.events); o.listen(locust.events); "
        "import relaygate.load.locust_plugin; "
        "from locust.argument_parser import get_parser; print(get_parser().format_help())"
    )
    done = _run(sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr
    _assert_lists_our_options(done.stdout)


def _imported(*argv: str) -> set[str]:
    """Which of locust, gevent, relaygate, relaygate.load ``python -c`` has loaded at its end."""
    script = (
        "import sys; print(*sorted({'locust', 'gevent', 'relaygate', 'relaygate.load'} "
        "& set(sys.modules)))"
    )
    done = _run(sys.executable, "-c", script, *argv)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_plain_interpreter_imports_neither_locust_nor_relaygate() -> None:
    assert _imported() == set()


def test_other_programs_help_imports_neither_locust_nor_relaygate_load() -> None:
    """Another program's ``--help`` passes the hook's first check; the second stops it."""
    assert _imported("--help") <= {"relaygate"}
