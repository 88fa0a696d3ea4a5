"""Shared test settings: hypothesis is derandomised under CI, so main stays reproducibly green;
locally it explores new examples on every run."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


# ---------------------------------------------------------------------------------------------
# Headless Chromium (Debian's chromium; .ci/run installs it)

import shutil  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)

ChromiumRender = Callable[..., list[str]]


@pytest.fixture
def chromium(tmp_path: Path) -> ChromiumRender:
    """``chromium(page, screenshot, height=2400)`` renders a local page in headless Chromium
    and returns the console messages it logged; skips when Chromium is not installed."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")

    def render(page: Path, screenshot: Path, height: int = 2400) -> list[str]:
        proc = subprocess.run(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                f"--window-size=1280,{height}",
                f"--screenshot={screenshot}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert screenshot.is_file(), proc.stderr[-2000:]
        return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]

    return render
