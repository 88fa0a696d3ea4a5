"""No key, admin token or ``--relay-header`` value ever leaves the process whole: not in a
``repr``, a traceback with locals (``pytest -l``), a "Reproduce" curl, conformance.json/.html,
JUnit XML or captured output; and the relay state file is private (0600) from its first byte.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest

from relaygate.keys import mask_key
from relaygate.load.prober import ProbeConfig
from relaygate.mock.config import MockConfig
from relaygate.provision.base import KeyState, ProvisionedKey
from relaygate.provision.oneapi import _User
from relaygate.reference.config import RelayConfig
from relaygate.reference.store import Channel, Token
from relaygate.stack import StackInfo
from relaygate.suite.client import RelayClient
from relaygate.suite.target import RelayOptions, RelayTarget
from relaygate.thirdparty import launcher as launcher_mod
from relaygate.thirdparty.base import RelayDriver, RelayPlan, write_private
from relaygate.thirdparty.launcher import RelayLauncher, RunningRelay

pytest_plugins = ["pytester"]

KEY = "sk-relaygate-test-SECRET-0123456789"
HEADER_VALUE = "pk-SECRET-HEADER-987"
ADMIN = "rg-admin-SECRET-TOKEN-42"  # not key-shaped: only known-secret masking catches it
SECRETS = (KEY, HEADER_VALUE, ADMIN)
CONFORMANCE = Path(__file__).resolve().parent.parent / "conformance"


def _assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} appears in {where}"


# -- reprs --------------------------------------------------------------------------------
def test_every_object_holding_a_key_has_a_masked_repr(tmp_path: Path) -> None:
    headers = {"X-Provider-Key": HEADER_VALUE}
    objects: list[Any] = [
        RelayTarget(
            base_url="http://r",
            key=KEY,
            admin_token=ADMIN,
            upstream_url=None,
            mode="live",
            embedded=False,
            timeout_s=1.0,
            extra_headers=headers,
        ),
        RelayOptions(
            relay_url="http://r",
            relay_key=KEY,
            admin_token=ADMIN,
            profile="faq",
            upstream_url=None,
            report_dir="r",
            timeout_s=1.0,
            fuzz_examples=1,
            faults=(),
            extra_headers=headers,
        ),
        RelayClient("http://r", KEY, extra_headers=headers),
        ProvisionedKey(key=KEY, token_id=1, user_id=1, group="default", state=KeyState.FUNDED),
        StackInfo("http://r", "http://u", ADMIN, KEY, HEADER_VALUE, 1, 1),
        RunningRelay(
            name="x",
            profile="faq",
            version="1",
            base_url="http://r/v1",
            root_url="http://r",
            keys={"FUNDED": KEY},
            admin_token=ADMIN,
            extra_headers=headers,
            load_args=(),
            upstream_url="http://u",
            upstream_key=HEADER_VALUE,
            relay_pid=1,
            mock_pid=None,
            run_dir=tmp_path,
            log_path=tmp_path / "log",
        ),
        RelayPlan(
            argv=["x"],
            cwd=tmp_path,
            base_url="http://r",
            health_url="http://r",
            keys={"FUNDED": KEY},
            env={"PROVIDER_KEY": HEADER_VALUE},
            admin_token=ADMIN,
        ),
        RelayConfig(admin_token=ADMIN, upstream_key=HEADER_VALUE),
        Token(id=1, user_id=1, key=KEY),
        Channel(id=1, name="c", base_url="http://u", key=HEADER_VALUE, models=[], groups=[]),
        _User(id=1, username="u", password=ADMIN, access_token=KEY),
        MockConfig(keys=(HEADER_VALUE,)),
        ProbeConfig(keys=[KEY]),
    ]
    for obj in objects:
        shown = repr(obj)
        _assert_clean(shown, f"repr({type(obj).__name__})")
        assert any(mask_key(s) in shown for s in SECRETS)  # still tells keys apart
    objects[2].close()


# -- everything a run prints or writes ----------------------------------------------------
class _Refuses(BaseHTTPRequestHandler):
    """A relay that lists its models and shows its admin settings to anyone (so the preflight
    lets the run start) and answers 401 to everything else: every case fails, printing its
    traceback."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _refuse(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"error": {"message": "invalid key", "type": "invalid_request_error"}}'
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        open_to_all = {
            "/v1/models": b'{"object": "list", "data": []}',
            "/api/admin/settings": b'{"faults": []}',
        }
        body = open_to_all.get(path)
        if body is None:
            self._refuse()
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse


@pytest.fixture(scope="module")
def refusing_relay() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


LEAKY_CASES = """
import pytest
from relaygate.suite.failures import require

@pytest.mark.case("leak.require", title="require with a curl", area="auth")
def test_require(relay, client):
    key = relay.key
    headers = dict(relay.extra_headers)
    ex = client.chat({"model": "gpt-4o", "messages": []})
    print("sent with", key, headers, relay.admin_token)
    require(ex.status == 200, "served", "HTTP 200", ex.describe(), ex.curl, relay.secrets)

@pytest.mark.case("leak.assert", title="a plain assert", area="auth")
def test_plain_assert(relay, client):
    token = relay.admin_token
    status = client.chat({"model": "gpt-4o"}).status
    assert status == 200, f"{relay!r} {relay.key} {relay.extra_headers} {token}"

def test_raises(relay):
    raise RuntimeError("boom " + relay.key + " " + "".join(relay.extra_headers.values()))
"""


def _run_args(relay_url: str) -> list[str]:
    return [
        "--relay-url", relay_url, "--relay-key", KEY, "--relay-admin-token", ADMIN,
        "--relay-header", f"X-Provider-Key: {HEADER_VALUE}",
        "-l", "--tb=long", "-rA", "--junitxml=junit.xml", "--report-dir", "out",
        "-p", "no:cacheprovider",
    ]  # fmt: skip


def _assert_run_clean(pytester: pytest.Pytester, result: pytest.RunResult) -> None:
    _assert_clean("\n".join(result.outlines + result.errlines), "the terminal output")
    written = [p for p in pytester.path.rglob("*") if p.is_file()]
    assert any(p.name == "junit.xml" for p in written)
    assert any(p.name == "conformance.json" for p in written)
    for path in written:
        if path.suffix in {".xml", ".json", ".html", ".txt", ".log", ".md", ".csv"}:
            _assert_clean(path.read_text(errors="replace"), str(path))


def test_showlocals_tracebacks_and_reports_never_show_a_secret(
    pytester: pytest.Pytester, refusing_relay: str
) -> None:
    pytester.makepyfile(test_leaky=LEAKY_CASES)
    result = pytester.runpytest(*_run_args(refusing_relay))
    result.assert_outcomes(failed=3)
    # the traceback and its locals are there, masked
    result.stdout.fnmatch_lines(
        [
            "*Reproduce: curl*X-Provider-Key: pk-SEC…987*Bearer sk-rel…789*",
            "headers * = {'X-Provider-Key': 'pk-SEC…987'}",
            "token * = 'rg-adm…-42'",
        ]
    )
    _assert_run_clean(pytester, result)


def test_real_cases_against_a_relay_that_refuses_every_key(
    pytester: pytest.Pytester, refusing_relay: str
) -> None:
    modules = [str(CONFORMANCE / "test_auth.py"), str(CONFORMANCE / "test_sdk.py")]
    result = pytester.runpytest(*modules, *_run_args(refusing_relay))
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) > 0  # it did print failures
    _assert_run_clean(pytester, result)


# -- the relay state file -----------------------------------------------------------------
def test_private_files_are_0600_from_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *args: Any, **kw: Any) -> int:
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, *args, **kw)

    monkeypatch.setattr(os, "open", spy)
    old_umask = os.umask(0)  # a umask never widens 0600; the create mode must say it
    try:
        target = tmp_path / "relay.json"
        target.write_text("old, world-readable")
        target.chmod(0o644)
        write_private(target, KEY)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == KEY
    [(created, flags, mode)] = opened
    assert mode == 0o600 and flags & os.O_CREAT and flags & os.O_EXCL
    assert Path(created).parent == tmp_path and not Path(created).exists()


class _FakeDriver(RelayDriver):
    name: ClassVar[str] = "fake"
    version: ClassVar[str] = "0.0.1"
    profile: ClassVar[str] = "faq"
    description: ClassVar[str] = "http.server standing in for a relay"
    start_timeout_s: ClassVar[float] = 5.0

    def is_installed(self, install_dir: Path) -> bool:
        return True

    def install(self, install_dir: Path, log: IO[str]) -> None:
        pass

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
        return RelayPlan(
            argv=[sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
            cwd=run_dir,
            base_url=f"http://127.0.0.1:{port}/v1",
            health_url=f"http://127.0.0.1:{port}/",
            keys={"FUNDED": KEY},
            admin_token=ADMIN,
        )


def test_the_launcher_state_file_is_created_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launcher_mod, "get_driver", lambda name: _FakeDriver())
    monkeypatch.setenv("RELAYGATE_RELAYS_HOME", str(tmp_path / "home"))
    modes: dict[str, int] = {}
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *args: Any, **kw: Any) -> int:
        modes[Path(path).name] = mode
        return real_open(path, flags, mode, *args, **kw)

    monkeypatch.setattr(os, "open", spy)
    old_umask = os.umask(0)
    try:
        with RelayLauncher("fake", upstream_url="http://127.0.0.1:9", upstream_key="k") as run:
            state = run.run_dir / "relay.json"
            assert stat.S_IMODE(state.stat().st_mode) == 0o600
            assert json.loads(state.read_text())["keys"]["FUNDED"] == KEY
    finally:
        os.umask(old_umask)
    assert [mode for name, mode in modes.items() if "relay.json" in name] == [0o600]


# -- end to end: `relaygate demo` against a relay it did not start (slow: ~40-60 s) -------------
@pytest.mark.timeout(240)
def test_demo_end_to_end_writes_no_secret_anywhere(tmp_path: Path) -> None:
    """The demo's suite and short load run, with a key, an admin token and a key-carrying
    ``RELAYGATE_RELAY_HEADERS`` value: no file it wrote and nothing it printed holds one."""
    from relaygate.stack import EmbeddedStack

    out = tmp_path / "reports"
    env = {**os.environ, "RELAYGATE_RELAY_HEADERS": f"X-Provider-Key: {HEADER_VALUE}"}
    with EmbeddedStack() as info:
        argv = [
            sys.executable, "-m", "relaygate", "demo", "--report-dir", str(out),
            "--relay-url", info.relay_url + "/v1", "--relay-key", info.relay_key,
            "--relay-admin-token", info.admin_token, "--upstream-url", info.upstream_url,
            "--load-seconds", "4", "--users", "2",
        ]  # fmt: skip
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=220,
            check=False,
            env=env,
        )
    secrets = (info.relay_key, info.admin_token, info.upstream_key, HEADER_VALUE)
    # (the gate's verdict may vary on a loaded machine: the self-check; not what this tests)
    written = [p for p in out.rglob("*") if p.is_file()]
    expected = {"conformance.json", "index.html", "load-summary.json", "suite.log", "load.log"}
    assert expected <= {p.name for p in written}, proc.stdout[-3000:] + proc.stderr[-3000:]
    conformance = json.loads((out / "conformance.json").read_text())
    assert conformance["summary"]["failed"] == 0  # the extra header broke nothing
    for where, text in [
        ("stdout", proc.stdout),
        ("stderr", proc.stderr),
        *((str(p), p.read_bytes().decode("utf-8", "replace")) for p in written),
    ]:
        for secret in secrets:
            assert secret not in text, f"{mask_key(secret)} appears in {where}"
