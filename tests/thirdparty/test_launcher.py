"""The relay launcher with a stand-in relay (Python's http.server on loopback): health wait,
state file, stop by PID (also from the state file), and clear errors for a relay that dies or
never becomes healthy. No install, no network beyond 127.0.0.1."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest

from relaygate.thirdparty import launcher as launcher_mod
from relaygate.thirdparty.base import (
    RelayConfiguration,
    RelayDriver,
    RelayPlan,
    parse_row,
    render_template,
)
from relaygate.thirdparty.launcher import RelayLauncher, RelayStartError, read_state, stop_recorded

FUNDED = "sk-relaygate-fake-funded-0123456789"


class FakeDriver(RelayDriver):
    """``mode``: "ok" serves; "dies" exits at once; "mute" never answers its health URL."""

    name: ClassVar[str] = "fake"
    version: ClassVar[str] = "0.0.1"
    profile: ClassVar[str] = "faq"
    description: ClassVar[str] = "http.server standing in for a relay"
    start_timeout_s: ClassVar[float] = 3.0
    mode = "ok"
    installs = 0

    def is_installed(self, install_dir: Path) -> bool:
        return (install_dir / "installed").exists()

    def install(self, install_dir: Path, log: IO[str]) -> None:
        type(self).installs += 1
        (install_dir / "installed").write_text(self.version)

    def prepare(
        self,
        install_dir: Path,
        run_dir: Path,
        *,
        port: int,
        upstream_url: str,
        upstream_key: str,
        configuration: str = "default",
    ) -> RelayPlan:
        if self.mode == "dies":
            argv = [sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"]
        elif self.mode == "mute":
            argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        else:
            argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
        return RelayPlan(
            argv=argv,
            cwd=run_dir,
            base_url=f"http://127.0.0.1:{port}/v1",
            health_url=f"http://127.0.0.1:{port}/",
            keys={"FUNDED": FUNDED},
            load_args=("--rate-limit", "2/1s"),
        )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[FakeDriver]:
    monkeypatch.setattr(launcher_mod, "get_driver", lambda name: FakeDriver())
    monkeypatch.setenv("RELAYGATE_RELAYS_HOME", str(tmp_path / "home"))
    # Through monkeypatch, so that a test's own ``fake.mode = "dies"`` ends with the test: the
    # tests that follow it on the same worker (under xdist, any of them) start a relay that works.
    monkeypatch.setattr(FakeDriver, "mode", "ok")
    monkeypatch.setattr(FakeDriver, "installs", 0)
    return FakeDriver


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_wait_state_and_stop(fake: type[FakeDriver], tmp_path: Path) -> None:
    launcher = RelayLauncher("fake", upstream_url="http://127.0.0.1:9/", upstream_key="sk-up")
    with launcher as running:
        assert running.base_url.endswith("/v1") and running.root_url == running.base_url[:-3]
        assert running.funded_key == FUNDED
        assert running.suite_env() == {"RELAYGATE_KEY_FUNDED": FUNDED}
        state_path = running.run_dir / "relay.json"
        assert stat.S_IMODE(state_path.stat().st_mode) == 0o600  # it holds the keys
        assert json.loads(state_path.read_text())["keys"]["FUNDED"] == FUNDED
        shown: dict[str, Any] = running.to_json()
        assert FUNDED not in json.dumps(shown)  # masked unless show_keys
        pid = running.relay_pid
        assert _alive(pid)
    assert not _alive(pid)
    assert not state_path.exists()
    # installed once, reused the second time
    with RelayLauncher("fake", upstream_url="http://127.0.0.1:9", upstream_key="k"):
        pass
    assert fake.installs == 1


def test_detached_relay_is_stopped_from_the_state_file(fake: type[FakeDriver]) -> None:
    launcher = RelayLauncher("fake", upstream_url="http://127.0.0.1:9", upstream_key="k")
    running = launcher.start()
    launcher.detach()
    state = read_state("fake")
    assert state is not None and state.relay_pid == running.relay_pid
    assert stop_recorded("fake", quiet=True) is True
    assert not _alive(running.relay_pid)
    assert stop_recorded("fake", quiet=True) is False  # nothing left to stop


def test_relay_that_exits_is_reported_with_its_log(fake: type[FakeDriver]) -> None:
    fake.mode = "dies"
    with pytest.raises(RelayStartError, match=r"exited with 3[\s\S]*boom: bad config"):
        RelayLauncher("fake", upstream_url="http://127.0.0.1:9", upstream_key="k").start()


def test_relay_that_never_gets_healthy_times_out_and_is_stopped(fake: type[FakeDriver]) -> None:
    fake.mode = "mute"
    launcher = RelayLauncher("fake", upstream_url="http://127.0.0.1:9", upstream_key="k")
    with pytest.raises(RelayStartError, match="not healthy after 3 s"):
        launcher.start()
    assert launcher.running is None
    assert read_state("fake") is None


def test_render_template_refuses_unfilled_placeholders(tmp_path: Path) -> None:
    source = tmp_path / "in.yaml"
    source.write_text("port: {{PORT}}\nkey: {{KEY}}\n")
    out = render_template(source, tmp_path / "out" / "cfg.yaml", {"PORT": "1234", "KEY": "k"})
    assert out.read_text() == "port: 1234\nkey: k\n"
    with pytest.raises(ValueError, match="unfilled placeholder"):
        render_template(source, tmp_path / "x.yaml", {"PORT": "1"})


def test_stop_never_signals_a_reused_pid(fake: type[FakeDriver]) -> None:
    launcher = RelayLauncher("fake", upstream_url="http://127.0.0.1:9", upstream_key="k")
    running = launcher.start()
    launcher.detach()
    state_path = running.run_dir / "relay.json"
    state = json.loads(state_path.read_text())
    assert state["started"][str(running.relay_pid)]  # recorded at start
    # Pretend the recorded process is gone and its number was reused by another process.
    state["started"][str(running.relay_pid)] = "1"
    state_path.write_text(json.dumps(state))
    stop_recorded("fake", quiet=True)
    assert _alive(running.relay_pid)  # not ours any more as far as the record goes: untouched
    os.killpg(running.relay_pid, 15)


class ConfiguredDriver(FakeDriver):
    """Two documented deployments; ``prepare`` records the one it was asked for."""

    configurations: ClassVar[tuple[RelayConfiguration, ...]] = (
        RelayConfiguration("default", "everything open", "https://example.invalid/docs#start"),
        RelayConfiguration(
            "tight", "per-key limits", "https://example.invalid/docs#lim", profile="strict-openai"
        ),
    )
    prepared: ClassVar[list[str]] = []

    def prepare(self, *args: Any, configuration: str = "default", **kwargs: Any) -> RelayPlan:
        type(self).prepared.append(configuration)
        return super().prepare(*args, configuration=configuration, **kwargs)


def test_a_configuration_is_its_own_row(
    fake: type[FakeDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher_mod, "get_driver", lambda name: ConfiguredDriver())
    ConfiguredDriver.prepared = []
    driver = ConfiguredDriver()
    assert driver.rows() == ["fake", "fake:tight"]
    assert parse_row("fake") == ("fake", "default") and parse_row("fake:tight") == ("fake", "tight")
    tight = RelayLauncher("fake:tight", upstream_url="http://127.0.0.1:9", upstream_key="k")
    with tight as running:
        assert (running.row, running.configuration) == ("fake:tight", "tight")
        assert running.profile == "strict-openai"
        assert running.run_dir.name == "run-tight"
        assert read_state("fake:tight") is not None and read_state("fake") is None
    with RelayLauncher("fake", upstream_url="http://127.0.0.1:9", upstream_key="k") as running:
        assert (running.row, running.profile, running.run_dir.name) == ("fake", "faq", "run")
    assert ConfiguredDriver.prepared == ["tight", "default"]
    with pytest.raises(KeyError, match="no configuration 'nope'; known: default, tight"):
        RelayLauncher("fake:nope", upstream_url="http://127.0.0.1:9", upstream_key="k")


def test_a_driver_without_configurations_has_one_default() -> None:
    driver = FakeDriver()
    (only,) = driver.all_configurations()
    assert only.name == "default" and driver.rows() == ["fake"]
    assert driver.profile_of() == "faq"
