"""The one-api and new-api Compose recipes (fixtures/relays/{one-api,new-api}/, compose-gate.sh)
without Docker: they run the images of the tags the profiles were read at, and the suite service
ends with the gate's verdict. tests/test_examples.py lints them and checks their wiring."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RELAYS = ("one-api", "new-api")


def _pinned(relay: str) -> dict[str, str]:
    path = ROOT / "fixtures" / "relays" / relay / "recorded" / "pairs.json"
    doc = json.loads(path.read_text())
    return {"tag": doc["tag"], "image": doc["image"], "profile": doc["profile"]}


@pytest.mark.parametrize("relay", RELAYS)
def test_compose_runs_the_pinned_image(relay: str) -> None:
    pinned = _pinned(relay)
    assert pinned["image"].endswith(":" + pinned["tag"])
    path = ROOT / "fixtures" / "relays" / relay / "docker-compose.yml"
    services = yaml.safe_load(path.read_text())["services"]
    assert services["relay"]["image"] == pinned["image"]
    assert services["suite"]["environment"]["RELAY_KIND"] == pinned["profile"]
    # the harness containers can install the wheel the documented command builds
    for name in ("upstream", "suite"):
        assert "../../../dist:/dist:ro" in services[name]["volumes"], name
    assert "pip wheel --no-deps -w dist ." in path.read_text()


def test_compose_docs_give_the_whole_command() -> None:
    text = (ROOT / "docs" / "relays" / "one-api-new-api.md").read_text()
    for line in (
        "python -m pip wheel --no-deps -w dist .",
        "HARNESS_PACKAGE=/dist/$(cd dist && ls relaygate-*.whl) \\",
        "docker compose -f fixtures/relays/one-api/docker-compose.yml up --exit-code-from suite",
    ):
        assert line in text, line
    for relay in RELAYS:
        assert f"`{_pinned(relay)['image']}`" in text


def test_compose_gate_exits_with_the_gates_verdict(tmp_path: Path) -> None:
    """The suite service's exit code is the gate's (it used to end in `| tee`, always 0)."""
    script = (ROOT / "fixtures" / "relays" / "compose-gate.sh").read_text()
    gate = script[script.index("relaygate gate") :]
    fake = tmp_path / "relaygate"
    fake.write_text("#!/bin/sh\necho GATE FAIL\nexit 3\n")
    fake.chmod(0o755)
    reports = tmp_path / "reports"
    reports.mkdir()
    tail = "set -eu\nif " + gate.replace("/reports/", f"{reports}/")
    result = subprocess.run(
        ["sh", "-c", tail],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 3 and "GATE FAIL" in result.stdout, result
