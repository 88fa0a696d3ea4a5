"""``relaygate.preflight``: one line per unusable input, bounded requests, keys masked; a relay
that is merely wrong (accepts every key, no /v1/models) passes and is left to the cases."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from relaygate.preflight import (
    PreflightError,
    check_admin_token,
    check_profile,
    check_relay,
    check_target,
    check_upstream,
)

KEY = "sk-preflight0123456789abcdef"


class _Stub(http.server.BaseHTTPRequestHandler):
    """Answers ``server.status``, echoing the Authorization header (a relay that
    repeats the key it refused); status 0 streams far more than the byte cap."""

    def do_GET(self) -> None:
        status = int(self.server.status)  # type: ignore[attr-defined]
        if status == 0:  # endless body
            self.send_response(200)
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(1000):
                    self.wfile.write(chunk)
            except OSError:
                pass
            return
        body = f'{{"error": "bad key {self.headers.get("Authorization", "")}"}}'.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_is_one_line_naming_the_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(PreflightError) as info:
        check_relay(url, KEY, timeout_s=2)
    text = str(info.value)
    assert text.startswith("cannot reach the relay at http://127.0.0.1:")
    assert "check --relay-url" in text and "\n" not in text and KEY not in text


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_names_the_key_and_masks_it(
    stub: http.server.ThreadingHTTPServer, status: int
) -> None:
    stub.status = status  # type: ignore[attr-defined]
    with pytest.raises(PreflightError) as info:
        check_relay(_url(stub), KEY)
    text = str(info.value)
    assert text.startswith(f"the relay refused --relay-key (HTTP {status}: ")
    assert text.endswith("— check the key")
    assert KEY not in text and "sk-pre…" in text


@pytest.mark.parametrize("status", [200, 404, 500])
def test_a_relay_that_answers_otherwise_passes(
    stub: http.server.ThreadingHTTPServer, status: int
) -> None:
    # Accepting every key, listing no models or erring is for the cases to judge.
    stub.status = status  # type: ignore[attr-defined]
    check_relay(_url(stub), KEY)
    check_relay(_url(stub), None)


def test_no_key_only_checks_reachability(stub: http.server.ThreadingHTTPServer) -> None:
    stub.status = 401  # type: ignore[attr-defined]
    check_relay(_url(stub), None)


def test_reads_are_capped(stub: http.server.ThreadingHTTPServer) -> None:
    stub.status = 0  # type: ignore[attr-defined]
    started = time.monotonic()
    check_relay(_url(stub), KEY, timeout_s=5)
    assert time.monotonic() - started < 5


def test_admin_token_and_upstream(stub: http.server.ThreadingHTTPServer) -> None:
    stub.status = 403  # type: ignore[attr-defined]
    with pytest.raises(PreflightError, match=r"refused --relay-admin-token \(HTTP 403"):
        check_admin_token(_url(stub), "rg-admin-secret-token", adapter="reference")
    check_admin_token(_url(stub), "rg-admin-secret-token", adapter="one-api")  # not asked
    with pytest.raises(PreflightError, match="is not a relaygate mock upstream"):
        check_upstream(_url(stub))
    with pytest.raises(PreflightError, match="cannot reach the mock upstream"):
        check_upstream(f"http://127.0.0.1:{_free_port()}", timeout_s=2)


def test_bad_profile_and_url_are_one_line() -> None:
    with pytest.raises(PreflightError, match=r"^--relay-profile: unknown profile 'nonexistent'"):
        check_profile("nonexistent")
    with pytest.raises(PreflightError, match=r"^--relay-url must start with http://"):
        check_relay("ftp://relay.invalid", None)
    with pytest.raises(PreflightError, match=r"^--host must start with http://"):
        check_relay("ftp://relay.invalid", None, url_option="--host")
    with pytest.raises(PreflightError, match="--relay-profile"):
        check_target("http://127.0.0.1:9", KEY, profile="nonexistent")  # before any request


def test_every_fault_switch_passes_preflight() -> None:
    """The detection matrix runs the suite against each fault switch: preflight must leave all
    of them to the cases (they break rules, never the funded key or the admin token)."""
    from relaygate.reference.faults import FAULTS
    from relaygate.stack import EmbeddedStack

    stack = EmbeddedStack()
    with stack as info:
        for fault in FAULTS:
            stack.admin("PUT", "/api/admin/settings", {"faults": [fault]})
            check_target(
                info.relay_url,
                info.relay_key,
                admin_token=info.admin_token,
                upstream_url=info.upstream_url,
            )
