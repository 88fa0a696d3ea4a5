"""Portkey driver, profile and the run-time relay headers it needs (offline: no install, no
network). The gateway routes by per-request headers, one of which holds the mock's port, so
this also covers ``--relay-header`` / ``RELAYGATE_RELAY_HEADERS`` in the suite and the load
client."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from byok_stand_in import UPSTREAM_KEY as BYOK_KEY
from byok_stand_in import ByokStandIn
from stand_in_relays import StandInRelay

from relaygate.load.client import TimingClient
from relaygate.profiles import load_profile
from relaygate.suite.target import parse_header_lines
from relaygate.thirdparty import get_driver
from relaygate.thirdparty.portkey import PortkeyDriver

pytest_plugins = ["pytester"]

UPSTREAM = "http://127.0.0.1:40121"
ROOT = Path(__file__).resolve().parents[2]


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
    assert profile.auth.client_key_is_provider_key
    # Every departure from the faq baseline carries its reason and Portkey's documentation
    # (issue #13, 3): nothing rests on a source reference alone.
    assert profile.deviations
    assert set(profile.deviation_docs) == set(profile.deviations)
    for doc in profile.deviation_docs.values():
        assert doc.startswith(("https://portkey.ai/docs/", "https://github.com/Portkey-AI/"))
    assert "docs: https://portkey.ai/docs/" in (profile.deviation("errors.missing_key") or "")
    # Undocumented behaviour is no deviation: those cases fail, docs/relays/portkey.md has them.
    for path in ("http.cors", "http.body_limit_status", "auth.bearer_case_insensitive"):
        assert profile.deviation(path) is None
    assert profile.expect("body_too_large").applicable


def _write_package(install: Path, package: str, version: str) -> None:
    meta = install / "node_modules" / package / "package.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"name": package, "version": version}))


def test_is_installed_reads_the_package_and_pinned_dependency_versions(tmp_path: Path) -> None:
    driver = PortkeyDriver()
    assert not driver.is_installed(tmp_path)
    pins = driver.pins()
    # The release lockfile's versions (Portkey-AI/gateway v1.15.2 package-lock.json).
    assert pins["@portkey-ai/gateway"] == "1.15.2"
    assert pins["@hono/node-server"] == "1.13.5"
    assert pins["hono"] == "4.9.7"
    for package, version in pins.items():
        _write_package(tmp_path, package, version)
    assert driver.is_installed(tmp_path)
    # What a fresh `npx` resolves today: every stream is a 500 with it (issue #1389).
    _write_package(tmp_path, "@hono/node-server", "1.19.19")
    assert not driver.is_installed(tmp_path)
    _write_package(tmp_path, "@hono/node-server", "1.13.5")
    _write_package(tmp_path, "@portkey-ai/gateway", "1.15.1")
    assert not driver.is_installed(tmp_path)


def test_install_writes_the_pinning_manifest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def fake_npm(install_dir: Path, packages: list[str], log: object) -> None:
        seen["manifest"] = json.loads((install_dir / "package.json").read_text())
        seen["packages"] = packages
        for package, version in PortkeyDriver().pins().items():
            _write_package(install_dir, package, version)

    monkeypatch.setattr("relaygate.thirdparty.portkey.npm_install", fake_npm)
    (tmp_path / "package.json").write_text('{"name": "stale", "private": true}')
    PortkeyDriver().install(tmp_path, io.StringIO())
    manifest = seen["manifest"]
    assert isinstance(manifest, dict)
    assert manifest["overrides"]["@hono/node-server"] == "1.13.5"
    assert seen["packages"] == ["@portkey-ai/gateway@1.15.2"]


def test_configurations_cite_portkeys_docs() -> None:
    driver = PortkeyDriver()
    names = [c.name for c in driver.configurations]
    assert names == ["default", "headless"]
    for configuration in driver.configurations:
        assert configuration.docs.startswith("https://github.com/Portkey-AI/gateway/blob/")
        assert "README.md#" in configuration.docs and " § " in configuration.docs
    assert "/public/" in driver.configuration("default").docs
    assert "--headless" in driver.configuration("headless").docs


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
    assert plan.argv[4:] == ["--port=4321"]  # the only form start-server.js parses; console on
    assert plan.base_url == "http://127.0.0.1:4321/v1"
    assert plan.health_url == "http://127.0.0.1:4321/"
    assert plan.keys == {"FUNDED": "sk-up"}  # BYOK: the client's key is the upstream key
    assert plan.extra_headers == {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": UPSTREAM + "/v1",
    }


def test_prepare_headless_drops_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relaygate.thirdparty.portkey.shutil.which", lambda _name: "/usr/bin/node")
    plan = PortkeyDriver().prepare(
        tmp_path / "install",
        tmp_path / "run",
        port=4321,
        upstream_url=UPSTREAM,
        upstream_key="sk-up",
        configuration="headless",
    )
    assert plan.argv[4:] == ["--headless", "--port=4321"]
    assert plan.keys == {"FUNDED": "sk-up"}


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


BYOK_NODES = [
    "conformance/test_security.py::test_client_key_not_forwarded",
    "conformance/test_security.py::test_query_key_rejected",
    "conformance/test_models.py::test_allow_list",
    "conformance/test_models.py::test_models_list_exact",
    "conformance/test_sdk.py::test_permission_denied",
    "conformance/test_auth.py::test_refused_before_upstream",
]


def _byok_outcomes(tmp_path: Path, *, leak_query_key: bool) -> dict[str, dict[str, object]]:
    out = tmp_path / "report"
    with ByokStandIn(tmp_path / "logs", leak_query_key=leak_query_key) as relay:
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--relay-url", relay.url, "--relay-key", BYOK_KEY,
            "--upstream-url", relay.upstream_url, "--relay-profile", "portkey",
            "--report-dir", str(out), *BYOK_NODES,
        ]  # fmt: skip
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=180, check=False, cwd=ROOT
        )
    assert (out / "conformance.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = json.loads((out / "conformance.json").read_text())["cases"]
    return {case["id"]: case for case in cases}


def test_byok_relay_forwarding_the_client_key_is_a_cited_deviation(tmp_path: Path) -> None:
    """Issue #13 (b), (c): on a bring-your-own-key relay the client's key *is* the provider key
    (a documented deviation, not a failure), and a ``?key=`` that never travels upstream is not
    accepted (the rule holds although the keyless request was forwarded)."""
    cases = _byok_outcomes(tmp_path, leak_query_key=False)
    forwarded = cases["security.client-key-not-forwarded"]
    assert forwarded["outcome"] == "deviation", forwarded
    assert "bring your own key" in json.dumps(forwarded)
    assert "portkey.ai/docs" in json.dumps(forwarded)  # the citation travels with it
    assert cases["security.query-key-rejected"]["outcome"] == "passed", cases
    assert BYOK_KEY not in json.dumps(cases)
    # The gateway has no keys to refuse: the provider refuses the client's own credential.
    for kind in ("missing_key", "malformed_key", "invalid_key"):
        refused = cases[f"auth.refused-before-upstream[{kind}]"]
        assert refused["outcome"] == "deviation", refused
        assert "client's own credential" in json.dumps(refused)
    # Key states the gateway cannot express skip with the profile's reason (issue #13, 1), not
    # with "cannot provision the key this case needs".
    profile = load_profile("portkey")
    reasons = {
        "models.allow-list": profile.expect("model_not_allowed").skip_reason,
        "models.list-exact": profile.expect("model_not_allowed").skip_reason,
        "sdk.permission-denied-error": profile.expect("token_quota_exhausted").skip_reason,
    }
    for case, reason in reasons.items():
        assert cases[case]["outcome"] == "skipped", cases[case]
        assert cases[case]["reason"] == f"profile: {reason}", cases[case]


def test_byok_relay_moving_the_query_key_upstream_fails(tmp_path: Path) -> None:
    """The BYOK readings still catch a key that travels: a ``?key=`` passed on, a usable key
    filled in for an unusable one."""
    cases = _byok_outcomes(tmp_path, leak_query_key=True)
    query = cases["security.query-key-rejected"]
    assert query["outcome"] == "failed", query
    assert "never travels upstream" in json.dumps(query)
    refused = cases["auth.refused-before-upstream[malformed_key]"]
    assert refused["outcome"] == "failed", refused
    assert "never goes upstream with a usable one" in json.dumps(refused)
