"""Start a third-party relay against the mock upstream, wait for health, stop it by PID.

``RelayLauncher`` is the one place that owns the processes: the mock upstream (unless an
upstream URL is given) and the relay, each in its own session (process group) so that stopping
also ends whatever the relay spawned (workers, node children). ``relay.json`` in the run dir
records both PIDs, the URLs and the keys, so ``relaygate relay stop <name>`` works from another
shell; the file is private (0600) because it holds the keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from relaygate.keys import mask_secrets, masked_repr
from relaygate.thirdparty import get_driver
from relaygate.thirdparty.base import (
    DEFAULT_CONFIGURATION,
    LOOPBACK,
    InstallError,
    RelayDriver,
    parse_row,
    relays_home,
    write_private,
)

__all__ = ["RelayLauncher", "RelayStartError", "RunningRelay", "free_port", "stop_recorded"]

STATE_FILE = "relay.json"
# One health probe: its total deadline and byte cap (a health answer is a few kilobytes).
HEALTH_PROBE_TIMEOUT_S = 2.0
HEALTH_MAX_BYTES = 1024 * 1024


class RelayStartError(RuntimeError):
    """The relay (or the mock upstream) did not come up; the message carries the log tail."""


def free_port() -> int:
    """A free TCP port on loopback (bound and released; the OS does not hand it out again soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (``/proc/<pid>/stat`` field 22), or None.

    Recorded next to each PID so that a later ``relay stop`` never signals a process that
    merely reuses the number of one that is long gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid …": comm may hold spaces, so split after its closing paren.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _stop_group(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left after the timeout."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _alive(pid):
                return
            time.sleep(0.05)


@masked_repr("keys", "admin_token", "extra_headers", "upstream_key")
@dataclasses.dataclass(frozen=True)
class RunningRelay:
    """A started relay: where it listens, its keys, and where its mock upstream is."""

    name: str
    profile: str
    version: str
    base_url: str
    root_url: str
    keys: Mapping[str, str]
    admin_token: str | None
    extra_headers: Mapping[str, str]
    load_args: tuple[str, ...]
    upstream_url: str
    upstream_key: str
    relay_pid: int
    mock_pid: int | None
    run_dir: Path
    log_path: Path
    # pid -> its start time when recorded (see process_start)
    started: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: the driver configuration it runs (:class:`~relaygate.thirdparty.base.RelayConfiguration`)
    configuration: str = DEFAULT_CONFIGURATION
    #: its matrix row: ``name``, or ``name:configuration`` for a configuration but the first
    row: str = ""

    @property
    def funded_key(self) -> str:
        return self.keys["FUNDED"]

    def suite_env(self) -> dict[str, str]:
        """``RELAYGATE_KEY_<STATE>`` for every configured key (static provisioning)."""
        return {f"RELAYGATE_KEY_{state}": key for state, key in self.keys.items()}

    def to_json(self, *, show_keys: bool = False) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["run_dir"] = str(self.run_dir)
        data["log_path"] = str(self.log_path)
        data["load_args"] = list(self.load_args)
        if not show_keys:
            masked = mask_secrets(json.dumps(data, ensure_ascii=False), *self._secrets())
            loaded: dict[str, Any] = json.loads(masked)
            return loaded
        return data

    def _secrets(self) -> list[str]:
        found = [*self.keys.values(), self.upstream_key]
        if self.admin_token:
            found.append(self.admin_token)
        return found

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunningRelay:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["run_dir"] = Path(values["run_dir"])
        values["log_path"] = Path(values["log_path"])
        values["load_args"] = tuple(values.get("load_args", ()))
        values.setdefault("row", values.get("name", ""))
        return cls(**values)


def run_dir_of(row: str, home: Path | None = None) -> Path:
    """Where a row runs: ``<home>/<relay>/run``, or ``run-<configuration>`` for a named one."""
    name, configuration = parse_row(row)
    folder = "run" if ":" not in row else f"run-{configuration}"
    return (home or relays_home()) / name / folder


def install_dir_of(name: str, home: Path | None = None) -> Path:
    return (home or relays_home()) / name / "install"


def ensure_installed(driver: RelayDriver, home: Path | None = None, *, out: IO[str]) -> Path:
    """Install the driver's pinned version unless it is already there; the install dir."""
    install_dir = install_dir_of(driver.name, home)
    if driver.is_installed(install_dir):
        return install_dir
    install_dir.mkdir(parents=True, exist_ok=True)
    log_path = install_dir.parent / "install.log"
    out.write(f"relaygate: installing {driver.name} {driver.version} into {install_dir} …\n")
    out.flush()
    started = time.monotonic()
    with log_path.open("w") as log:
        try:
            driver.install(install_dir, log)
        except InstallError as exc:
            raise InstallError(f"{driver.name}: {exc}\n{_log_tail(log_path)}") from None
    out.write(f"relaygate: {driver.name} installed in {time.monotonic() - started:.0f} s\n")
    return install_dir


class RelayLauncher:
    """Context manager: the mock upstream (unless given) + the relay, started and health-checked.

    ``detach=True`` leaves both running after this object is gone (``relaygate relay start``);
    :func:`stop_recorded` stops them later from the state file.
    """

    def __init__(
        self,
        name: str,
        *,
        home: Path | None = None,
        port: int = 0,
        upstream_url: str | None = None,
        upstream_key: str | None = None,
        mock_args: tuple[str, ...] = (),
        out: IO[str] | None = None,
    ) -> None:
        driver_name, self.configuration = parse_row(name)
        self.driver = get_driver(driver_name)
        self.driver.configuration(self.configuration)  # KeyError: no such configuration
        self.row = self.driver.row(self.configuration)
        self.home = home or relays_home()
        self.port = port
        self.upstream_url = upstream_url.rstrip("/") if upstream_url else None
        self.upstream_key = upstream_key
        self.mock_args = mock_args
        self.out = out or sys.stderr
        self.running: RunningRelay | None = None
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- processes --------------------------------------------------------------------------
    def _spawn(
        self, argv: list[str], log_path: Path, *, cwd: Path, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def _start_mock(self, run_dir: Path) -> tuple[str, str, int]:
        key = self.upstream_key or "sk-relaygate-upstream-" + secrets.token_hex(12)
        port = free_port()
        log_path = run_dir / "mock-upstream.log"
        argv = [sys.executable, "-m", "relaygate", "mock-upstream"]
        argv += ["--host", LOOPBACK, "--port", str(port), "--key", key, *self.mock_args]
        proc = self._spawn(argv, log_path, cwd=run_dir, env={})
        url = f"http://{LOOPBACK}:{port}"
        self._wait_http(proc, f"{url}/v1/models", log_path, "mock upstream", 30.0, key)
        return url, key, proc.pid

    def _wait_http(
        self,
        proc: subprocess.Popen[bytes],
        url: str,
        log_path: Path,
        what: str,
        timeout_s: float,
        key: str | None = None,
    ) -> None:
        import httpx

        from relaygate.bounded import ByteCapExceeded, DeadlineExceeded, bounded_client

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        # Each probe is bounded too: a health URL that drips or floods must not outlive the wait.
        probe = bounded_client(timeout_s=HEALTH_PROBE_TIMEOUT_S, max_bytes=HEALTH_MAX_BYTES)
        with probe as http:
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    raise RelayStartError(
                        f"{what} exited with {code} before it was healthy; its log ({log_path}):\n"
                        + _log_tail(log_path)
                    )
                try:
                    resp = http.get(url, headers=headers)
                    if resp.status_code < 300:
                        return
                    last = f"HTTP {resp.status_code}"
                except (DeadlineExceeded, ByteCapExceeded) as exc:
                    last = str(exc)
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.25)
        raise RelayStartError(
            f"{what} not healthy after {timeout_s:g} s ({url}: {last}); its log ({log_path}):\n"
            + _log_tail(log_path)
        )

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> RunningRelay:
        if self.running is not None:
            return self.running
        driver = self.driver
        install_dir = ensure_installed(driver, self.home, out=self.out)
        run_dir = run_dir_of(self.row, self.home)
        stop_recorded(self.row, self.home, quiet=True)  # a stale run from before
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob("*.log"):
            stale.unlink()
        try:
            mock_pid: int | None = None
            if self.upstream_url is None:
                upstream_url, upstream_key, mock_pid = self._start_mock(run_dir)
            else:
                upstream_url = self.upstream_url
                upstream_key = self.upstream_key or ""
            port = self.port or free_port()
            plan = driver.prepare(
                install_dir,
                run_dir,
                port=port,
                upstream_url=upstream_url,
                upstream_key=upstream_key,
                configuration=self.configuration,
            )
            if "FUNDED" not in plan.keys:
                raise RelayStartError(f"driver {driver.name} configured no FUNDED key")
            log_path = run_dir / "relay.log"
            self.out.write(f"relaygate: starting {self.row} {driver.version} on port {port}\n")
            self.out.flush()
            proc = self._spawn(list(plan.argv), log_path, cwd=plan.cwd, env=plan.env)
            self._wait_http(proc, plan.health_url, log_path, driver.name, driver.start_timeout_s)
            root = plan.base_url.rstrip("/")
            root = root[: -len("/v1")] if root.endswith("/v1") else root
            self.running = RunningRelay(
                name=driver.name,
                profile=driver.profile_of(self.configuration),
                version=driver.version,
                base_url=plan.base_url,
                root_url=root,
                keys=dict(plan.keys),
                admin_token=plan.admin_token,
                extra_headers=dict(plan.extra_headers),
                load_args=tuple(plan.load_args),
                upstream_url=upstream_url,
                upstream_key=upstream_key,
                relay_pid=proc.pid,
                mock_pid=mock_pid,
                run_dir=run_dir,
                log_path=log_path,
                started={
                    str(pid): start
                    for pid in (proc.pid, mock_pid)
                    if pid is not None and (start := process_start(pid)) is not None
                },
                configuration=self.configuration,
                row=self.row,
            )
            state = json.dumps(self.running.to_json(show_keys=True), indent=2)
            write_private(run_dir / STATE_FILE, state)
        except BaseException:
            self.stop()
            raise
        return self.running

    def stop(self) -> None:
        for proc in reversed(self._procs):
            _stop_group(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
        self._procs.clear()
        if self.running is not None:
            (self.running.run_dir / STATE_FILE).unlink(missing_ok=True)
        self.running = None

    def detach(self) -> None:
        """Forget the processes: they keep running; ``stop_recorded`` ends them."""
        for proc in self._procs:
            # Popen warns when an object of a still-running child is collected; this child is
            # meant to outlive us (stop_recorded reaps it if we are still around).
            proc.returncode = proc.returncode if proc.returncode is not None else 0
        self._procs.clear()

    def __enter__(self) -> RunningRelay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def read_state(row: str, home: Path | None = None) -> RunningRelay | None:
    path = run_dir_of(row, home) / STATE_FILE
    try:
        return RunningRelay.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop_recorded(row: str, home: Path | None = None, *, quiet: bool = False) -> bool:
    """Stop the relay (and its mock) recorded in ``relay.json``; False when none was running."""
    state = read_state(row, home)
    if state is None:
        return False
    for pid in (state.relay_pid, state.mock_pid):
        if pid is None or not _alive(pid):
            continue
        recorded = state.started.get(str(pid))
        if recorded is not None and process_start(pid) != recorded:
            continue  # the number now belongs to another process: not ours to stop
        _stop_group(pid)
    (state.run_dir / STATE_FILE).unlink(missing_ok=True)
    if not quiet:
        print(f"relaygate: stopped {row} (pid {state.relay_pid})", file=sys.stderr)
    return True
