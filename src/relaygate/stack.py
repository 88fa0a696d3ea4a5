"""The embedded stack: mock upstream + reference relay on loopback, provisioned and ready.

Each server runs in its own process (``python -m relaygate …``, a :class:`ChildServer`) so that
the relay's work never disturbs the mock's timing, and both stop with the stack. Used by
``relaygate up`` (:mod:`relaygate.cli.up`), by the pytest plugin when no ``--relay-url`` is given,
and by the locustfiles when no ``--host`` is; ``relaygate bench`` starts its mock upstream as a
:class:`ChildServer` too.

Example::

    with EmbeddedStack() as info:
        print(info.relay_url, mask_key(info.relay_key))
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from relaygate.keys import masked_repr

__all__ = [
    "DEFAULT_MODELS",
    "LOOPBACK",
    "ChildServer",
    "EmbeddedStack",
    "StackError",
    "StackInfo",
]

DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-3.5-turbo")
QUOTA_PER_USD = 500_000
LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A server of the embedded stack did not start or could not be provisioned."""


@masked_repr("admin_token", "relay_key", "upstream_key")
@dataclasses.dataclass(frozen=True)
class StackInfo:
    """Where the embedded stack listens and the credentials it provisioned."""

    relay_url: str
    upstream_url: str
    admin_token: str
    relay_key: str
    upstream_key: str
    user_id: int
    token_id: int

    def public(self) -> dict[str, str]:
        """The ``relaygate up --json`` line."""
        return {
            "relay_url": self.relay_url,
            "upstream_url": self.upstream_url,
            "admin_token": self.admin_token,
            "relay_key": self.relay_key,
        }


class ChildServer:
    """One ``python -m relaygate <argv>`` child that prints a JSON ready line once it listens.

    Its stderr goes to ``<log_dir>/<name>.log``; :meth:`wait_ready` returns the ready line (or
    raises :class:`StackError` with the log's tail) and :meth:`stop` ends it (SIGTERM, then
    SIGKILL after ``timeout_s``).
    """

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relaygate", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,
        )
        self.ready: dict[str, Any] | None = None
        self._ready_event = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import orjson

        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if self.ready is None:
                with contextlib.suppress(orjson.JSONDecodeError):
                    line = orjson.loads(raw)
                    if isinstance(line, dict) and line.get("ready"):
                        self.ready = line
                        self._ready_event.set()
        self._ready_event.set()

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        self._ready_event.wait(timeout_s)
        if self.ready is None:
            code = self.proc.poll()
            state = f"exited with {code}" if code is not None else f"not ready in {timeout_s} s"
            raise StackError(f"{self.name} {state}; its log ({self.log_path}):\n{self.log_tail()}")
        return self.ready

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class EmbeddedStack:
    """Start the mock upstream and the reference relay, provision an admin token and a key.

    ``faults`` are reference-relay fault switches (each breaks one FAQ rule); ``rate_limit``
    is the relay's per-key limit (``"N/Ws"``), off by default.
    """

    def __init__(
        self,
        *,
        faults: Sequence[str] = (),
        rate_limit: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        key_quota: int = 100 * QUOTA_PER_USD,
        user_quota: int = 10_000 * QUOTA_PER_USD,
        relay_port: int = 0,
        upstream_port: int = 0,
        startup_timeout_s: float = 30.0,
        relay_args: Sequence[str] = (),
        mock_args: Sequence[str] = (),
    ) -> None:
        self.faults = tuple(faults)
        self.rate_limit = rate_limit
        self.models = tuple(models)
        self.key_quota = key_quota
        self.user_quota = user_quota
        self.relay_port = relay_port
        self.upstream_port = upstream_port
        self.startup_timeout_s = startup_timeout_s
        self.relay_args = tuple(relay_args)
        self.mock_args = tuple(mock_args)
        self.info: StackInfo | None = None
        self._servers: list[ChildServer] = []
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> StackInfo:
        if self.info is not None:
            return self.info
        self._log_dir = tempfile.TemporaryDirectory(prefix="relaygate-stack-")
        log_dir = Path(self._log_dir.name)
        upstream_key = "sk-upstream-" + secrets.token_hex(16)
        admin_token = "rg-admin-" + secrets.token_hex(16)
        try:
            mock = ChildServer(
                "mock-upstream",
                [
                    "mock-upstream",
                    "--host", LOOPBACK,
                    "--port", str(self.upstream_port),
                    "--key", upstream_key,
                    *self.mock_args,
                ],
                log_dir,
            )  # fmt: skip
            self._servers.append(mock)
            relay_argv = [
                "reference-relay",
                "--host", LOOPBACK,
                "--port", str(self.relay_port),
                "--admin-token", admin_token,
                *self.relay_args,
            ]  # fmt: skip
            for fault in self.faults:
                relay_argv += ["--fault", fault]
            if self.rate_limit:
                relay_argv += ["--rate-limit", self.rate_limit]
            relay = ChildServer("reference-relay", relay_argv, log_dir)
            self._servers.append(relay)
            upstream_url = str(mock.wait_ready(self.startup_timeout_s)["url"])
            relay_url = str(relay.wait_ready(self.startup_timeout_s)["url"])
            self.info = self._provision(relay_url, upstream_url, admin_token, upstream_key)
        except BaseException:
            self.stop()
            raise
        return self.info

    def exited(self) -> str | None:
        """``<name> exited (<code>):`` and its log's tail for a server that stopped; else None."""
        for server in self._servers:
            code = server.proc.poll()
            if code is not None:
                return f"{server.name} exited ({code}):\n{server.log_tail()}"
        return None

    def stop(self) -> None:
        for server in reversed(self._servers):
            server.stop()
        self._servers.clear()
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
        self.info = None

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- provisioning ----------------------------------------------------------------------
    def admin(self, method: str, path: str, json: Any = None) -> Any:
        """Call the reference relay's admin API; raise :class:`StackError` on failure."""

        info = self.info
        if info is None:
            raise StackError("the stack is not started")
        return _admin_call(info.relay_url, info.admin_token, method, path, json)

    def new_key(
        self,
        quota: int | None = None,
        rate_limit: str | None = None,
        models: Sequence[str] | None = None,
    ) -> str:
        """Provision another funded key for the stack's user (e.g. fairness across keys)."""
        info = self.info
        if info is None:
            raise StackError("the stack is not started")
        token = self.admin(
            "POST",
            "/api/admin/tokens",
            {
                "user_id": info.user_id,
                "name": "relaygate-extra",
                "remain_quota": self.key_quota if quota is None else quota,
                "rate_limit": rate_limit,
                "models": list(models) if models is not None else None,
            },
        )
        return str(token["key"])

    def _provision(
        self, relay_url: str, upstream_url: str, admin_token: str, upstream_key: str
    ) -> StackInfo:
        def call(method: str, path: str, body: Any = None) -> Any:
            return _admin_call(relay_url, admin_token, method, path, body)

        call(
            "POST",
            "/api/admin/channels",
            {
                "name": "mock-upstream",
                "base_url": upstream_url,
                "key": upstream_key,
                "models": list(self.models),
                "groups": ["default"],
                "priority": 0,
            },
        )
        user = call(
            "POST",
            "/api/admin/users",
            {"username": "relaygate", "group": "default", "quota": self.user_quota},
        )
        token = call(
            "POST",
            "/api/admin/tokens",
            {"user_id": user["id"], "name": "relaygate-funded", "remain_quota": self.key_quota},
        )
        return StackInfo(
            relay_url=relay_url,
            upstream_url=upstream_url,
            admin_token=admin_token,
            relay_key=str(token["key"]),
            upstream_key=upstream_key,
            user_id=int(user["id"]),
            token_id=int(token["id"]),
        )


def _admin_call(relay_url: str, admin_token: str, method: str, path: str, body: Any) -> Any:
    import httpx

    from relaygate.bounded import bounded_client

    try:
        with bounded_client(timeout_s=10.0, max_bytes=1 << 20, secrets=[admin_token]) as http:
            response = http.request(
                method,
                relay_url + path,
                json=body,
                headers={"Authorization": f"Bearer {admin_token}"},
            )
        if response.status_code >= 400:
            raise StackError(
                f"admin call {method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else None
    except (httpx.HTTPError, ValueError) as exc:
        raise StackError(f"admin call {method} {path} failed: {exc}") from exc
