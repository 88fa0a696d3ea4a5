"""The ``relaygate`` command: help, version, bad input exits 2 with a clear message."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from relaygate.cli import SUBCOMMANDS, main
from relaygate.cli.check import conformance_dir


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaygate", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_every_subcommand() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert "usage: relaygate" in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "invalid choice"),
        (["up", "--relay-port", "x"], "port must be a number"),
        (["reference-relay", "--fault", "no_such_fault", "--port", "0"], "no_such_fault"),
        (["mock-upstream", "--port", "-5"], "port must be within 0-65535"),
        (["reference-relay", "--port", "70000"], "port must be within 0-65535"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    result = _run(*args)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_conformance_dir_found() -> None:
    assert (conformance_dir() / "test_auth.py").is_file()


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        result = _run("mock-upstream", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_passes_options_to_pytest() -> None:
    result = _run("check", "--co", "-q", "-k", "auth and refused")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"\b10/\d+ tests collected", result.stdout), result.stdout[-2000:]


def test_check_carries_a_per_case_timeout_and_maps_exit_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: from an installed wheel (no pytest ini) a hung case hung the run for good.
    import subprocess as sp

    calls: list[list[str]] = []
    codes = iter([4, 2, 1, 0])

    def call(command: list[str]) -> int:
        calls.append(command)
        return next(codes)

    monkeypatch.setattr(sp, "call", call)
    from relaygate.cli.check import CASE_TIMEOUT_S, run_pytest

    assert [run_pytest(["--timeout", "7"]) for _ in range(4)] == [2, 130, 1, 0]
    command = calls[0]
    assert command[command.index("--timeout") + 1] == str(CASE_TIMEOUT_S)
    assert command[-2:] == ["--timeout", "7"]  # the user's, later, wins


def test_check_unreachable_relay_is_one_line_and_exit_2() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _run("check", "--relay-url", f"http://127.0.0.1:{port}", "-q")
    assert result.returncode == 2, result.stdout[-2000:]
    assert "relaygate: cannot reach the relay at http://127.0.0.1:" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert " failed" not in result.stdout


def test_demo_help_shows_defaults_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "exit codes: 0 gate passed; 1 gate failed" in out and "2 unusable input" in out
    for text in ("(default 35)", "(default 120)", "(default 900)", "--allow-skip"):
        assert text in out
