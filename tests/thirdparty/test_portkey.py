"""Portkey driver, profile and the run-time relay headers it needs (offline: no install, no
network). The gateway routes by per-request headers, one of which holds the mock's port, so
this also covers ``--relay-header`` / ``RELAYGATE_RELAY_HEADERS`` in the suite and the load
client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from stand_in_relays import StandInRelay

from relaygate.load.client import TimingClient
from relaygate.profiles import load_profile
from relaygate.suite.target import parse_header_lines
from relaygate.thirdparty import get_driver
from relaygate.thirdparty.portkey import PortkeyDriver

pytest_plugins = ["pytester"]

UPSTREAM = "http://127.0.0.1:40121"


def test_registered_and_pinned() -> None:
    driver = get_driver("portkey")
    assert isinstance(driver, PortkeyDriver)
    assert driver.version == "1.15.2"
    assert driver.profile == "portkey"


def test_profile_loads_with_documented_deviations() -> None:
    profile = load_profile("portkey")
    assert profile.role == "relay"
    assert profile.admin.adapter == "static"
    assert profile.http.extra_headers == {"x-portkey-provider": "openai"}
    assert not profile.billing.applicable
    assert not profile.rate_limit.relay_limiter
    assert not profile.expect("token_quota_exhausted").applicable
    # Every departure from the faq baseline carries its reason.
    assert profile.deviation("errors.missing_key")
    assert profile.deviation("http.cors")


def test_is_installed_reads_the_package_version(tmp_path: Path) -> None:
    driver = PortkeyDriver()
    assert not driver.is_installed(tmp_path)
    meta = driver.package_dir(tmp_path) / "package.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"name": "@portkey-ai/gateway", "version": "1.15.1"}))
    assert not driver.is_installed(tmp_path)
    meta.write_text(json.dumps({"name": "@portkey-ai/gateway", "version": "1.15.2"}))
    assert driver.is_installed(tmp_path)


def test_prepare_binds_loopback_and_routes_to_the_mock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relaygate.thirdparty.portkey.shutil.which", lambda _name: "/usr/bin/node")
    run_dir = tmp_path / "run"
    plan = PortkeyDriver().prepare(
        tmp_path / "install", run_dir, port=4321, upstream_url=UPSTREAM + "/", upstream_key="sk-up"
    )
    hook = run_dir / "loopback.mjs"
    text = hook.read_text()
    assert "{{" not in text
    assert 'const BIND_HOST = "127.0.0.1";' in text
    assert plan.argv[:3] == ["/usr/bin/node", "--import", hook.resolve().as_uri()]
    assert plan.argv[3].endswith("@portkey-ai/gateway/build/start-server.js")
    assert plan.argv[4:] == ["--port=4321"]  # the only form start-server.js parses
    assert plan.base_url == "http://127.0.0.1:4321/v1"
    assert plan.health_url == "http://127.0.0.1:4321/"
    assert plan.keys == {"FUNDED": "sk-up"}  # BYOK: the client's key is the upstream key
    assert plan.extra_headers == {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": UPSTREAM + "/v1",
    }


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["x-a: 1"], {"x-a": "1"}),
        (["x-a: 1\nx-b: http://h:1/v1\n"], {"x-a": "1", "x-b": "http://h:1/v1"}),
        (["x-a: 1; x-b: 2"], {"x-a": "1", "x-b": "2"}),
        (["x-a: 1", "x-a: 2"], {"x-a": "2"}),
        ([], {}),
    ],
)
def test_parse_header_lines(values: list[str], expected: dict[str, str]) -> None:
    assert parse_header_lines(values) == expected


@pytest.mark.parametrize("bad", ["no colon", ": empty name", "two words: x"])
def test_parse_header_lines_refuses_junk(bad: str) -> None:
    with pytest.raises(ValueError, match="is not 'Name: value'"):
        parse_header_lines([bad])


SHOW_HEADERS = """
def test_headers(client):
    print("HEADERS", sorted(client.extra_headers.items()))
"""


def test_relay_header_option_merges_over_the_profile(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_x=SHOW_HEADERS)
    monkeypatch.setenv("RELAYGATE_RELAY_HEADERS", "x-portkey-custom-host: http://m:1/v1")
    # A relay on 127.0.0.1 that lists its models: the preflight lets the run start.
    with StandInRelay("refuse-401-listing-models") as relay:
        args = ["-s", "--relay-url", relay.url, "--relay-profile", "portkey"]
        result = pytester.runpytest(*args)
        result.stdout.fnmatch_lines(
            [
                "relaygate: extra headers x-portkey-custom-host",
                # the value is masked in the report (a header value can carry a key)
                "*HEADERS [[]('x-portkey-custom-host', *), ('x-portkey-provider', 'openai')[]]",
            ]
        )
        # The CLI replaces the env var; a header named in both wins over the profile's.
        result = pytester.runpytest(*args, "--relay-header", "x-portkey-provider: groq")
        result.stdout.fnmatch_lines(["*HEADERS [[]('x-portkey-provider', *)[]]"])
        assert "x-portkey-custom-host" not in result.stdout.str().split("HEADERS", 1)[1]
        result = pytester.runpytest(*args, "--relay-header", "junk")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*relay header 'junk' is not 'Name: value'*"])


def test_timing_client_sends_its_headers_on_every_request() -> None:
    heads: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                for _ in range(2):
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    heads.append(data.split(b"\r\n\r\n")[0])
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with TimingClient(url, timeout_s=5.0, headers={"x-route": "a", "x-over": "a"}) as client:
            assert client.post_json("/v1/x", {}, {"x-over": "b"}, stream=False).status == 200
            assert client.get("/v1/models").status == 200
        thread.join(5.0)
    assert b"\r\nx-route: a\r\nx-over: b\r\n" in heads[0]
    assert b"\r\nx-route: a\r\nx-over: a" in heads[1]


def test_locust_relay_header_option_and_env_var() -> None:
    code = (
        "import json, locust.argument_parser as ap, relaygate.load.locust_plugin\n"
        "from relaygate.suite.target import parse_header_lines\n"
        "for argv in (['-f', 'x'], ['-f', 'x', '--relay-header', 'x-c: 3']):\n"
        "    print(json.dumps(parse_header_lines(ap.get_parser().parse_args(argv).relay_header)))\n"
    )
    env = {**os.environ, "RELAYGATE_RELAY_HEADERS": "x-a: 1\nx-b: http://h:1/v1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines == [{"x-a": "1", "x-b": "http://h:1/v1"}, {"x-c": "3"}]
