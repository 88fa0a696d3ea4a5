"""``relaygate relay`` bad input: clear one-line errors and exit codes, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _relay(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"RELAYGATE_RELAYS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "relaygate", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_list_shows_every_driver_uninstalled(tmp_path: Path) -> None:
    proc = _relay(tmp_path, "list")
    assert proc.returncode == 0, proc.stderr
    for name in ("litellm", "openai-forward", "lm-proxy", "portkey"):
        assert f"{name} " in proc.stdout
    assert proc.stdout.count("not installed") == 4


def test_unknown_relay_and_stopping_what_is_not_running(tmp_path: Path) -> None:
    proc = _relay(tmp_path, "start", "nosuch")
    assert proc.returncode == 1
    assert "unknown relay nosuch; known: litellm" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _relay(tmp_path, "start", "reference")
    assert proc.returncode == 1 and "relaygate up" in proc.stderr
    proc = _relay(tmp_path, "stop", "portkey")
    assert proc.returncode == 1 and "is not running" in proc.stderr
    assert not (tmp_path / "home" / "portkey").exists()  # nothing installed or started
